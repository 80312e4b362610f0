//! Reading merged settings into the typed structs the way pydantic's lax
//! mode does: a string where a number or boolean is expected is parsed
//! (`"16"` -> 16, `"True"`/`"yes"`/`"1"` -> true), an integral float is an
//! integer, and `null` for a field with a default means the default. A
//! string field keeps its text. Keys a struct does not know are dropped
//! with a warning naming the path and the nearest known key, as modalkit
//! ignores them.

use std::cell::RefCell;

use serde::de::value::{Error, StringDeserializer};
use serde::de::{
    self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Unexpected, Visitor,
};
use serde::forward_to_deserialize_any;
use serde_json::Value;

/// A value being read, with its path (for warnings) and the warnings list.
pub struct Lax<'w> {
    value: Value,
    path: String,
    warnings: &'w RefCell<Vec<String>>,
}

impl<'w> Lax<'w> {
    /// Reads `value` (the whole settings document), noting unknown keys in
    /// `warnings`.
    pub fn new(value: Value, warnings: &'w RefCell<Vec<String>>) -> Self {
        Lax {
            value,
            path: String::new(),
            warnings,
        }
    }

    /// The value at `segment` (a key, or `[i]`) below `path`.
    fn child(
        path: &str,
        warnings: &'w RefCell<Vec<String>>,
        segment: &str,
        value: Value,
    ) -> Lax<'w> {
        Lax {
            value,
            path: join(path, segment),
            warnings,
        }
    }

    fn unexpected(&self) -> Unexpected<'_> {
        match &self.value {
            Value::Null => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => Unexpected::Unsigned(u),
                (_, Some(i), _) => Unexpected::Signed(i),
                (_, _, Some(f)) => Unexpected::Float(f),
                _ => Unexpected::Other("number"),
            },
            Value::String(s) => Unexpected::Str(s),
            Value::Array(_) => Unexpected::Seq,
            Value::Object(_) => Unexpected::Map,
        }
    }

    fn invalid<E: de::Expected>(&self, expected: &E) -> Error {
        de::Error::invalid_type(self.unexpected(), expected)
    }

    /// pydantic's integer: an integer, an integral float, a numeric string
    /// (`_` separators allowed), or a boolean.
    fn integer(&self) -> Option<i128> {
        match &self.value {
            Value::Number(n) => n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from))
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 1e18)
                        .map(|f| f as i128)
                }),
            Value::String(s) => {
                let text = s.trim();
                let digits = text.trim_start_matches(['-', '+']);
                let ok = !digits.is_empty()
                    && digits.starts_with(|c: char| c.is_ascii_digit())
                    && digits.ends_with(|c: char| c.is_ascii_digit())
                    && !digits.contains("__");
                ok.then(|| text.replace('_', "").parse().ok()).flatten()
            }
            Value::Bool(b) => Some(i128::from(*b)),
            _ => None,
        }
    }

    fn float(&self) -> Option<f64> {
        match &self.value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        }
    }

    /// pydantic's boolean: a boolean, 0/1, or one of its words.
    fn boolean(&self) -> Option<bool> {
        match &self.value {
            Value::Bool(b) => Some(*b),
            Value::Number(n) => match n.as_i64() {
                Some(0) => Some(false),
                Some(1) => Some(true),
                _ => None,
            },
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
                "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    fn warn_unknown(&self, key: &str, fields: &[&str]) {
        let path = join(&self.path, key);
        let nearest = fields
            .iter()
            .map(|field| (distance(key, field), *field))
            .filter(|(d, field)| *d <= 3 && *d < field.len().max(key.len()) / 2 + 1)
            .min();
        let hint = match nearest {
            Some((_, field)) => format!("; did you mean {field}?"),
            None => format!("; known keys: {}", fields.join(", ")),
        };
        self.warnings
            .borrow_mut()
            .push(format!("{path}: unknown key, ignored{hint}"));
    }
}

/// `path.segment`, or `path[i]` for an index segment.
fn join(path: &str, segment: &str) -> String {
    if path.is_empty() {
        segment.to_owned()
    } else if segment.starts_with('[') {
        format!("{path}{segment}")
    } else {
        format!("{path}.{segment}")
    }
}

/// Edit distance between two short keys.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(current + 1);
            previous = current;
        }
    }
    row[b.len()]
}

macro_rules! integer_method {
    ($method:ident, $visit:ident, $ty:ty) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self.integer() {
                Some(n) => match <$ty>::try_from(n) {
                    Ok(n) => visitor.$visit(n),
                    Err(_) => Err(de::Error::invalid_value(
                        Unexpected::Other(&n.to_string()),
                        &visitor,
                    )),
                },
                None => Err(self.invalid(&visitor)),
            }
        }
    };
}

