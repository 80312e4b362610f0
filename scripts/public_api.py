#!/usr/bin/env python3
"""Lists a crate's public API from rustdoc's JSON, one line per item.

Every path a user can name is walked from the crate root: modules, types
with their public fields, inherent methods and trait impls, enum variants,
trait items, functions with their signatures, constants, statics, type
aliases, macros, and re-exports of whole crates. Items re-exported from a
private module (or from another crate and inlined by rustdoc) appear under
the path the user writes. The lines are sorted, so the listing is a stable
snapshot to compare (scripts/public-api.sh).

Items re-exported from another crate whose JSON lies beside CRATE.json
(the workspace's crates, documented together) are listed in full; those of
other crates (serde, garde) as the re-export alone.

Usage: public_api.py target/doc/CRATE.json
"""

import json
import os
import sys


def main():
    crates = Crates(os.path.dirname(os.path.abspath(sys.argv[1])))
    name = os.path.basename(sys.argv[1])[: -len(".json")]
    doc = crates.doc(name)
    lines = set()
    walker = crates.walker(name, lines)
    walker.module(doc["root"], doc["index"][str(doc["root"])]["name"], set())
    for line in sorted(lines):
        print(line)


class Crates:
    """The JSON documents of the crates beside the first, loaded on demand:
    an item re-exported from another workspace crate is listed in full."""

    def __init__(self, folder):
        self.folder = folder
        self.docs = {}

    def doc(self, name):
        if name not in self.docs:
            path = os.path.join(self.folder, f"{name}.json")
            self.docs[name] = json.load(open(path)) if os.path.exists(path) else None
        return self.docs[name]

    def walker(self, name, lines):
        return Walker(self.doc(name), lines, self)

    def resolve(self, doc, item_id):
        """The crate name, walker-less document and local id of an item that
        `doc` refers to in another crate; None where that crate has no JSON."""
        summary = doc["paths"].get(str(item_id))
        if summary is None:
            return None
        crate = doc["external_crates"].get(str(summary["crate_id"]), {}).get("name")
        other = self.doc(crate) if crate else None
        if other is None:
            return None
        for local_id, entry in other["paths"].items():
            if entry["crate_id"] == 0 and entry["path"] == summary["path"]:
                return crate, local_id
        return None


