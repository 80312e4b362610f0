//! Async jobs, from acceptance to delivery: the one owner of that path.
//!
//! Two doors lead in: `POST /predict_async` (`routes/predict.rs`) and, in
//! durable mode, the SQS input consumer ([`consumer`]). Both parse and
//! validate with [`parse_message`], then [`AsyncJobs`] records, runs,
//! delivers and records again:
//!
//! ```text
//!  HTTP ──accept──┬─ embedded: record queued ─> batcher ─────────────┐
//!                 └─ durable:  record queued ─> SQS input queue ─┐   │
//!  SQS consumer (every container) <──────────────────────────────┘   │
//!        └─ start (queued -> running, skips cancelled/ended) ─> batcher
//!                                                                     │
//!        deliver (success / failure queue, dead letters) <───────────┘
//!        └─ finish (running -> succeeded | failed, written once)
//! ```
//!
//! Embedded mode (no `queue_config.input_queue`): the job waits in this
//! process; it survives a graceful drain, not a killed container. Durable
//! mode: `/predict_async` answers only after SQS acknowledged the message;
//! the message is deleted only after the result was delivered, so a killed
//! container's jobs reappear and another container runs them. Records live
//! in a [`store::JobStore`] (memory, or DynamoDB shared by every container).

mod claims;
#[cfg(feature = "sqs")]
mod consumed;
#[cfg(feature = "sqs")]
pub(crate) mod consumer;
mod error;
pub(crate) mod outcome;
pub(crate) mod record;
pub(crate) mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use modalkit_core::wire::AsyncInput;
use modalkit_core::{Batcher, InferencePipeline, ItemError, SubmitOptions, Ticket};
use modalkit_queue::Delivery;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::aws::InputQueue;
use crate::error::ApiError;
use crate::extract::{parse_value, validate};
use crate::traces::{SpanKind, TimingCell, TraceSpan, Tracer};
use claims::{Claim, Claims};
pub(crate) use error::JobError;
use outcome::{JobTrace, deliver_outcome};
use record::{JobEnd, JobRecord, JobStatus};
use store::{JobStore, KeyClaim, StoreError, Transition};

/// Where accepted jobs wait.
pub(crate) enum JobIntake {
    /// In this process's batcher queue.
    Embedded,
    /// In an SQS input queue read by every container's consumer.
    Durable(InputQueue),
}

/// A client's idempotency key and the fingerprint of its request.
pub(crate) struct IdempotencyKey {
    /// The `Idempotency-Key` header's value.
    pub key: String,
    /// Hash of the model and the request body.
    pub fingerprint: String,
}

impl IdempotencyKey {
    /// The longest key accepted.
    pub(crate) const MAX_LEN: usize = 255;

    /// A key for a request to `model` with this (parsed) body; 400 when the
    /// key is empty, too long or not visible ASCII. The fingerprint does not
    /// depend on the order of the body's keys.
    pub(crate) fn new(key: &str, model: &str, body: &AsyncInput<Value>) -> Result<Self, JobError> {
        if key.is_empty() || key.len() > Self::MAX_LEN || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(JobError::InvalidIdempotencyKey {
                max_len: Self::MAX_LEN,
            });
        }
        let body = serde_json::to_value(body).map_err(JobError::Encode)?;
        let mut hash = Sha256::new();
        hash.update(model.as_bytes());
        hash.update([0]);
        hash_canonical(&mut hash, &body);
        let fingerprint = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(IdempotencyKey {
            key: key.to_owned(),
            fingerprint,
        })
    }
}

/// Feeds `value` to `hash` with object keys sorted, so two requests that
/// differ only in key order hash alike (maps keep their order otherwise).
fn hash_canonical(hash: &mut Sha256, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            hash.update(b"{");
            for key in keys {
                hash.update(Value::from(key.as_str()).to_string().as_bytes());
                hash.update(b":");
                hash_canonical(hash, &map[key]);
                hash.update(b",");
            }
            hash.update(b"}");
        }
        Value::Array(items) => {
            hash.update(b"[");
            for item in items {
                hash_canonical(hash, item);
                hash.update(b",");
            }
            hash.update(b"]");
        }
        scalar => hash.update(scalar.to_string().as_bytes()),
    }
}

/// Parses and validates an async message for pipeline `P`, naming fields
/// under `message`. Both doors use it.
pub(crate) fn parse_message<P: InferencePipeline>(message: &Value) -> Result<P::Input, ApiError> {
    let input: P::Input = parse_value(message, "message")?;
    validate(&input, "message")?;
    Ok(input)
}

/// The async jobs of a server. See the module docs.
pub(crate) struct AsyncJobs<P: InferencePipeline> {
    store: Arc<dyn JobStore>,
    delivery: Arc<Delivery>,
    batchers: BTreeMap<String, Arc<Batcher<P>>>,
    intake: JobIntake,
    claims: Arc<Claims>,
    tasks: TaskTracker,
    async_timeout: Duration,
    /// How long an unfinished record may live before it expires.
    record_ttl_seconds: f64,
    tracer: Tracer,
}

