//! `#[modalkit::input]` validates as garde's own derive would, for every
//! rule it supports, with garde's paths and messages; `output` and `entry`
//! derive through `modalkit` alone (this crate's tests have no serde,
//! schemars or garde dependency of their own).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use modalkit::garde::Validate;
use modalkit::schemars::schema_for;
use modalkit::serde_json::{self, json};

fn no_empty_words(value: &str, _: &()) -> modalkit::garde::Result {
    if value.split(' ').any(str::is_empty) {
        return Err(modalkit::garde::Error::new("has an empty word"));
    }
    Ok(())
}

#[modalkit::input]
#[derive(Debug)]
struct Inner {
    #[garde(range(min = 1, max = 3))]
    level: u8,
}

#[modalkit::input]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
struct Request {
    #[garde(length(chars, min = 2, max = 4))]
    word: String,
    #[garde(range(min = -1.0, max = 1.0))]
    weight: f32,
    #[garde(pattern(r"^[a-z]+-[0-9]+$"))]
    code: String,
    #[garde(ascii, prefix("id"), suffix("!"), contains("-"))]
    tag: String,
    #[garde(length(min = 2, max = 8), alphanumeric)]
    language: Option<String>,
    #[garde(required)]
    must: Option<u32>,
    #[garde(dive)]
    inner: Inner,
    #[garde(length(max = 2), inner(length(min = 1)))]
    items: Vec<String>,
    #[garde(custom(no_empty_words))]
    sentence: String,
    #[garde(skip)]
    free: Option<String>,
    #[allow(dead_code)]
    unchecked: u64,
}

#[modalkit::input]
struct Pair(#[garde(range(max = 9))] u8, #[garde(skip)] u8);

#[modalkit::output]
struct Reply {
    label: String,
}

#[modalkit::entry]
struct Entry {
    threshold: f32,
}

fn good() -> serde_json::Value {
    json!({
        "word": "héhé", "weight": 0.5, "code": "ab-12", "tag": "id-x!", "language": "fr",
        "must": 1, "inner": {"level": 2}, "items": ["a", "b"], "sentence": "two words",
        "free": null, "unchecked": 7
    })
}

fn errors(body: serde_json::Value) -> Vec<String> {
    let request: Request = serde_json::from_value(body).unwrap();
    match request.validate() {
        Ok(()) => Vec::new(),
        Err(report) => report
            .iter()
            .map(|(path, e)| format!("{path}: {e}"))
            .collect(),
    }
}

#[test]
fn a_valid_request_passes_and_each_broken_rule_is_reported_at_its_path() {
    assert_eq!(errors(good()), Vec::<String>::new());
    let cases = [
        ("word", json!("a"), "word: "),
        ("word", json!("abcde"), "word: "),
        ("weight", json!(1.5), "weight: greater than 1"),
        ("code", json!("AB-12"), "code: does not match pattern"),
        ("tag", json!("idé-!"), "tag: not ascii"),
        ("tag", json!("x-x!"), "tag: value does not begin with"),
        ("tag", json!("id-x"), "tag: does not end with"),
        ("tag", json!("idx!"), "tag: does not contain"),
        ("language", json!("f"), "language: "),
        ("language", json!("fr-CA"), "language: not alphanumeric"),
        ("must", json!(null), "must: not set"),
        ("inner", json!({"level": 4}), "inner.level: greater than 3"),
        ("items", json!(["a", "b", "c"]), "items: "),
        ("items", json!(["a", ""]), "items[1]: "),
        (
            "sentence",
            json!("two  spaces"),
            "sentence: has an empty word",
        ),
    ];
    for (field, value, expected) in cases {
        let mut body = good();
        body[field] = value.clone();
        let found = errors(body);
        assert_eq!(found.len(), 1, "{field}={value}: {found:?}");
        assert!(found[0].starts_with(expected), "{field}={value}: {found:?}");
    }
    let mut unknown = good();
    unknown["extra"] = json!(1);
    assert!(
        serde_json::from_value::<Request>(unknown).is_err(),
        "serde attributes kept"
    );
}

#[test]
fn tuple_structs_report_the_index() {
    let pair: Pair = serde_json::from_value(json!([10, 200])).unwrap();
    let report = pair.validate().unwrap_err();
    let paths: Vec<String> = report.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(paths, ["[0]"]);
}

#[test]
fn schemas_carry_the_rules_and_output_and_entry_derive() {
    let schema = serde_json::to_value(schema_for!(Request)).unwrap();
    let properties = &schema["properties"];
    assert_eq!(properties["word"]["minLength"], 2);
    assert_eq!(properties["word"]["maxLength"], 4);
    assert_eq!(properties["code"]["pattern"], "^[a-z]+-[0-9]+$");
    assert_eq!(properties["language"]["pattern"], r"^[\p{L}\p{N}]*$");
    assert_eq!(properties["tag"]["pattern"], r"^[\x00-\x7F]*$");
    assert_eq!(properties["weight"]["maximum"], 1.0);
    let reply = serde_json::to_value(Reply { label: "ok".into() }).unwrap();
    assert_eq!(reply, json!({"label": "ok"}));
    let entry: Entry = serde_json::from_value(json!({"threshold": 0.25})).unwrap();
    assert_eq!(entry.threshold, 0.25);
}
