//! Pins modalkit's wire format: exact JSON strings and round trips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use modalkit_core::wire::{AsyncInput, AsyncOutput, DelayedFailure, InferenceOutput, Meta, Status};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Translation {
    translated_text: String,
    confidence: f64,
}

fn meta(pairs: Value) -> Meta {
    pairs.as_object().cloned().unwrap_or_default()
}

#[test]
fn success_output_flattens_the_pipeline_fields_after_status_error_meta() {
    let out = InferenceOutput::success(
        Translation {
            translated_text: "HELLO".into(),
            confidence: 0.5,
        },
        meta(json!({"request": 7})),
    );
    let text = serde_json::to_string(&out).unwrap();
    assert_eq!(
        text,
        r#"{"status":"success","error":null,"meta":{"request":7},"translated_text":"HELLO","confidence":0.5}"#
    );
    let back: InferenceOutput<Translation> = serde_json::from_str(&text).unwrap();
    assert_eq!(back, out);
}

#[test]
fn error_output_has_no_pipeline_fields() {
    let out: InferenceOutput<Translation> = InferenceOutput::failure("bad input", Meta::new());
    let text = serde_json::to_string(&out).unwrap();
    assert_eq!(
        text, r#"{"status":"error","error":"bad input"}"#,
        "as modalkit's replies: no meta"
    );
    let back: InferenceOutput<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(back.status, Status::Error);
    assert_eq!(back.error.as_deref(), Some("bad input"));
}

#[test]
fn async_input_defaults_and_exact_json() {
    let input: AsyncInput<Value> = serde_json::from_str(r#"{"message":{"text":"hi"}}"#).unwrap();
    assert_eq!(input.success_queue, "");
    assert_eq!(input.failure_queue, "");
    assert!(input.meta.is_empty());
    assert_eq!(
        serde_json::to_string(&input).unwrap(),
        r#"{"message":{"text":"hi"},"success_queue":"","failure_queue":"","meta":{}}"#
    );
    let full = r#"{"message":{"text":"x"},"success_queue":"ok-q","failure_queue":"err-q","meta":{"k":"v"}}"#;
    let parsed: AsyncInput<Value> = serde_json::from_str(full).unwrap();
    assert_eq!(serde_json::to_string(&parsed).unwrap(), full);
}

#[test]
fn async_input_rejects_unknown_fields_naming_them() {
    let err = serde_json::from_str::<AsyncInput<Value>>(r#"{"message":{},"success_queu":"typo"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `success_queu`"), "{err}");
    assert!(serde_json::from_str::<AsyncInput<Value>>(r#"{"success_queue":"q"}"#).is_err());
}

#[test]
fn async_output_and_delayed_failure_exact_json() {
    let reply = AsyncOutput {
        job_id: "0b6a1c2e".into(),
    };
    assert_eq!(
        serde_json::to_string(&reply).unwrap(),
        r#"{"job_id":"0b6a1c2e"}"#
    );
    assert_eq!(
        serde_json::from_str::<AsyncOutput>(r#"{"job_id":"0b6a1c2e"}"#).unwrap(),
        reply
    );

    let envelope: AsyncInput<Value> =
        serde_json::from_str(r#"{"message":{"text":"boom"},"failure_queue":"f","meta":{"id":1}}"#)
            .unwrap();
    let failure = DelayedFailure::new("model exploded", envelope);
    let text = serde_json::to_string(&failure).unwrap();
    assert_eq!(
        text,
        r#"{"status":"error","error":"model exploded","original_message":{"message":{"text":"boom"},"success_queue":"","failure_queue":"f","meta":{"id":1}}}"#
    );
    assert_eq!(
        serde_json::from_str::<DelayedFailure>(&text).unwrap(),
        failure
    );
}
