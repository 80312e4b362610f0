//! Where an async item's result goes, as modalkit does it: the success
//! output (with the request's `meta`) to `success_queue`, a
//! `DelayedFailure` to `failure_queue`, each only if named. Used by the
//! HTTP async path and the SQS input consumer alike.

use modalkit_core::Error;
use modalkit_core::wire::{AsyncInput, DelayedFailure, InferenceOutput};
use serde::Serialize;
use serde_json::Value;

use crate::delivery::Delivery;

/// How an async item ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemOutcome {
    /// The `InferenceOutput` that was (or would have been) sent.
    Succeeded(Value),
    /// Why it failed.
    Failed(String),
}

/// Delivers `result` as `envelope` asks and returns the outcome. Never fails:
/// what cannot be delivered is dead-lettered by [`Delivery`].
pub async fn deliver_outcome<O: Serialize>(
    delivery: &Delivery,
    envelope: AsyncInput<Value>,
    result: Result<O, Error>,
) -> ItemOutcome {
    let AsyncInput {
        message,
        success_queue,
        failure_queue,
        meta,
    } = envelope;
    let output = result.and_then(|output| {
        serde_json::to_value(InferenceOutput::success(output, meta.clone()))
            .map_err(|err| Error::Pipeline(format!("output could not be serialized: {err}")))
    });
    match output {
        Ok(output) => {
            if !success_queue.is_empty() {
                delivery.deliver(&success_queue, &output.to_string()).await;
            }
            ItemOutcome::Succeeded(output)
        }
        Err(err) => {
            let error = match err {
                Error::Item(message) | Error::InvalidInput(message) => message,
                other => other.to_string(),
            };
            if !failure_queue.is_empty() {
                let failure = DelayedFailure::new(error.clone(), meta, message);
                let text = serde_json::to_string(&failure).unwrap_or_default();
                delivery.deliver(&failure_queue, &text).await;
            }
            ItemOutcome::Failed(error)
        }
    }
}
