//! `#[modalkit::input]` and `#[modalkit::output]`: the derives a pipeline's
//! types need, expanded through the `modalkit` crate so that a pipeline crate
//! depends on `modalkit` alone.
//!
//! serde and schemars let a derive name the crate it expands to; garde's
//! derive always names `::garde`, which only resolves when `garde` is a
//! direct dependency. So `#[modalkit::input]` writes the `garde::Validate`
//! impl itself from the same `#[garde(...)]` field attributes (the rules
//! listed in [`macro@input`]), calling garde's own rule functions through
//! `modalkit::garde`. schemars reads those attributes too, so the OpenAPI
//! schema and the validation agree. A type that needs a rule not listed
//! here derives `garde::Validate` directly (with `garde` as a dependency).

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Expr, Meta, Token};

/// Makes a struct a pipeline input: `Deserialize`, `JsonSchema` and
/// `garde::Validate` (context `()`), all through the `modalkit` crate.
///
/// Each field carries `#[garde(...)]` rules as with garde's derive; the
/// supported rules are `skip`, `length([simple|bytes|chars|utf16,] min =,
/// max =, equal =)`, `range(min =, max =, equal =)`, `pattern("regex")`,
/// `ascii`, `alphanumeric`, `contains(expr)`, `prefix(expr)`,
/// `suffix(expr)`, `required`, `dive`, `inner(rules...)` and
/// `custom(fn(&value, &()) -> Result<(), garde::Error>)`. A field without
/// `#[garde]` is not validated.
#[proc_macro_attribute]
pub fn input(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(args, item, Role::Input).unwrap_or_else(|err| err.to_compile_error().into())
}

/// Makes a struct a pipeline output: `Serialize` and `JsonSchema`, through
/// the `modalkit` crate.
#[proc_macro_attribute]
pub fn output(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(args, item, Role::Output).unwrap_or_else(|err| err.to_compile_error().into())
}

/// Makes a struct readable from a model's entry in `model_entries` (or any
/// settings value): `Deserialize`, through the `modalkit` crate.
#[proc_macro_attribute]
pub fn entry(args: TokenStream, item: TokenStream) -> TokenStream {
    expand(args, item, Role::Entry).unwrap_or_else(|err| err.to_compile_error().into())
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Input,
    Output,
    Entry,
}

