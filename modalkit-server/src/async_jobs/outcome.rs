//! Where an async job's result goes, byte for byte as modalkit sends it:
//! the success output (with the request's `meta`) to `success_queue`, a
//! failure to `failure_queue`, each only if named, labelled with the job
//! id. Returns what the job store records.

use modalkit_core::Error;
use modalkit_core::wire::{AsyncInput, DelayedFailure, ItemFailureMessage, SuccessMessage};
use modalkit_queue::Delivery;
use serde::Serialize;
use serde_json::Value;

use super::record::{CANCELLED_ERROR, JobEnd};

/// Delivers `result` as `envelope` asks and returns how the job ended.
/// Never fails: what cannot be delivered is dead-lettered by [`Delivery`].
///
/// As modalkit: a success sends `status`, the output's fields and `meta`;
/// an item the pipeline failed alone sends its error output (`status`,
/// `error`, `meta`); a job that failed as a whole (its batch raised, its
/// deadline passed, it was cancelled) sends a [`DelayedFailure`] holding the
/// whole request.
pub async fn deliver_outcome<O: Serialize>(
    delivery: &Delivery,
    job_id: &str,
    envelope: AsyncInput<Value>,
    result: Result<O, Error>,
) -> JobEnd {
    let message = match &result {
        Ok(output) => serde_json::to_string(&SuccessMessage::new(output, &envelope.meta))
            .map_err(|err| Error::Pipeline(format!("output could not be serialized: {err}"))),
        Err(_) => Ok(String::new()),
    };
    let failure = match (result, message) {
        (Ok(_), Ok(message)) => {
            if !envelope.success_queue.is_empty() {
                delivery
                    .deliver_job_result(&envelope.success_queue, &message, job_id)
                    .await;
            }
            let recorded = serde_json::from_str(&message).unwrap_or(Value::Null);
            return JobEnd::succeeded(recorded);
        }
        (Ok(_), Err(err)) | (Err(err), _) => err,
    };
    let (error, text) = match failure {
        // The pipeline failed this item alone: its error output.
        Error::Item(error) | Error::InvalidInput(error) => {
            let text = serde_json::to_string(&ItemFailureMessage::new(&error, &envelope.meta))
                .unwrap_or_default();
            (error, text)
        }
        // The job failed as a whole.
        other => {
            let error = match other {
                Error::Pipeline(message) => format!("Internal Server Error. Error log: {message}"),
                Error::Cancelled => CANCELLED_ERROR.to_owned(),
                other => other.to_string(),
            };
            let failure_queue = envelope.failure_queue.clone();
            let text = serde_json::to_string(&DelayedFailure::new(error.clone(), envelope))
                .unwrap_or_default();
            if !failure_queue.is_empty() {
                delivery
                    .deliver_job_result(&failure_queue, &text, job_id)
                    .await;
            }
            return JobEnd::Failed(error);
        }
    };
    if !envelope.failure_queue.is_empty() {
        delivery
            .deliver_job_result(&envelope.failure_queue, &text, job_id)
            .await;
    }
    JobEnd::Failed(error)
}