impl<'de> de::Deserializer<'de> for Lax<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Number(ref n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or_default())
                }
            }
            Value::String(s) => visitor.visit_string(s),
            Value::Array(_) => self.deserialize_seq(visitor),
            Value::Object(_) => self.deserialize_map(visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.boolean() {
            Some(b) => visitor.visit_bool(b),
            None => Err(self.invalid(&visitor)),
        }
    }

    integer_method!(deserialize_i8, visit_i8, i8);
    integer_method!(deserialize_i16, visit_i16, i16);
    integer_method!(deserialize_i32, visit_i32, i32);
    integer_method!(deserialize_i64, visit_i64, i64);
    integer_method!(deserialize_u8, visit_u8, u8);
    integer_method!(deserialize_u16, visit_u16, u16);
    integer_method!(deserialize_u32, visit_u32, u32);
    integer_method!(deserialize_u64, visit_u64, u64);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.float() {
            Some(f) => visitor.visit_f64(f),
            None => Err(self.invalid(&visitor)),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::String(s) => visitor.visit_string(s),
            _ => Err(self.invalid(&visitor)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let items = match self.value {
            Value::Array(items) => items,
            _ => return Err(self.invalid(&visitor)),
        };
        let (path, warnings) = (self.path, self.warnings);
        let children = items
            .into_iter()
            .enumerate()
            .map(move |(i, item)| Lax::child(&path, warnings, &format!("[{i}]"), item));
        visitor.visit_seq(Items(children))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let map = match self.value {
            Value::Object(map) => map,
            _ => return Err(self.invalid(&visitor)),
        };
        let (path, warnings) = (self.path, self.warnings);
        let entries = map.into_iter().map(move |(key, value)| {
            let child = Lax::child(&path, warnings, &key, value);
            (key, child)
        });
        visitor.visit_map(Entries {
            entries,
            value: None,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let map = match self.value {
            Value::Object(map) => map,
            _ => return Err(self.invalid(&visitor)),
        };
        // Path and warnings, for the children and the unknown-key warnings.
        let shell = Lax {
            value: Value::Null,
            path: self.path,
            warnings: self.warnings,
        };
        let mut known = Vec::with_capacity(map.len());
        for (key, value) in map {
            if !fields.contains(&key.as_str()) {
                shell.warn_unknown(&key, fields);
            } else if !value.is_null() {
                // null means "not set": the field's default applies.
                known.push((key, value));
            }
        }
        let entries = known.into_iter().map(move |(key, value)| {
            let child = Lax::child(&shell.path, shell.warnings, &key, value);
            (key, child)
        });
        visitor.visit_map(Entries {
            entries,
            value: None,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_enum(self.value, name, variants, visitor)
            .map_err(de::Error::custom)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            _ => Err(self.invalid(&visitor)),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        i128 u128 char bytes byte_buf unit_struct tuple tuple_struct identifier
    }
}

struct Items<'w, I: Iterator<Item = Lax<'w>>>(I);

impl<'de, 'w, I: Iterator<Item = Lax<'w>>> SeqAccess<'de> for Items<'w, I> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0.next().map(|item| seed.deserialize(item)).transpose()
    }
}

struct Entries<'w, I: Iterator<Item = (String, Lax<'w>)>> {
    entries: I,
    value: Option<Lax<'w>>,
}

impl<'de, 'w, I: Iterator<Item = (String, Lax<'w>)>> MapAccess<'de> for Entries<'w, I> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                let key: StringDeserializer<Error> = key.into_deserializer();
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        match self.value.take() {
            Some(value) => seed.deserialize(value),
            None => Err(de::Error::custom("a value without its key")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Section {
        #[serde(default)]
        size: u32,
        #[serde(default)]
        flag: bool,
        #[serde(default)]
        tag: Option<String>,
        #[serde(default = "seven")]
        seven: u8,
        #[serde(default)]
        free: Option<Value>,
    }

    fn seven() -> u8 {
        7
    }

    fn read(value: Value) -> (Result<Section, Error>, Vec<String>) {
        let warnings = RefCell::new(Vec::new());
        let result = Section::deserialize(Lax::new(value, &warnings));
        (result, warnings.into_inner())
    }

    #[test]
    fn pydantic_lax_scalars_nulls_and_unknown_keys() {
        let (section, warnings) = read(json!({"size": "16", "flag": "True", "tag": "3.10",
            "seven": null, "free": {"a": "yes"}, "sise": 1}));
        assert_eq!(
            section.unwrap(),
            Section {
                size: 16,
                flag: true,
                tag: Some("3.10".into()),
                seven: 7,
                free: Some(json!({"a": "yes"}))
            }
        );
        assert_eq!(
            warnings,
            vec!["sise: unknown key, ignored; did you mean size?".to_owned()]
        );
        assert_eq!(read(json!({"size": 8.0})).0.unwrap().size, 8);
        assert_eq!(read(json!({"size": "1_000"})).0.unwrap().size, 1000);
        assert!(read(json!({"size": 8.5})).0.is_err());
        assert!(read(json!({"size": "-1"})).0.is_err());
        assert!(read(json!({"flag": "maybe"})).0.is_err());
        assert!(
            read(json!({"tag": 3.1})).0.is_err(),
            "a number is not a string"
        );
    }
}
