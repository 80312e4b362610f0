//! Why the job layer refused or could not answer: a key, a destination, the
//! batcher, the store or the input queue. `crate::error` turns each into an
//! HTTP status; the job layer itself knows nothing of HTTP.

use modalkit_core::ItemError;
use modalkit_queue::QueueError;

use super::store::StoreError;

/// A job that could not be accepted, read or cancelled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    /// The `Idempotency-Key` header cannot be used.
    #[error("Idempotency-Key must be 1 to {max_len} visible ASCII characters")]
    InvalidIdempotencyKey {
        /// The longest key accepted.
        max_len: usize,
    },
    /// The idempotency key was used for another request.
    #[error("Idempotency-Key '{key}' was already used with a different request (job {job_id})")]
    IdempotencyKeyReused {
        /// The key.
        key: String,
        /// The job it names.
        job_id: String,
    },
    /// A success or failure queue this binary cannot deliver to.
    #[error("{field} '{queue}': {source}")]
    UndeliverableQueue {
        /// `success_queue` or `failure_queue`.
        field: &'static str,
        /// The queue name or URL.
        queue: String,
        /// Why it cannot be delivered to.
        #[source]
        source: QueueError,
    },
    /// No such job (or it expired).
    #[error("job '{0}' not found (unknown or expired)")]
    NotFound(String),
    /// The job is past the state the request needs.
    #[error("job '{job_id}' is {status}; only a queued job can be cancelled")]
    Conflict {
        /// The job.
        job_id: String,
        /// Its state.
        status: &'static str,
    },
    /// The model's batcher refused the job (overloaded, shutting down).
    #[error(transparent)]
    Refused(#[from] ItemError),
    /// The job store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The input queue did not take the job, so it was not accepted.
    #[error("the input queue did not take the job: {0}")]
    InputQueue(#[from] QueueError),
    /// The request could not be encoded or fingerprinted.
    #[error("cannot encode the job: {0}")]
    Encode(#[source] serde_json::Error),
    /// A model the caller resolved has no batcher (a bug).
    #[error("no batcher for model '{0}'")]
    NoBatcher(String),
}
