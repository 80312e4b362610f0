//! YAML read the way modalkit reads it: PyYAML's YAML 1.1 rules for plain
//! (unquoted) scalars, so `yes`/`no`/`on`/`off` are booleans, `0755` is
//! octal, `1_000` is 1000 and `~` is null, in schema fields and free-form
//! maps alike. Quoted scalars stay strings; `!!str`/`!!int`/... tags,
//! anchors, aliases and `<<` merge keys work as in PyYAML.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Parses one YAML document into JSON values (an empty document is null).
///
/// ```
/// use modalkit_core::settings::yaml::parse;
/// let value = parse("a: yes\nb: '0755'\nc: 0755\nd: 1_000\n").unwrap();
/// assert_eq!(value, serde_json::json!({"a": true, "b": "0755", "c": 493, "d": 1000}));
/// ```
pub fn parse(text: &str) -> Result<Value, String> {
    let mut builder = Builder::default();
    Parser::new_from_str(text)
        .load(&mut builder, false)
        .map_err(|err| err.to_string())?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.root.unwrap_or(Value::Null))
}

/// A container being filled.
enum Open {
    Seq(usize, Vec<Value>),
    Map(usize, Map<String, Value>, Option<String>, Vec<Value>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    anchors: HashMap<usize, Value>,
    root: Option<Value>,
    error: Option<String>,
}

impl Builder {
    fn fail(&mut self, message: String, mark: Marker) {
        if self.error.is_none() {
            self.error = Some(format!(
                "{message} at line {} column {}",
                mark.line(),
                mark.col() + 1
            ));
        }
    }

    /// Places a finished value in its container (or as the document).
    fn place(&mut self, value: Value, anchor: usize, mark: Marker) {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Open::Seq(_, items)) => items.push(value),
            Some(Open::Map(_, map, key, merges)) => match key.take() {
                None => match value {
                    Value::String(text) => *key = Some(text),
                    Value::Null => *key = Some("null".to_owned()),
                    Value::Bool(b) => *key = Some(if b { "True" } else { "False" }.to_owned()),
                    Value::Number(n) => *key = Some(n.to_string()),
                    other => {
                        let text = other.to_string();
                        self.fail(format!("a mapping key must be a scalar, got {text}"), mark);
                    }
                },
                Some(name) if name == "<<" => merges.push(value),
                Some(name) => {
                    map.insert(name, value);
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq(anchor, Vec::new())),
            Event::MappingStart(anchor, _) => {
                self.stack
                    .push(Open::Map(anchor, Map::new(), None, Vec::new()))
            }
            Event::SequenceEnd => {
                if let Some(Open::Seq(anchor, items)) = self.stack.pop() {
                    self.place(Value::Array(items), anchor, mark);
                }
            }
            Event::MappingEnd => {
                if let Some(Open::Map(anchor, map, _, merges)) = self.stack.pop() {
                    let map = merge_keys(map, merges);
                    self.place(Value::Object(map), anchor, mark);
                }
            }
            Event::Scalar(text, style, anchor, tag) => match resolve(&text, style, tag.as_ref()) {
                Ok(value) => self.place(value, anchor, mark),
                Err(message) => self.fail(message, mark),
            },
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(value) => self.place(value, 0, mark),
                None => self.fail("an alias to an unknown anchor".to_owned(), mark),
            },
            _ => {}
        }
    }
}

/// `<<: *base` (or a list of them): keys from the merged maps that the map
/// does not set itself, earlier merges first.
fn merge_keys(own: Map<String, Value>, merges: Vec<Value>) -> Map<String, Value> {
    if merges.is_empty() {
        return own;
    }
    let mut merged = Map::new();
    let sources = merges.into_iter().flat_map(|m| match m {
        Value::Array(items) => items,
        other => vec![other],
    });
    for source in sources {
        if let Value::Object(map) = source {
            for (key, value) in map {
                merged.entry(key).or_insert(value);
            }
        }
    }
    merged.extend(own);
    merged
}

/// A scalar's value under PyYAML's resolver (YAML 1.1).
fn resolve(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    if let Some(tag) = tag {
        return match tag.suffix.as_str() {
            "str" => Ok(Value::String(text.to_owned())),
            "int" => int(text).ok_or_else(|| format!("'{text}' is not an integer (!!int)")),
            "float" => float(text).ok_or_else(|| format!("'{text}' is not a float (!!float)")),
            "bool" => boolean(text)
                .map(Value::Bool)
                .ok_or_else(|| format!("'{text}' is not a boolean (!!bool)")),
            "null" => Ok(Value::Null),
            _ => Ok(plain(text)),
        };
    }
    if style != TScalarStyle::Plain {
        return Ok(Value::String(text.to_owned()));
    }
    Ok(plain(text))
}