fn expand(args: TokenStream, item: TokenStream, role: Role) -> syn::Result<TokenStream> {
    if !args.is_empty() {
        return Err(syn::Error::new(
            Tokens::from(args).span(),
            "this attribute takes no arguments",
        ));
    }
    let mut item: DeriveInput = syn::parse(item)?;
    if role == Role::Input {
        add_schema_patterns(&mut item)?;
    }
    let (derives, schema_crate) = match role {
        Role::Input => (
            quote!(
                ::modalkit::serde::Deserialize,
                ::modalkit::schemars::JsonSchema
            ),
            quote!(#[schemars(crate = "::modalkit::schemars")]),
        ),
        Role::Output => (
            quote!(
                ::modalkit::serde::Serialize,
                ::modalkit::schemars::JsonSchema
            ),
            quote!(#[schemars(crate = "::modalkit::schemars")]),
        ),
        Role::Entry => (quote!(::modalkit::serde::Deserialize), Tokens::new()),
    };
    let validate = match role {
        Role::Input => validate_impl(&item)?,
        Role::Output | Role::Entry => Tokens::new(),
    };
    Ok(quote! {
        #[derive(#derives)]
        #[serde(crate = "::modalkit::serde")]
        #schema_crate
        #item
        #validate
    }
    .into())
}

/// schemars turns garde's `length`, `range` and `pattern` into JSON Schema
/// but not `ascii` or `alphanumeric`: give those fields the equivalent
/// `pattern` so the OpenAPI schema refuses what the server refuses.
fn add_schema_patterns(item: &mut DeriveInput) -> syn::Result<()> {
    let Data::Struct(data) = &mut item.data else {
        return Ok(());
    };
    for field in data.fields.iter_mut() {
        let mut names = Vec::new();
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("garde")) {
            let rules = attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)?;
            names.extend(
                rules
                    .iter()
                    .filter_map(|r| r.path().get_ident().map(ToString::to_string)),
            );
        }
        if names.iter().any(|n| n == "pattern") {
            continue;
        }
        let pattern = if names.iter().any(|n| n == "ascii") {
            r"^[\x00-\x7F]*$"
        } else if names.iter().any(|n| n == "alphanumeric") {
            r"^[\p{L}\p{N}]*$"
        } else {
            continue;
        };
        field
            .attrs
            .push(syn::parse_quote!(#[schemars(pattern(#pattern))]));
    }
    Ok(())
}

/// `impl garde::Validate` from the fields' `#[garde(...)]` rules.
fn validate_impl(item: &DeriveInput) -> syn::Result<Tokens> {
    let Data::Struct(data) = &item.data else {
        return Err(syn::Error::new(
            item.ident.span(),
            "#[modalkit::input] supports structs; derive garde::Validate for enums",
        ));
    };
    let mut checks = Vec::new();
    for (index, field) in data.fields.iter().enumerate() {
        let (access, path) = match &field.ident {
            Some(ident) => {
                let name = ident.to_string();
                (quote!(self.#ident), quote!(parent().join(#name)))
            }
            None => {
                let member = syn::Index::from(index);
                let key = proc_macro2::Literal::usize_suffixed(index);
                (quote!(self.#member), quote!(parent().join(#key)))
            }
        };
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("garde")) {
            let rules = attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)?;
            let body = rule_checks(&rules)?;
            checks.push(quote! {
                {
                    let value = &#access;
                    let mut path = || #path;
                    #body
                }
            });
        }
    }
    let ident = &item.ident;
    let (impl_generics, type_generics, where_clause) = item.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::modalkit::garde::Validate for #ident #type_generics #where_clause {
            type Context = ();

            #[allow(unused_variables, unused_mut, clippy::redundant_closure_call)]
            fn validate_into(
                &self,
                ctx: &(),
                parent: &mut dyn FnMut() -> ::modalkit::garde::Path,
                report: &mut ::modalkit::garde::Report,
            ) {
                #(#checks)*
            }
        }
    })
}

/// The checks for one list of rules on `value` (in scope with `path`,
/// `ctx` and `report`).
fn rule_checks(rules: &Punctuated<Meta, Token![,]>) -> syn::Result<Tokens> {
    let mut out = Vec::new();
    for rule in rules {
        let name = rule
            .path()
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        let span = rule.span();
        let rules_mod = quote_spanned!(span=> ::modalkit::garde::rules);
        let apply = |function: Tokens, args: Tokens| {
            quote_spanned! {span=>
                if let Err(error) = (#function)(value, #args) {
                    report.append(path(), error);
                }
            }
        };
        out.push(match name.as_str() {
            "skip" => Tokens::new(),
            "ascii" | "alphanumeric" | "required" => {
                let module = format_ident!("{name}");
                apply(quote!(#rules_mod::#module::apply), quote!(()))
            }
            "contains" | "prefix" | "suffix" => {
                let module = format_ident!("{name}");
                let expr: Expr = list(rule)?.parse_args()?;
                apply(quote!(#rules_mod::#module::apply), quote!((&#expr,)))
            }
            "pattern" => {
                let pattern: syn::LitStr = list(rule)?.parse_args()?;
                // Checked here so that a bad pattern fails the build, not a request.
                if let Err(err) = regex_syntax::Parser::new().parse(&pattern.value()) {
                    return Err(syn::Error::new(pattern.span(), format!("invalid pattern: {err}")));
                }
                let args = quote! {{
                    static PATTERN: #rules_mod::pattern::regex::StaticPattern =
                        #rules_mod::pattern::regex::init_pattern!(#pattern);
                    (&PATTERN,)
                }};
                apply(quote!(#rules_mod::pattern::apply), args)
            }
            "length" => {
                let bounds = Bounds::parse(list(rule)?, true)?;
                let mode = format_ident!("{}", bounds.mode.as_deref().unwrap_or("simple"));
                let min = bounds.min.map_or(quote!(0usize), |e| quote!(#e));
                let max = bounds.max.map_or(quote!(usize::MAX), |e| quote!(#e));
                apply(quote!(#rules_mod::length::#mode::apply), quote!((#min, #max)))
            }
            "range" => {
                let bounds = Bounds::parse(list(rule)?, false)?;
                let min = bounds.min.map_or(quote!(None), |e| quote!(Some(#e)));
                let max = bounds.max.map_or(quote!(None), |e| quote!(Some(#e)));
                apply(quote!(#rules_mod::range::apply), quote!((#min, #max)))
            }
            "custom" => {
                let function: Expr = list(rule)?.parse_args()?;
                quote_spanned! {span=>
                    if let Err(error) = (#function)(value, ctx) {
                        report.append(path(), error);
                    }
                }
            }
            "dive" => quote_spanned! {span=>
                ::modalkit::garde::Validate::validate_into(value, ctx, &mut path, report);
            },
            "inner" => {
                let nested = list(rule)?.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)?;
                let body = rule_checks(&nested)?;
                quote_spanned! {span=>
                    #rules_mod::inner::apply(value, |value, key| {
                        let mut outer = &mut path;
                        let mut path = || outer().join(key);
                        #body
                    });
                }
            }
            other => {
                return Err(syn::Error::new(
                    span,
                    format!(
                        "garde rule `{other}` is not supported by #[modalkit::input]; derive garde::Validate instead (with garde as a dependency)"
                    ),
                ));
            }
        });
    }
    Ok(quote!(#(#out)*))
}

fn list(rule: &Meta) -> syn::Result<&syn::MetaList> {
    match rule {
        Meta::List(list) => Ok(list),
        other => Err(syn::Error::new(
            other.span(),
            "this rule takes arguments: rule(...)",
        )),
    }
}

/// `min = .., max = .., equal = ..` and, for `length`, a leading mode.
struct Bounds {
    mode: Option<String>,
    min: Option<Expr>,
    max: Option<Expr>,
}

impl Bounds {
    fn parse(list: &syn::MetaList, with_mode: bool) -> syn::Result<Self> {
        let items = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(list.tokens.clone())?;
        let mut bounds = Bounds {
            mode: None,
            min: None,
            max: None,
        };
        for item in items {
            match &item {
                Meta::Path(path) if with_mode => {
                    let mode = path
                        .get_ident()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    if !matches!(mode.as_str(), "simple" | "bytes" | "chars" | "utf16") {
                        return Err(syn::Error::new(
                            path.span(),
                            "length mode must be simple, bytes, chars or utf16",
                        ));
                    }
                    bounds.mode = Some(mode);
                }
                Meta::NameValue(pair) if pair.path.is_ident("min") => {
                    bounds.min = Some(pair.value.clone())
                }
                Meta::NameValue(pair) if pair.path.is_ident("max") => {
                    bounds.max = Some(pair.value.clone())
                }
                Meta::NameValue(pair) if pair.path.is_ident("equal") => {
                    bounds.min = Some(pair.value.clone());
                    bounds.max = Some(pair.value.clone());
                }
                other => {
                    return Err(syn::Error::new(
                        other.span(),
                        "expected min = .., max = .. or equal = ..",
                    ));
                }
            }
        }
        Ok(bounds)
    }
}
