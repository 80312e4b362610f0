//! Where an async job's result goes, byte for byte as modalkit sends it:
//! the success output (with the request's `meta`) to `success_queue`, a
//! failure to `failure_queue`, each only if named, labelled with the job
//! id and the `traceparent` of its `delivery` span. Returns what the job
//! store records.

use modalkit_core::ItemError;
use modalkit_core::wire::{AsyncInput, DelayedFailure, ItemFailureMessage, SuccessMessage};
use modalkit_queue::{Delivery, Labels, Outcome};
use serde::Serialize;
use serde_json::Value;

use super::record::{CANCELLED_ERROR, JobEnd};
use crate::traces::{SpanKind, TraceSpan};

/// Delivers `result` as `envelope` asks and returns how the job ended.
/// Never fails: what cannot be delivered is dead-lettered by [`Delivery`].
///
/// As modalkit: a success sends `status`, the output's fields and `meta`;
/// an item the pipeline failed alone sends its error output (`status`,
/// `error`, `meta`); a job that failed as a whole (its batch raised, its
/// deadline passed, it was cancelled) sends a [`DelayedFailure`] holding the
/// whole request.
pub(crate) async fn deliver_outcome<O: Serialize>(
    delivery: &Delivery,
    job: &JobTrace<'_>,
    envelope: AsyncInput<Value>,
    result: Result<O, ItemError>,
) -> JobEnd {
    let (queue, text, end) = message_for(envelope, result);
    if let JobEnd::Failed(error) = &end {
        job.span.set_error(error);
    }
    if !queue.is_empty() {
        let span = job.span.child("delivery", SpanKind::Producer);
        span.set_str("messaging.destination.name", &queue);
        let traceparent = span.traceparent();
        let labels = Labels::job(job.id, traceparent.as_deref());
        let outcome = delivery.deliver(&queue, &text, &labels).await;
        if outcome != Outcome::Delivered {
            span.set_error("undeliverable: dead-lettered");
        }
        span.end();
    }
    end
}

/// A job's id and its span (the parent of its `delivery` span).
pub(crate) struct JobTrace<'a> {
    /// The job's id.
    pub id: &'a str,
    /// The job's span.
    pub span: &'a TraceSpan,
}

/// The queue a result goes to, its bytes, and how the job ended.
fn message_for<O: Serialize>(
    envelope: AsyncInput<Value>,
    result: Result<O, ItemError>,
) -> (String, String, JobEnd) {
    let success = result.and_then(|output| {
        serde_json::to_string(&SuccessMessage::new(&output, &envelope.meta))
            .map_err(|err| ItemError::Pipeline(format!("output could not be serialized: {err}")))
    });
    match success {
        Ok(text) => {
            let recorded = serde_json::from_str(&text).unwrap_or(Value::Null);
            (envelope.success_queue, text, JobEnd::succeeded(recorded))
        }
        // The pipeline failed this item alone: its error output.
        Err(ItemError::Item(error) | ItemError::InvalidInput(error)) => {
            let text = serde_json::to_string(&ItemFailureMessage::new(&error, &envelope.meta))
                .unwrap_or_default();
            (envelope.failure_queue, text, JobEnd::Failed(error))
        }
        // The job failed as a whole.
        Err(other) => {
            let error = match other {
                ItemError::Pipeline(message) => {
                    format!("Internal Server Error. Error log: {message}")
                }
                ItemError::Cancelled => CANCELLED_ERROR.to_owned(),
                other => other.to_string(),
            };
            let queue = envelope.failure_queue.clone();
            let text = serde_json::to_string(&DelayedFailure::new(error.clone(), envelope))
                .unwrap_or_default();
            (queue, text, JobEnd::Failed(error))
        }
    }
}
