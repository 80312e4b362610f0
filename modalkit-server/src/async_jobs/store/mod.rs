//! `JobStore`: where every container records async jobs, so any of them
//! answers `GET /jobs/{id}`, cancels, and recognises a resubmitted
//! idempotency key. State changes are conditional: a job's final state is
//! written once, even when its message is delivered twice.
//!
//! Two stores: [`MemoryJobStore`] (the default; one process, bounded) and,
//! with the `dynamodb` feature, `DynamoJobStore` (one table shared by every
//! container, expiry by DynamoDB's TTL).

mod memory;

#[cfg(feature = "dynamodb")]
mod dynamodb;

use async_trait::async_trait;
use uuid::Uuid;

pub use memory::MemoryJobStore;

#[cfg(feature = "dynamodb")]
pub use dynamodb::DynamoJobStore;

use super::record::{JobEnd, JobRecord, JobStatus};

/// Why the store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store holds as many unfinished jobs as it may.
    #[error("the job store is full of unfinished jobs ({0})")]
    Full(usize),
    /// The store's service failed or could not be reached.
    #[error("the job store is unavailable: {0}")]
    Unavailable(String),
}

/// The result of a conditional state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The change was written.
    Done,
    /// No such job (never created, or expired).
    Missing,
    /// The job was not in a state that allows the change; this is the
    /// state it is in.
    Refused(JobStatus),
}

/// What an idempotency key refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key was free and now names the offered job.
    New,
    /// The key was used with the same body: this is its job.
    Existing(Uuid),
    /// The key was used with another body for this job.
    Conflict(Uuid),
}

/// Job records shared by the containers of one deployment.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// The store's name, for logs (`memory`, `dynamodb`).
    fn name(&self) -> &str;

    /// Records a new job. `Ok(false)` if a job with this id already exists
    /// (left as it is).
    async fn create(&self, record: JobRecord) -> Result<bool, StoreError>;

    /// The job's record, `None` if unknown or expired.
    async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError>;

    /// `queued -> running`.
    async fn start(&self, id: Uuid) -> Result<Transition, StoreError>;

    /// `queued | running -> succeeded | failed`, written once; the record
    /// then expires after the store's TTL.
    async fn finish(&self, id: Uuid, end: JobEnd) -> Result<Transition, StoreError>;

    /// `queued -> cancelled`.
    async fn cancel(&self, id: Uuid) -> Result<Transition, StoreError>;

    /// Forgets a job whose submission failed before it was accepted.
    async fn remove(&self, id: Uuid) -> Result<(), StoreError>;

    /// Claims an idempotency key for `id` with the request's fingerprint,
    /// for the store's TTL.
    async fn claim_key(
        &self,
        key: &str,
        fingerprint: &str,
        id: Uuid,
    ) -> Result<KeyClaim, StoreError>;

    /// Releases a key whose job was never accepted.
    async fn release_key(&self, key: &str) -> Result<(), StoreError>;
}
