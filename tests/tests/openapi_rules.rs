//! The OpenAPI schema and the server agree on what is valid: a small
//! schema-driven fuzzer reads each served pipeline's input schema from
//! `/openapi.json`, makes values at and just past every `minLength`,
//! `maxLength`, `minimum`, `maximum` and `pattern` it states, and checks that
//! the server refuses (422) exactly the bodies the schema refuses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use modalkit::InferencePipeline;
use modalkit_examples::translate::Translator;
use modalkit_tests::pipeline::EchoPipeline;
use modalkit_tests::support::{TestServer, client, get_json, post_json, settings_from_yaml};
use serde_json::{Map, Value, json};

/// One candidate body and the schema's verdict on it.
struct Case {
    body: Value,
    schema_accepts: bool,
}

/// Resolves `{"$ref": "#/components/schemas/X"}`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap();
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn types(schema: &Value) -> Vec<String> {
    match &schema["type"] {
        Value::String(t) => vec![t.clone()],
        Value::Array(ts) => ts
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// The schema's verdict on one property value (the rules the fuzzer probes).
fn accepts(schema: &Value, value: &Value) -> bool {
    match value {
        Value::String(text) => {
            let chars = text.chars().count() as u64;
            schema["minLength"].as_u64().is_none_or(|min| chars >= min)
                && schema["maxLength"].as_u64().is_none_or(|max| chars <= max)
                && schema["pattern"]
                    .as_str()
                    .is_none_or(|p| regex::Regex::new(p).unwrap().is_match(text))
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap();
            schema["minimum"].as_f64().is_none_or(|min| x >= min)
                && schema["maximum"].as_f64().is_none_or(|max| x <= max)
        }
        Value::Null => types(schema).iter().any(|t| t == "null"),
        _ => true,
    }
}

/// Values at and around each rule of a property's schema.
fn probes(schema: &Value) -> Vec<Value> {
    let mut values = Vec::new();
    let kinds = types(schema);
    if kinds.iter().any(|t| t == "string") {
        let min = schema["minLength"].as_u64().unwrap_or(0) as usize;
        let max = schema["maxLength"].as_u64().map(|m| m as usize);
        for n in [
            Some(min),
            min.checked_sub(1),
            max,
            max.map(|m| m + 1),
            Some(min.max(1) + 1),
        ]
        .into_iter()
        .flatten()
        {
            values.push(Value::String("a".repeat(n)));
            values.push(Value::String("é".repeat(n)));
            if n >= 2 {
                values.push(Value::String(format!("a-{}", "b".repeat(n - 2))));
            }
        }
    }
    if kinds.iter().any(|t| t == "integer") {
        for bound in [&schema["minimum"], &schema["maximum"]] {
            if let Some(b) = bound.as_i64() {
                values.extend([json!(b - 1), json!(b), json!(b + 1)]);
            }
        }
    }
    values
}

/// Every body that changes one property of `base` (other than `fixed`) to a
/// probe value.
fn cases(doc: &Value, input: &Value, base: &Map<String, Value>, fixed: &[&str]) -> Vec<Case> {
    let input = resolve(doc, input);
    let mut cases = Vec::new();
    for (name, property) in input["properties"].as_object().unwrap() {
        if fixed.contains(&name.as_str()) {
            continue;
        }
        let property = resolve(doc, property);
        for value in probes(property) {
            let mut body = base.clone();
            body.insert(name.clone(), value.clone());
            let schema_accepts = base
                .iter()
                .filter(|(other, _)| *other != name)
                .all(|(other, v)| accepts(resolve(doc, &input["properties"][other]), v))
                && accepts(property, &value);
            cases.push(Case {
                body: Value::Object(body),
                schema_accepts,
            });
        }
    }
    cases
}

async fn check_agreement<P: InferencePipeline>(yaml: &str, base: Value, fixed: &[&str]) -> usize {
    let server = TestServer::builder(settings_from_yaml(yaml))
        .pipeline::<P>()
        .start()
        .await;
    let client = client();
    let doc = get_json(&client, &server.url("/openapi.json")).await;
    let input = &doc["paths"]["/predict_sync"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    let cases = cases(&doc, input, base.as_object().unwrap(), fixed);
    assert!(cases.len() >= 10, "too few probes: {}", cases.len());
    for case in &cases {
        let (status, reply) = post_json(&client, &server.url("/predict_sync"), &case.body).await;
        let server_accepts = status != 422;
        assert_eq!(
            server_accepts, case.schema_accepts,
            "schema and server disagree on {}: server {status} {reply}",
            case.body
        );
    }
    cases.len()
}

#[tokio::test]
async fn translate_schema_states_every_rule_the_server_enforces() {
    let yaml =
        "app_settings:\n  app_prefix: t\nmodel_settings:\n  model_entries:\n    translator: {}\n";
    let checked =
        check_agreement::<Translator>(yaml, json!({"text": "hello", "language": "fr"}), &[]).await;
    println!("translate: {checked} probes, schema and server agree");
}

#[tokio::test]
async fn echo_schema_states_every_rule_the_server_enforces() {
    let yaml = "app_settings:\n  app_prefix: e\nmodel_settings:\n  model_entries:\n    echo: {}\n";
    // sleep_ms's bounds are probed elsewhere: here they would sleep 10 s.
    let body = json!({"text": "hi", "repeat": 2, "sleep_ms": 0});
    let checked = check_agreement::<EchoPipeline>(yaml, body, &["sleep_ms", "fail"]).await;
    println!("echo: {checked} probes, schema and server agree");
}
