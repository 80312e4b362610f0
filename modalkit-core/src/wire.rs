//! modalkit's wire types, byte for byte: what clients send and what results
//! look like on HTTP and in queues.
//!
//! The `/predict_sync` body is the message itself; `/predict_batch` takes an
//! array of messages; `/predict_async` takes an [`AsyncInput`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Free-form metadata a client attaches to an async request; echoed back.
pub type Meta = Map<String, Value>;

/// The body of `/predict_async`: the message plus where its result goes.
///
/// Unknown fields are rejected, and so is anything but a JSON object, as
/// modalkit's pydantic model does (serde's derive would also read an array
/// such as `[null]` as the fields in order).
///
/// ```
/// use modalkit_core::wire::AsyncInput;
/// let body = r#"{"message": {"text": "hi"}, "success_queue": "done"}"#;
/// let input: AsyncInput<serde_json::Value> = serde_json::from_str(body).unwrap();
/// assert_eq!(input.failure_queue, "");
/// assert!(serde_json::from_str::<AsyncInput<serde_json::Value>>(r#"{"message": 1, "x": 2}"#).is_err());
/// assert!(serde_json::from_str::<AsyncInput<serde_json::Value>>(r#"[null]"#).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AsyncInput<T> {
    /// The message, as `/predict_sync` would take it.
    pub message: T,
    /// Queue for the success result; empty: none.
    #[serde(default)]
    pub success_queue: String,
    /// Queue for the failure result; empty: none.
    #[serde(default)]
    pub failure_queue: String,
    /// Metadata copied into the result.
    #[serde(default)]
    pub meta: Meta,
}

/// [`AsyncInput`]'s fields as serde's derive reads them (from an object or
/// an array); [`AsyncInput`]'s own `Deserialize` hands it objects only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "AsyncInput")]
struct AsyncInputFields<T> {
    message: T,
    #[serde(default)]
    success_queue: String,
    #[serde(default)]
    failure_queue: String,
    #[serde(default)]
    meta: Meta,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for AsyncInput<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ObjectOnly(std::marker::PhantomData))
    }
}

struct ObjectOnly<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectOnly<T> {
    type Value = AsyncInput<T>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("struct AsyncInput")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let fields =
            AsyncInputFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(AsyncInput {
            message: fields.message,
            success_queue: fields.success_queue,
            failure_queue: fields.failure_queue,
            meta: fields.meta,
        })
    }
}

/// Whether an item succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The item has an output.
    Success,
    /// The item failed; `error` says why.
    Error,
}

/// One item's result: `status`, `error`, `meta` (when not empty), then the
/// pipeline output's own fields at the top level. Replies to `/predict_sync`
/// and `/predict_batch` are exactly modalkit's bytes.
///
/// ```
/// use modalkit_core::wire::InferenceOutput;
/// #[derive(serde::Serialize)]
/// struct Out { label: String }
/// let out = InferenceOutput::success(Out { label: "A".into() }, Default::default());
/// assert_eq!(
///     serde_json::to_string(&out).unwrap(),
///     r#"{"status":"success","error":null,"label":"A"}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InferenceOutput<T> {
    /// `success` or `error`.
    pub status: Status,
    /// Why the item failed; `null` on success.
    pub error: Option<String>,
    /// The request's metadata; left out when empty (sync and batch
    /// replies), as modalkit's replies have none.
    #[serde(default, skip_serializing_if = "Meta::is_empty")]
    pub meta: Meta,
    /// The pipeline's output, flattened; absent on error.
    #[serde(flatten)]
    pub output: Option<T>,
}

impl<T> InferenceOutput<T> {
    /// A successful result.
    pub fn success(output: T, meta: Meta) -> Self {
        InferenceOutput {
            status: Status::Success,
            error: None,
            meta,
            output: Some(output),
        }
    }

    /// A failed result.
    pub fn failure(error: impl Into<String>, meta: Meta) -> Self {
        InferenceOutput {
            status: Status::Error,
            error: Some(error.into()),
            meta,
            output: None,
        }
    }
}

