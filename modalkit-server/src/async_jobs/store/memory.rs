//! `MemoryJobStore`: job records in the process, bounded in unfinished jobs
//! and kept for the TTL after they end. The embedded default: it is lost
//! with the process and seen by no other container.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use uuid::Uuid;

use super::{JobStore, KeyClaim, StoreError, Transition};
use crate::async_jobs::record::{CANCELLED_ERROR, JobEnd, JobRecord, JobStatus, unix_now};

#[derive(Default)]
struct Records {
    jobs: HashMap<Uuid, JobRecord>,
    /// Jobs in the order they ended (the eviction order).
    ended: VecDeque<Uuid>,
    /// Idempotency key -> (fingerprint, job, expires at).
    keys: HashMap<String, (String, Uuid, f64)>,
}

/// In-process job records. See the module docs.
pub struct MemoryJobStore {
    records: Mutex<Records>,
    capacity: usize,
    ttl_seconds: f64,
}

impl MemoryJobStore {
    /// A store of at most `capacity` jobs, keeping ended ones for
    /// `ttl_seconds` (the oldest ended ones are evicted early for room).
    pub fn new(capacity: usize, ttl_seconds: f64) -> Self {
        MemoryJobStore {
            records: Mutex::new(Records::default()),
            capacity,
            ttl_seconds,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves `id` from one of `from` to the state `apply` writes.
    fn transition(
        &self,
        id: Uuid,
        from: &[JobStatus],
        apply: impl FnOnce(&mut JobRecord, f64),
    ) -> Transition {
        let now = unix_now();
        let mut records = self.lock();
        let Some(record) = records.jobs.get_mut(&id).filter(|r| !r.expired(now)) else {
            return Transition::Missing;
        };
        if !from.contains(&record.status) {
            return Transition::Refused(record.status);
        }
        apply(record, now);
        if record.status.is_final() {
            record.expires_at = now + self.ttl_seconds;
            records.ended.push_back(id);
        }
        Transition::Done
    }
}

#[async_trait]
impl JobStore for MemoryJobStore {
    fn name(&self) -> &str {
        "memory"
    }

    async fn create(&self, record: JobRecord) -> Result<bool, StoreError> {
        let now = unix_now();
        let mut records = self.lock();
        if records.jobs.contains_key(&record.job_id) {
            return Ok(false);
        }
        // Evict expired records first, then the oldest ended ones for room.
        while let Some(id) = records.ended.front().copied() {
            let expired = records.jobs.get(&id).is_none_or(|r| r.expired(now));
            if !expired && records.jobs.len() < self.capacity {
                break;
            }
            records.ended.pop_front();
            records.jobs.remove(&id);
        }
        records.keys.retain(|_, (_, _, expires)| *expires > now);
        if records.jobs.len() >= self.capacity {
            return Err(StoreError::Full(self.capacity));
        }
        // An unfinished job never expires here: it lives as long as the process.
        let mut record = record;
        record.expires_at = f64::INFINITY;
        records.jobs.insert(record.job_id, record);
        Ok(true)
    }

    async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let now = unix_now();
        Ok(self
            .lock()
            .jobs
            .get(&id)
            .filter(|r| !r.expired(now))
            .cloned())
    }

    async fn start(&self, id: Uuid) -> Result<Transition, StoreError> {
        Ok(self.transition(id, &[JobStatus::Queued], |record, now| {
            record.status = JobStatus::Running;
            record.updated_at = now;
        }))
    }

    async fn finish(&self, id: Uuid, end: JobEnd) -> Result<Transition, StoreError> {
        Ok(self.transition(
            id,
            &[JobStatus::Queued, JobStatus::Running],
            |record, now| record.end(end, now),
        ))
    }

    async fn cancel(&self, id: Uuid) -> Result<Transition, StoreError> {
        Ok(self.transition(id, &[JobStatus::Queued], |record, now| {
            record.status = JobStatus::Cancelled;
            record.error = Some(CANCELLED_ERROR.to_owned());
            record.updated_at = now;
        }))
    }

    async fn remove(&self, id: Uuid) -> Result<(), StoreError> {
        self.lock().jobs.remove(&id);
        Ok(())
    }

    async fn claim_key(
        &self,
        key: &str,
        fingerprint: &str,
        id: Uuid,
    ) -> Result<KeyClaim, StoreError> {
        let now = unix_now();
        let mut records = self.lock();
        if let Some((known, job, expires)) = records.keys.get(key)
            && *expires > now
        {
            return Ok(if known == fingerprint {
                KeyClaim::Existing(*job)
            } else {
                KeyClaim::Conflict(*job)
            });
        }
        records.keys.insert(
            key.to_owned(),
            (fingerprint.to_owned(), id, now + self.ttl_seconds),
        );
        Ok(KeyClaim::New)
    }

    async fn release_key(&self, key: &str) -> Result<(), StoreError> {
        self.lock().keys.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map(|rt| rt.block_on(future))
            .unwrap_or_else(|err| panic!("runtime: {err}"))
    }

    #[test]
    fn lifecycle_capacity_expiry_and_conditional_writes() {
        block(async {
            let store = MemoryJobStore::new(2, 0.05);
            let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
            assert!(store.create(JobRecord::queued(a, "m", 60.0)).await.unwrap());
            assert!(!store.create(JobRecord::queued(a, "m", 60.0)).await.unwrap());
            assert!(store.create(JobRecord::queued(b, "m", 60.0)).await.unwrap());
            assert!(matches!(
                store.create(JobRecord::queued(c, "m", 60.0)).await,
                Err(StoreError::Full(2))
            ));
            assert_eq!(store.start(a).await.unwrap(), Transition::Done);
            assert_eq!(
                store.cancel(a).await.unwrap(),
                Transition::Refused(JobStatus::Running)
            );
            let end = JobEnd::Failed("x".into());
            assert_eq!(
                store.finish(a, end.clone()).await.unwrap(),
                Transition::Done
            );
            assert_eq!(
                store
                    .finish(a, JobEnd::succeeded(serde_json::json!(1)))
                    .await
                    .unwrap(),
                Transition::Refused(JobStatus::Failed),
                "the final state is written once"
            );
            assert_eq!(
                store.get(a).await.unwrap().unwrap().error.as_deref(),
                Some("x")
            );
            assert!(store.create(JobRecord::queued(c, "m", 60.0)).await.unwrap());
            assert!(
                store.get(a).await.unwrap().is_none(),
                "oldest ended job evicted for room"
            );
            assert_eq!(store.cancel(b).await.unwrap(), Transition::Done);
            assert_eq!(
                store.start(b).await.unwrap(),
                Transition::Refused(JobStatus::Cancelled)
            );
            tokio::time::sleep(std::time::Duration::from_millis(80)).await;
            assert!(
                store.get(b).await.unwrap().is_none(),
                "expired after the TTL"
            );
            assert!(
                store.get(c).await.unwrap().is_some(),
                "unfinished jobs do not expire"
            );
        });
    }

    #[test]
    fn idempotency_keys() {
        block(async {
            let store = MemoryJobStore::new(10, 0.05);
            let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
            assert_eq!(store.claim_key("k", "f1", a).await.unwrap(), KeyClaim::New);
            assert_eq!(
                store.claim_key("k", "f1", b).await.unwrap(),
                KeyClaim::Existing(a)
            );
            assert_eq!(
                store.claim_key("k", "f2", b).await.unwrap(),
                KeyClaim::Conflict(a)
            );
            store.release_key("k").await.unwrap();
            assert_eq!(store.claim_key("k", "f2", b).await.unwrap(), KeyClaim::New);
            tokio::time::sleep(std::time::Duration::from_millis(80)).await;
            assert_eq!(
                store.claim_key("k", "f1", a).await.unwrap(),
                KeyClaim::New,
                "keys expire"
            );
        });
    }
}
