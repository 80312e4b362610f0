//! The consumed half of the job layer: a job the SQS consumer hands in is
//! run, delivered and recorded here, and the consumer told what to do with
//! its message.

use std::time::Instant;

use modalkit_core::wire::AsyncInput;
use modalkit_core::{InferencePipeline, ItemError, SubmitOptions};
use serde_json::Value;
use uuid::Uuid;

use super::outcome::{JobTrace, deliver_outcome};
use super::record::{JobEnd, JobRecord, JobStatus};
use super::store::Transition;
use super::{AsyncJobs, JobError, check_destinations};
use crate::traces::TraceSpan;

/// What the SQS consumer should do with a message it handed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// The job ended (or had ended): delete the message.
    Delete,
    /// It could not run here now: make the message visible again.
    Release,
    /// This binary cannot deliver its result (a queue whose backend is not
    /// compiled in, a URL off the allow-list): leave the message hidden
    /// until its visibility timeout, for a container that can, or for the
    /// queue's own redrive policy. Nothing is run or dead-lettered.
    Refuse,
}

/// A message the SQS consumer hands in (see [`AsyncJobs::run_consumed`]).
pub(crate) struct ConsumedJob<I> {
    /// Its job id.
    pub id: Uuid,
    /// The model it names (or the consumer's default).
    pub model: String,
    /// Whether it has a record already (`/predict_async` sent it); a
    /// message from another producer gets one here.
    pub recorded: bool,
    /// The message.
    pub envelope: AsyncInput<Value>,
    /// Its parsed input, or why it is invalid.
    pub input: Result<I, String>,
    /// The trace it continues (its `traceparent` attribute).
    pub traceparent: Option<String>,
}

/// A queue no container could ever send to (a name SQS refuses): the job
/// runs and its result is dead-lettered at once, rather than the message
/// waiting on the queue for a container that does not exist.
fn names_an_impossible_queue(error: &JobError) -> bool {
    matches!(
        error,
        JobError::UndeliverableQueue {
            source: modalkit_queue::QueueError::Rejected { .. },
            ..
        }
    )
}

impl<P: InferencePipeline> AsyncJobs<P> {
    /// Runs a job that came through the input queue: skips it if it was
    /// cancelled (delivering its cancellation) or already ended, else runs
    /// it, delivers its result and records its end, all in its `job` span.
    pub(crate) async fn run_consumed(&self, job: ConsumedJob<P::Input>) -> Disposition {
        let span = self.job_span(job.id, &job.model, job.traceparent.as_deref());
        let disposition = self.run_consumed_in(job, &span).await;
        span.end();
        disposition
    }

    async fn run_consumed_in(&self, job: ConsumedJob<P::Input>, span: &TraceSpan) -> Disposition {
        let ConsumedJob {
            id,
            model,
            recorded,
            envelope,
            input,
            ..
        } = job;
        let model = model.as_str();
        if let Err(err) = check_destinations(&self.delivery, &envelope)
            && !names_an_impossible_queue(&err)
        {
            tracing::error!(job_id = %id, %err, "refusing a consumed job this binary cannot deliver; it stays on the input queue");
            span.set_error(&format!("refused: {err}"));
            metrics::counter!("modalkit_input_messages_refused_total").increment(1);
            return Disposition::Refuse;
        }
        let job_id = id.to_string();
        let trace = JobTrace { id: &job_id, span };
        if !recorded
            && let Err(err) = self
                .store
                .create(JobRecord::queued(id, model, self.record_ttl_seconds))
                .await
        {
            tracing::warn!(%err, job_id = %id, "cannot record the job; leaving its message for later");
            return Disposition::Release;
        }
        let input = match input {
            Ok(input) => input,
            Err(problem) => {
                let end = deliver_outcome::<P::Output>(
                    &self.delivery,
                    &trace,
                    envelope,
                    Err(ItemError::Item(problem)),
                )
                .await;
                return self.record_end(id, end).await;
            }
        };
        match self.store.start(id).await {
            // Running already: its earlier holder died, or a duplicate
            // delivery; at least once, so run it.
            Ok(
                Transition::Done | Transition::Refused(JobStatus::Running) | Transition::Missing,
            ) => {}
            Ok(Transition::Refused(JobStatus::Cancelled)) => {
                deliver_outcome::<P::Output>(
                    &self.delivery,
                    &trace,
                    envelope,
                    Err(ItemError::Cancelled),
                )
                .await;
                return Disposition::Delete;
            }
            Ok(Transition::Refused(status)) => {
                tracing::info!(job_id = %id, status = status.as_str(), "job already ended; dropping its duplicate message");
                return Disposition::Delete;
            }
            Err(err) => {
                tracing::warn!(%err, job_id = %id, "cannot start the job; leaving its message for later");
                return Disposition::Release;
            }
        }
        let Some(batcher) = self.batchers.get(model) else {
            let end = deliver_outcome::<P::Output>(
                &self.delivery,
                &trace,
                envelope,
                Err(ItemError::Item(format!("unknown model '{model}'"))),
            )
            .await;
            return self.record_end(id, end).await;
        };
        let timing = span.timing_cell();
        let options = SubmitOptions {
            deadline: Some(Instant::now() + self.async_timeout),
            on_start: None,
            timing: timing.clone(),
        };
        let result = match batcher.submit_waiting(input, options).await {
            Ok(ticket) => ticket.await,
            Err(err) => Err(err),
        };
        if let Some(timing) = timing.as_ref().and_then(|cell| cell.get()) {
            span.record_item(timing, None);
        }
        if let Err(err @ (ItemError::Unavailable { .. } | ItemError::Overloaded { .. })) = &result {
            tracing::warn!(job_id = %id, %err, "could not run the job here; releasing its message");
            span.set_error(&format!("released: {err}"));
            return Disposition::Release;
        }
        let end = deliver_outcome(&self.delivery, &trace, envelope, result).await;
        self.record_end(id, end).await
    }

    async fn record_end(&self, id: Uuid, end: JobEnd) -> Disposition {
        match super::record_end(self.store.as_ref(), id, end).await {
            Ok(()) => Disposition::Delete,
            // Delivered but not recorded: the message comes back and the job
            // runs again (at least once) rather than stay `running` forever.
            Err(err) => {
                tracing::warn!(%err, job_id = %id, "could not record the job's end; it will run again");
                Disposition::Release
            }
        }
    }
}