class Walker:
    def __init__(self, doc, lines, crates):
        self.doc = doc
        self.index = doc["index"]
        self.lines = lines
        self.crates = crates

    def item(self, item_id):
        return self.index.get(str(item_id))

    def module(self, module_id, path, seen):
        if module_id in seen:
            return
        seen = seen | {module_id}
        module = self.item(module_id)
        for child_id in module["inner"]["module"]["items"]:
            child = self.item(child_id)
            if child is None or child["visibility"] != "public":
                continue
            kind, inner = next(iter(child["inner"].items()))
            if kind == "use":
                self.reexport(child, inner, path, seen)
            else:
                self.named(child, f"{path}::{child['name']}", seen)

    def reexport(self, child, use, path, seen):
        target = self.item(use["id"]) if use["id"] is not None else None
        if target is None and use["id"] is not None:
            elsewhere = self.crates.resolve(self.doc, use["id"])
            if elsewhere is not None:
                crate, local_id = elsewhere
                walker = self.crates.walker(crate, self.lines)
                target = walker.item(local_id)
                if use["is_glob"]:
                    walker.module(target["id"], path, seen)
                elif target["inner"].get("module") is not None and target["id"] == walker.doc["root"]:
                    # A whole crate re-exported as a module of this one.
                    self.lines.add(f"pub mod {path}::{use['name']}")
                    walker.module(target["id"], f"{path}::{use['name']}", seen)
                else:
                    walker.named(target, f"{path}::{use['name']}", seen)
                return
        if target is None:
            if use["is_glob"]:
                self.lines.add(f"pub use {path}::* = {use['source']}::*")
            else:
                self.lines.add(f"pub use {path}::{use['name']} = {use['source']}")
        elif use["is_glob"]:
            self.module(use["id"], path, seen)
        else:
            self.named(target, f"{path}::{use['name']}", seen)

    def named(self, item, path, seen):
        kind, inner = next(iter(item["inner"].items()))
        if kind == "module":
            self.lines.add(f"pub mod {path}")
            self.module(item["id"], path, seen)
        elif kind == "struct":
            self.lines.add(f"pub struct {path}{self.generics(inner['generics'])}")
            shape = inner["kind"]
            if isinstance(shape, dict) and "plain" in shape:
                for field_id in shape["plain"]["fields"]:
                    field = self.item(field_id)
                    self.lines.add(f"pub {path}.{field['name']}: {self.ty(field['inner']['struct_field'])}")
            elif isinstance(shape, dict) and "tuple" in shape:
                fields = [self.ty(self.item(f)["inner"]["struct_field"]) if f is not None else "_" for f in shape["tuple"]]
                self.lines.add(f"pub {path}({', '.join(fields)})")
            self.impls(inner["impls"], path)
        elif kind == "enum":
            self.lines.add(f"pub enum {path}{self.generics(inner['generics'])}")
            for variant_id in inner["variants"]:
                variant = self.item(variant_id)
                self.lines.add(f"pub {path}::{variant['name']}{self.variant(variant['inner']['variant'])}")
            self.impls(inner["impls"], path)
        elif kind == "union":
            self.lines.add(f"pub union {path}")
            self.impls(inner["impls"], path)
        elif kind == "trait":
            bounds = self.bounds(inner["bounds"])
            self.lines.add(f"pub trait {path}{self.generics(inner['generics'])}{': ' + bounds if bounds else ''}")
            for member_id in inner["items"]:
                member = self.item(member_id)
                if member is not None:
                    self.member(member, path, "")
        elif kind == "function":
            self.lines.add(f"pub {self.function(item['name'], inner, path)}")
        elif kind == "constant":
            self.lines.add(f"pub const {path}: {self.ty(inner['type'])}")
        elif kind == "static":
            self.lines.add(f"pub static {path}: {self.ty(inner['type'])}")
        elif kind == "type_alias":
            self.lines.add(f"pub type {path}{self.generics(inner['generics'])} = {self.ty(inner['type'])}")
        elif kind == "macro":
            self.lines.add(f"pub macro {path}!")
        elif kind == "proc_macro":
            self.lines.add(f"pub proc_macro {path} ({inner['kind']})")
        else:
            self.lines.add(f"pub {kind} {path}")

    def impls(self, impl_ids, path):
        for impl_id in impl_ids:
            impl = self.item(impl_id)["inner"]["impl"]
            if impl["is_synthetic"] or impl["blanket_impl"] is not None:
                continue
            if impl["trait"] is None:
                for member_id in impl["items"]:
                    member = self.item(member_id)
                    if member is not None and member["visibility"] == "public":
                        self.member(member, path, "pub ")
            else:
                negative = "!" if impl["is_negative"] else ""
                generics = self.generics(impl["generics"])
                self.lines.add(f"impl{generics} {negative}{self.path(impl['trait'])} for {path}")

    def member(self, member, path, prefix):
        kind, inner = next(iter(member["inner"].items()))
        if kind == "function":
            self.lines.add(f"{prefix}{self.function(member['name'], inner, path + '::' + member['name'])}")
        elif kind == "assoc_type":
            self.lines.add(f"{prefix}type {path}::{member['name']}")
        elif kind == "assoc_const":
            self.lines.add(f"{prefix}const {path}::{member['name']}: {self.ty(inner['type'])}")

    def function(self, name, function, path):
        header = function["header"]
        qualifiers = "".join(
            word + " " for word, on in (("const", header["is_const"]), ("async", header["is_async"]), ("unsafe", header["is_unsafe"])) if on
        )
        inputs = ", ".join(self.argument(arg, ty) for arg, ty in function["sig"]["inputs"])
        output = function["sig"]["output"]
        returns = f" -> {self.ty(output)}" if output is not None else ""
        return f"{qualifiers}fn {path}{self.generics(function['generics'])}({inputs}){returns}{self.where_clause(function['generics'])}"

    def argument(self, name, ty):
        rendered = self.ty(ty)
        if name == "self":
            return {"Self": "self", "&Self": "&self", "&mut Self": "&mut self"}.get(rendered, f"self: {rendered}")
        return f"{name}: {rendered}"

    def variant(self, variant):
        kind = variant["kind"]
        if kind == "plain":
            return ""
        if "tuple" in kind:
            return "(" + ", ".join(self.ty(self.item(f)["inner"]["struct_field"]) if f is not None else "_" for f in kind["tuple"]) + ")"
        fields = [self.item(f) for f in kind["struct"]["fields"]]
        return " { " + ", ".join(f"{f['name']}: {self.ty(f['inner']['struct_field'])}" for f in fields) + " }"

    def generics(self, generics):
        params = []
        for param in generics["params"]:
            kind, inner = next(iter(param["kind"].items()))
            if kind == "lifetime":
                params.append(param["name"])
            elif kind == "type":
                if inner.get("is_synthetic"):
                    continue
                bounds = self.bounds(inner["bounds"])
                params.append(param["name"] + (f": {bounds}" if bounds else ""))
            elif kind == "const":
                params.append(f"const {param['name']}: {self.ty(inner['type'])}")
        return f"<{', '.join(params)}>" if params else ""

    def where_clause(self, generics):
        predicates = []
        for predicate in generics["where_predicates"]:
            if "bound_predicate" in predicate:
                bound = predicate["bound_predicate"]
                predicates.append(f"{self.ty(bound['type'])}: {self.bounds(bound['bounds'])}")
        return f" where {', '.join(predicates)}" if predicates else ""

    def bounds(self, bounds):
        rendered = []
        for bound in bounds:
            if "trait_bound" in bound:
                modifier = "?" if bound["trait_bound"]["modifier"] == "maybe" else ""
                rendered.append(modifier + self.path(bound["trait_bound"]["trait"]))
            elif "outlives" in bound:
                rendered.append(bound["outlives"])
        return " + ".join(rendered)

    def path(self, path):
        name = (path.get("path") or path.get("name") or "").split("::")[-1]
        return name + self.args(path.get("args"))

    def args(self, args):
        if not args:
            return ""
        if "angle_bracketed" in args:
            angle = args["angle_bracketed"]
            rendered = []
            for arg in angle["args"]:
                if "type" in arg:
                    rendered.append(self.ty(arg["type"]))
                elif "lifetime" in arg:
                    rendered.append(arg["lifetime"])
                elif "const" in arg:
                    rendered.append(str(arg["const"].get("expr", "_")))
            for constraint in angle.get("constraints", []):
                binding = constraint["binding"]
                if "equality" in binding:
                    value = binding["equality"]
                    rendered.append(f"{constraint['name']} = {self.ty(value['type']) if 'type' in value else value}")
                else:
                    rendered.append(f"{constraint['name']}: {self.bounds(binding['constraint'])}")
            return f"<{', '.join(rendered)}>" if rendered else ""
        if "parenthesized" in args:
            paren = args["parenthesized"]
            output = paren["output"]
            return "(" + ", ".join(self.ty(t) for t in paren["inputs"]) + ")" + (f" -> {self.ty(output)}" if output else "")
        return ""

    def ty(self, ty):
        if ty is None:
            return "()"
        kind, inner = next(iter(ty.items()))
        if kind == "resolved_path":
            return self.path(inner)
        if kind == "generic":
            return inner
        if kind == "primitive":
            return inner
        if kind == "tuple":
            return "(" + ", ".join(self.ty(t) for t in inner) + ("," if len(inner) == 1 else "") + ")"
        if kind == "slice":
            return f"[{self.ty(inner)}]"
        if kind == "array":
            return f"[{self.ty(inner['type'])}; {inner['len']}]"
        if kind == "borrowed_ref":
            lifetime = f"{inner['lifetime']} " if inner["lifetime"] else ""
            mutable = "mut " if inner["is_mutable"] else ""
            return f"&{lifetime}{mutable}{self.ty(inner['type'])}"
        if kind == "raw_pointer":
            return f"*{'mut' if inner['is_mutable'] else 'const'} {self.ty(inner['type'])}"
        if kind == "impl_trait":
            return f"impl {self.bounds(inner)}"
        if kind == "dyn_trait":
            traits = [self.path(t["trait"]) for t in inner["traits"]]
            if inner.get("lifetime"):
                traits.append(inner["lifetime"])
            return "dyn " + " + ".join(traits)
        if kind == "qualified_path":
            trait = inner.get("trait")
            self_type = self.ty(inner["self_type"])
            trait_name = self.path(trait) if trait else ""
            prefix = f"<{self_type} as {trait_name}>" if trait_name else self_type
            return f"{prefix}::{inner['name']}"
        if kind == "function_pointer":
            sig = inner["sig"]
            output = f" -> {self.ty(sig['output'])}" if sig["output"] else ""
            return "fn(" + ", ".join(self.ty(t) for _, t in sig["inputs"]) + ")" + output
        if kind == "infer":
            return "_"
        return kind


if __name__ == "__main__":
    main()