fn plain(text: &str) -> Value {
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Value::Null;
    }
    if let Some(b) = boolean(text) {
        return Value::Bool(b);
    }
    if let Some(n) = int(text) {
        return n;
    }
    if let Some(f) = float(text) {
        return f;
    }
    Value::String(text.to_owned())
}

fn boolean(text: &str) -> Option<bool> {
    match text {
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Some(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

/// PyYAML's int: decimal, `0b`, octal (leading 0), `0x`, sexagesimal
/// (`1:30`), with `_` separators.
fn int(text: &str) -> Option<Value> {
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if body.is_empty() || body.starts_with('_') {
        return None;
    }
    let digits = |s: &str, radix: u32| -> Option<i128> {
        let clean: String = s.chars().filter(|c| *c != '_').collect();
        if clean.is_empty() {
            return None;
        }
        i128::from_str_radix(&clean, radix).ok()
    };
    let magnitude = if let Some(bin) = body.strip_prefix("0b") {
        digits(bin, 2)?
    } else if let Some(hex) = body.strip_prefix("0x") {
        digits(hex, 16)?
    } else if body.contains(':') {
        if !body.starts_with(|c: char| ('1'..='9').contains(&c)) {
            return None;
        }
        let mut total: i128 = 0;
        for (i, part) in body.split(':').enumerate() {
            let value = digits(part, 10)?;
            if i > 0 && (value > 59 || part.len() > 2) {
                return None;
            }
            total = total * 60 + value;
        }
        total
    } else if body.len() > 1 && body.starts_with('0') {
        if !body.chars().all(|c| ('0'..='7').contains(&c) || c == '_') {
            return None;
        }
        digits(&body[1..], 8)?
    } else {
        if !body.chars().all(|c| c.is_ascii_digit() || c == '_') {
            return None;
        }
        digits(body, 10)?
    };
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value)
        .ok()
        .map(|v| Value::Number(v.into()))
        .or_else(|| u64::try_from(value).ok().map(|v| Value::Number(v.into())))
}

/// PyYAML's float: a dot is required (`1.5`, `.5`, `1_000.5`, `1.0e+3`; the
/// exponent needs its sign; `1e3` stays a string); `.inf`/`.nan` stay text
/// (JSON has neither).
fn float(text: &str) -> Option<Value> {
    let body = text.trim_start_matches(['-', '+']);
    if matches!(body, ".inf" | ".Inf" | ".INF") || matches!(text, ".nan" | ".NaN" | ".NAN") {
        return None;
    }
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let mantissa_ok = mantissa.contains('.')
        && mantissa
            .chars()
            .all(|c| c.is_ascii_digit() || c == '_' || c == '.')
        && mantissa.matches('.').count() == 1
        && !mantissa.starts_with('_')
        && mantissa != ".";
    let exponent_ok = exponent.is_none_or(|e| {
        (e.starts_with('+') || e.starts_with('-'))
            && e.len() > 1
            && e[1..].chars().all(|c| c.is_ascii_digit())
    });
    if !mantissa_ok || !exponent_ok {
        return None;
    }
    let clean: String = text.chars().filter(|c| *c != '_').collect();
    clean
        .parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pyyaml_scalars() {
        let text = "a: yes\nb: No\nc: on\nd: OFF\ne: 'yes'\nf: 0755\ng: 1_000\nh: 0x1F\ni: 1:30\nj: 3.10\nk: ~\nl:\nm: 1e3\nn: 1.0e+3\no: \"0755\"\np: !!str 12\nq: y\nr: -0b11\ns: 09\nt: .5\n";
        assert_eq!(
            parse(text).unwrap(),
            json!({"a": true, "b": false, "c": true, "d": false, "e": "yes", "f": 493, "g": 1000,
                   "h": 31, "i": 90, "j": 3.1, "k": null, "l": null, "m": "1e3", "n": 1000.0,
                   "o": "0755", "p": "12", "q": "y", "r": -3, "s": "09", "t": 0.5})
        );
    }

    #[test]
    fn anchors_aliases_and_merge_keys() {
        let text = "base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\nlist: [*b]\n";
        assert_eq!(
            parse(text).unwrap(),
            json!({"base": {"x": 1, "y": 2}, "use": {"x": 1, "y": 3}, "list": [{"x": 1, "y": 2}]})
        );
        assert_eq!(parse("").unwrap(), Value::Null);
        assert!(parse("a: [1, 2\n").is_err());
    }
}