impl<P: InferencePipeline> AsyncJobs<P> {
    /// Async jobs over these batchers, recorded in `store`, delivered by
    /// `delivery`, waiting where `intake` says.
    pub(crate) fn new(
        store: Arc<dyn JobStore>,
        delivery: Arc<Delivery>,
        batchers: BTreeMap<String, Arc<Batcher<P>>>,
        intake: JobIntake,
        async_timeout: Duration,
        ttl_seconds: f64,
    ) -> Self {
        AsyncJobs {
            store,
            delivery,
            batchers,
            intake,
            claims: Arc::default(),
            tasks: TaskTracker::new(),
            async_timeout,
            record_ttl_seconds: async_timeout.as_secs_f64() + ttl_seconds,
            tracer: Tracer::disabled(),
        }
    }

    /// Traces each job (a `job` span with its stages and delivery) with
    /// `tracer`.
    pub(crate) fn with_tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = tracer;
        self
    }

    /// Starts a job's span, continuing `traceparent`.
    fn job_span(&self, id: Uuid, model: &str, traceparent: Option<&str>) -> TraceSpan {
        let span = self.tracer.start("job", SpanKind::Consumer, traceparent);
        span.set_str("modalkit.job_id", &id.to_string());
        span.set_str("modalkit.model", model);
        span
    }

    /// Result delivery.
    pub(crate) fn delivery(&self) -> &Arc<Delivery> {
        &self.delivery
    }

    /// Embedded jobs in flight in this process (awaited on shutdown).
    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Accepts a validated job for `model` and returns its id. A queue this
    /// binary cannot deliver to (its backend not compiled in, or a URL this
    /// server may not call) is a 422, and nothing is accepted. With an idempotency key
    /// already used for the same request, returns that job's id and accepts
    /// nothing new; with another request, 422. The job's trace continues
    /// `traceparent` (the accepting request's).
    pub(crate) async fn accept(
        &self,
        model: &str,
        envelope: AsyncInput<Value>,
        input: P::Input,
        idempotency: Option<IdempotencyKey>,
        traceparent: Option<String>,
    ) -> Result<Uuid, JobError> {
        check_destinations(&self.delivery, &envelope)?;
        let id = Uuid::new_v4();
        if let Some(key) = &idempotency {
            match self.store.claim_key(&key.key, &key.fingerprint, id).await? {
                KeyClaim::New => {}
                KeyClaim::Existing(job) => return Ok(job),
                KeyClaim::Conflict(job) => {
                    return Err(JobError::IdempotencyKeyReused {
                        key: key.key.clone(),
                        job_id: job.to_string(),
                    });
                }
            }
        }
        let accepted = self
            .submit(id, model, envelope, input, traceparent.as_deref())
            .await;
        if let (Err(_), Some(key)) = (&accepted, &idempotency)
            && let Err(err) = self.store.release_key(&key.key).await
        {
            tracing::warn!(%err, "could not release the idempotency key of a refused job");
        }
        accepted.map(|()| id)
    }

    async fn submit(
        &self,
        id: Uuid,
        model: &str,
        envelope: AsyncInput<Value>,
        input: P::Input,
        traceparent: Option<&str>,
    ) -> Result<(), JobError> {
        let batcher = self
            .batchers
            .get(model)
            .ok_or_else(|| JobError::NoBatcher(model.to_owned()))?;
        self.store
            .create(JobRecord::queued(id, model, self.record_ttl_seconds))
            .await?;
        let submitted = match &self.intake {
            JobIntake::Embedded => {
                let span = self.job_span(id, model, traceparent);
                self.submit_embedded(id, batcher, envelope, input, span)
            }
            JobIntake::Durable(queue) => {
                drop(input);
                queue.send(id, model, &envelope, traceparent).await
            }
        };
        if submitted.is_err()
            && let Err(err) = self.store.remove(id).await
        {
            tracing::warn!(%err, job_id = %id, "could not remove the record of a refused job");
        }
        submitted
    }

    fn submit_embedded(
        &self,
        id: Uuid,
        batcher: &Arc<Batcher<P>>,
        envelope: AsyncInput<Value>,
        input: P::Input,
        span: TraceSpan,
    ) -> Result<(), JobError> {
        let claim = self.claims.hold(id);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let on_start = {
            let claim = Arc::clone(&claim);
            move || {
                let start = claim.try_start();
                if start {
                    let _ = started_tx.send(());
                }
                start
            }
        };
        let timing = span.timing_cell();
        let options = SubmitOptions {
            deadline: Some(Instant::now() + self.async_timeout),
            on_start: Some(Box::new(on_start)),
            timing: timing.clone(),
        };
        let ticket = match batcher.submit_with(input, options) {
            Ok(ticket) => ticket,
            Err(err) => {
                self.claims.release(id);
                span.set_error(&err.to_string());
                span.end();
                return Err(err.into());
            }
        };
        let held = HeldJob {
            id,
            claim,
            claims: Arc::clone(&self.claims),
            started: started_rx,
            envelope,
            store: Arc::clone(&self.store),
            delivery: Arc::clone(&self.delivery),
            span,
            timing,
        };
        self.tasks.spawn(held.finish(ticket));
        Ok(())
    }

    /// A job's record, `None` if unknown or expired.
    pub(crate) async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, JobError> {
        Ok(self.store.get(id).await?)
    }

    /// Cancels a queued job; 409 with its state if it is running or ended.
    pub(crate) async fn cancel(&self, id: Uuid) -> Result<JobRecord, JobError> {
        let held_here = self.claims.get(id);
        if let Some(claim) = &held_here
            && !claim.try_cancel()
        {
            return Err(JobError::Conflict {
                job_id: id.to_string(),
                status: JobStatus::Running.as_str(),
            });
        }
        match self.store.cancel(id).await? {
            Transition::Done => {}
            Transition::Missing => return Err(JobError::NotFound(id.to_string())),
            Transition::Refused(status) => {
                return Err(JobError::Conflict {
                    job_id: id.to_string(),
                    status: status.as_str(),
                });
            }
        }
        tracing::info!(job_id = %id, "job cancelled");
        self.store
            .get(id)
            .await?
            .ok_or_else(|| JobError::NotFound(id.to_string()))
    }
}

