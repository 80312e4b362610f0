//! Where an async job's result goes, as modalkit does it: the success
//! output (with the request's `meta`) to `success_queue`, a
//! `DelayedFailure` to `failure_queue`, each only if named, labelled with
//! the job id. Returns what the job store records.

use modalkit_core::Error;
use modalkit_core::wire::{AsyncInput, DelayedFailure, InferenceOutput};
use modalkit_queue::Delivery;
use serde::Serialize;
use serde_json::Value;

use super::record::{CANCELLED_ERROR, JobEnd};

/// Delivers `result` as `envelope` asks and returns how the job ended.
/// Never fails: what cannot be delivered is dead-lettered by [`Delivery`].
pub async fn deliver_outcome<O: Serialize>(
    delivery: &Delivery,
    job_id: &str,
    envelope: AsyncInput<Value>,
    result: Result<O, Error>,
) -> JobEnd {
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
                delivery
                    .deliver_job_result(&success_queue, &output.to_string(), job_id)
                    .await;
            }
            JobEnd::succeeded(output)
        }
        Err(err) => {
            let error = match err {
                Error::Item(message) | Error::InvalidInput(message) => message,
                Error::Cancelled => CANCELLED_ERROR.to_owned(),
                other => other.to_string(),
            };
            if !failure_queue.is_empty() {
                let failure = DelayedFailure::new(error.clone(), meta, message);
                let text = serde_json::to_string(&failure).unwrap_or_default();
                delivery
                    .deliver_job_result(&failure_queue, &text, job_id)
                    .await;
            }
            JobEnd::Failed(error)
        }
    }
}