/// The reply to `/predict_async`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AsyncOutput {
    /// The job's id, for `GET /jobs/{job_id}`.
    pub job_id: String,
}

/// What goes to the failure queue when an async job failed as a whole (its
/// batch raised, its deadline passed, it was cancelled), as modalkit's
/// `DelayedFailureOutputModel`: `{"status":"error","error",
/// "original_message": <the whole AsyncInput>}`. An item that failed alone
/// sends its [`InferenceOutput`] instead.
///
/// ```
/// use modalkit_core::wire::{AsyncInput, DelayedFailure};
/// let envelope: AsyncInput<serde_json::Value> =
///     serde_json::from_str(r#"{"message":{"text":"x"},"failure_queue":"f"}"#).unwrap();
/// let failure = DelayedFailure::new("boom", envelope);
/// assert_eq!(
///     serde_json::to_string(&failure).unwrap(),
///     r#"{"status":"error","error":"boom","original_message":{"message":{"text":"x"},"success_queue":"","failure_queue":"f","meta":{}}}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DelayedFailure {
    /// Always `error`.
    pub status: Status,
    /// Why it failed.
    pub error: String,
    /// The request: message (as received), queues and meta.
    pub original_message: AsyncInput<Value>,
}

impl DelayedFailure {
    /// A failure record for the request `original_message`.
    pub fn new(error: impl Into<String>, original_message: AsyncInput<Value>) -> Self {
        DelayedFailure {
            status: Status::Error,
            error: error.into(),
            original_message,
        }
    }
}

/// What goes to the success queue, as modalkit's
/// `output.model_dump_json(exclude={"error"})`: `status`, the output's own
/// fields in their order, then `meta`.
///
/// ```
/// use modalkit_core::wire::SuccessMessage;
/// #[derive(serde::Serialize)]
/// struct Out { label: String, score: f64 }
/// let meta = serde_json::from_str(r#"{"b":1,"a":2}"#).unwrap();
/// let out = Out { label: "A".into(), score: 0.5 };
/// assert_eq!(
///     serde_json::to_string(&SuccessMessage::new(&out, &meta)).unwrap(),
///     r#"{"status":"success","label":"A","score":0.5,"meta":{"b":1,"a":2}}"#
/// );
/// ```
#[derive(Debug, Serialize)]
pub struct SuccessMessage<'a, T> {
    /// Always `success`.
    pub status: Status,
    /// The pipeline's output, flattened.
    #[serde(flatten)]
    pub output: &'a T,
    /// The request's metadata.
    pub meta: &'a Meta,
}

impl<'a, T> SuccessMessage<'a, T> {
    /// The success message for `output` of a request with `meta`.
    pub fn new(output: &'a T, meta: &'a Meta) -> Self {
        SuccessMessage {
            status: Status::Success,
            output,
            meta,
        }
    }
}

/// What goes to the failure queue for an item the pipeline failed alone, as
/// modalkit sends that item's output: `status`, `error`, then `meta`
/// (always, even when empty).
///
/// ```
/// use modalkit_core::wire::ItemFailureMessage;
/// let meta = Default::default();
/// assert_eq!(
///     serde_json::to_string(&ItemFailureMessage::new("bad", &meta)).unwrap(),
///     r#"{"status":"error","error":"bad","meta":{}}"#
/// );
/// ```
#[derive(Debug, Serialize)]
pub struct ItemFailureMessage<'a> {
    /// Always `error`.
    pub status: Status,
    /// Why the item failed.
    pub error: &'a str,
    /// The request's metadata.
    pub meta: &'a Meta,
}

impl<'a> ItemFailureMessage<'a> {
    /// The failure message of an item with `error`, for a request with `meta`.
    pub fn new(error: &'a str, meta: &'a Meta) -> Self {
        ItemFailureMessage {
            status: Status::Error,
            error,
            meta,
        }
    }
}