/// Writes a job's end once; an end already recorded (a duplicate delivery,
/// or a cancel that won) or an expired record is logged and left as it is.
pub(super) async fn record_end(
    store: &dyn JobStore,
    id: Uuid,
    end: JobEnd,
) -> Result<(), StoreError> {
    let written = store.finish(id, end).await?;
    if written != Transition::Done {
        tracing::info!(job_id = %id, ?written, "the job's end was already recorded (or the record expired)");
    }
    Ok(())
}

/// An embedded job this process holds: waits for its batch (recording
/// `running` when it starts) or its cancellation, delivers, records.
struct HeldJob {
    id: Uuid,
    claim: Arc<Claim>,
    claims: Arc<Claims>,
    started: tokio::sync::oneshot::Receiver<()>,
    envelope: AsyncInput<Value>,
    store: Arc<dyn JobStore>,
    delivery: Arc<Delivery>,
    span: TraceSpan,
    timing: Option<TimingCell>,
}

impl HeldJob {
    async fn finish<O: serde::Serialize>(self, ticket: Ticket<O>) {
        let HeldJob {
            id,
            claim,
            claims,
            mut started,
            envelope,
            store,
            delivery,
            span,
            timing,
        } = self;
        let job_id = id.to_string();
        let mut ticket = ticket;
        let mut watching_start = true;
        let result = loop {
            tokio::select! {
                biased;
                begun = &mut started, if watching_start => {
                    watching_start = false;
                    if begun.is_ok()
                        && let Err(err) = store.start(id).await
                    {
                        tracing::warn!(%err, job_id, "could not record that the job started");
                    }
                }
                () = claim.cancelled.notified() => break Err(ItemError::Cancelled),
                result = &mut ticket => break result,
            }
        };
        // Dropped here: a cancelled job's item is discarded unseen.
        drop(ticket);
        claims.release(id);
        if let Some(timing) = timing.as_ref().and_then(|cell| cell.get()) {
            span.record_item(timing, None);
        }
        let cancelled = matches!(result, Err(ItemError::Cancelled));
        let trace = JobTrace {
            id: &job_id,
            span: &span,
        };
        let end = deliver_outcome(&delivery, &trace, envelope, result).await;
        if !cancelled && let Err(err) = record_end(store.as_ref(), id, end).await {
            tracing::error!(%err, job_id, "could not record the job's end");
        }
        span.end();
    }
}

/// Refuses a job whose success or failure queue this server cannot deliver
/// to, before anything is recorded: its result could only be dead-lettered.
fn check_destinations(delivery: &Delivery, envelope: &AsyncInput<Value>) -> Result<(), JobError> {
    for (field, queue) in [
        ("success_queue", &envelope.success_queue),
        ("failure_queue", &envelope.failure_queue),
    ] {
        delivery
            .check_destination(queue)
            .map_err(|source| JobError::UndeliverableQueue {
                field,
                queue: queue.clone(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(body: &str) -> String {
        let envelope: AsyncInput<Value> =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}"));
        IdempotencyKey::new("k", "m", &envelope)
            .map(|key| key.fingerprint)
            .unwrap_or_default()
    }

    #[test]
    fn fingerprints_ignore_key_order_but_not_values() {
        let a = fingerprint(
            r#"{"message": {"a": 1, "b": [1, {"x": 2, "y": 3}]}, "meta": {"p": 1, "q": 2}}"#,
        );
        let b = fingerprint(
            r#"{"meta": {"q": 2, "p": 1}, "message": {"b": [1, {"y": 3, "x": 2}], "a": 1}}"#,
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            fingerprint(
                r#"{"message": {"a": 1, "b": [{"x": 2, "y": 3}, 1]}, "meta": {"p": 1, "q": 2}}"#
            )
        );
        assert_ne!(
            a,
            fingerprint(
                r#"{"message": {"a": 2, "b": [1, {"x": 2, "y": 3}]}, "meta": {"p": 1, "q": 2}}"#
            )
        );
    }
}
