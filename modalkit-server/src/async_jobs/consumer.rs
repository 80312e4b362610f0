//! The SQS door onto async jobs: every container long-polls the input queue
//! and hands each `AsyncInput` message to [`AsyncJobs::run_consumed`], which
//! runs it through the model's batcher, delivers the result and records it;
//! only then is the message deleted (at least once). Visibility is extended
//! while a job runs, so a killed container's messages reappear after the
//! visibility timeout and another container runs them. A message's job id
//! and model come from its `job_id` / `model` attributes (set by
//! `/predict_async` in durable mode); a message from another producer gets
//! a job id derived from its SQS message id, so a redelivery is the same
//! job. A `traceparent` attribute makes the job's span continue that
//! trace. A body that is not an `AsyncInput` goes to its failure queue (or
//! the dead letters) and is deleted, never retried forever.

use std::sync::Arc;
use std::time::Duration;

use modalkit_core::wire::{AsyncInput, Meta};
use modalkit_core::{InferencePipeline, ItemError};
use modalkit_queue::{
    Backoff, JOB_ID_ATTRIBUTE, MODEL_ATTRIBUTE, ReceivedMessage, SqsQueue, TRACEPARENT_ATTRIBUTE,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::consumed::{ConsumedJob, Disposition};
use super::outcome::{JobTrace, deliver_outcome};
use super::{AsyncJobs, parse_message};

/// The wait after a failed receive (SQS away): up to 200 ms after the first,
/// doubling to 6.4 s, so a queue that comes back is polled again within
/// seconds while an outage costs few calls.
const RECEIVE_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(200), Duration::from_millis(6_400));

/// How the consumer polls.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerConfig {
    /// The input queue's name (for logs and dead-letter records).
    pub queue_name: String,
    /// Messages per receive call (1..=10).
    pub max_messages: i32,
    /// Long-poll wait per call.
    pub wait_seconds: i32,
    /// How long a received message stays hidden; extended while processing.
    pub visibility_seconds: i32,
    /// Most messages processed at once.
    pub max_in_flight: usize,
    /// The model of messages that name none.
    pub default_model: String,
}

/// A running consumer.
pub(crate) struct InputConsumer {
    stop: CancellationToken,
    tracker: TaskTracker,
}

struct Context<P: InferencePipeline> {
    sqs: Arc<SqsQueue>,
    queue_url: String,
    jobs: Arc<AsyncJobs<P>>,
    config: ConsumerConfig,
    stop: CancellationToken,
}

impl InputConsumer {
    /// Resolves (or creates) the input queue and starts polling it.
    pub(crate) async fn start<P: InferencePipeline>(
        sqs: Arc<SqsQueue>,
        jobs: Arc<AsyncJobs<P>>,
        config: ConsumerConfig,
    ) -> Result<Self, modalkit_queue::QueueError> {
        let queue_url = sqs.queue_url(&config.queue_name).await?;
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let context = Arc::new(Context {
            sqs,
            queue_url,
            jobs,
            config,
            stop: stop.clone(),
        });
        tracing::info!(queue = %context.config.queue_name, default_model = %context.config.default_model, "consuming the input queue");
        tracker.spawn(poll(context, tracker.clone()));
        Ok(InputConsumer { stop, tracker })
    }

    /// Stops receiving new messages; messages in progress go on.
    pub(crate) fn stop_polling(&self) {
        self.stop.cancel();
    }

    /// Waits until polling stopped and every message in progress ended.
    pub(crate) async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

async fn poll<P: InferencePipeline>(context: Arc<Context<P>>, tracker: TaskTracker) {
    let permits = Arc::new(Semaphore::new(context.config.max_in_flight.max(1)));
    let mut failures = 0u32;
    loop {
        if context.stop.is_cancelled() {
            break;
        }
        let first = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            () = context.stop.cancelled() => break,
        };
        let room = 1 + permits.available_permits();
        let wanted = (context.config.max_messages.max(1) as usize).min(room) as i32;
        let received = tokio::select! {
            r = context.sqs.receive(&context.queue_url, wanted, context.config.wait_seconds, context.config.visibility_seconds) => r,
            () = context.stop.cancelled() => break,
        };
        let messages = match received {
            Ok(messages) => {
                failures = 0;
                messages
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                let pause = RECEIVE_BACKOFF.delay(failures);
                tracing::warn!(%err, ?pause, "receiving from the input queue failed");
                tokio::select! { () = tokio::time::sleep(pause) => continue, () = context.stop.cancelled() => break }
            }
        };
        let mut first = Some(first);
        for message in messages {
            let permit = match first.take() {
                Some(permit) => permit,
                None => match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => {
                        // Cannot happen (we asked for at most `room`); let it reappear.
                        let _ = context
                            .sqs
                            .set_visibility(&context.queue_url, &message.receipt_handle, 0)
                            .await;
                        continue;
                    }
                },
            };
            tracker.spawn(handle(Arc::clone(&context), message, permit));
        }
    }
    tracing::info!(queue = %context.config.queue_name, "stopped polling the input queue");
}

async fn handle<P: InferencePipeline>(
    context: Arc<Context<P>>,
    message: ReceivedMessage,
    _permit: OwnedSemaphorePermit,
) {
    let envelope = match serde_json::from_str::<AsyncInput<Value>>(&message.body) {
        Ok(envelope) => envelope,
        Err(err) => {
            reject_malformed(&context, &message, &format!("malformed message: {err}")).await;
            return;
        }
    };
    let job_id = job_id_of(&message);
    // `/predict_async` recorded the jobs it sent (they carry their id).
    let recorded = message.attributes.contains_key(JOB_ID_ATTRIBUTE);
    let model = message
        .attributes
        .get(MODEL_ATTRIBUTE)
        .cloned()
        .unwrap_or_else(|| context.config.default_model.clone());
    let input =
        parse_message::<P>(&envelope.message).map_err(|err| format!("invalid message: {err}"));
    let heartbeat = tokio::spawn(keep_hidden(
        Arc::clone(&context),
        message.receipt_handle.clone(),
    ));
    let job = ConsumedJob {
        id: job_id,
        model,
        recorded,
        envelope,
        input,
        traceparent: message.attributes.get(TRACEPARENT_ATTRIBUTE).cloned(),
    };
    let disposition = context.jobs.run_consumed(job).await;
    heartbeat.abort();
    match disposition {
        Disposition::Delete => delete(&context, &message).await,
        Disposition::Release => release(&context, &message).await,
        Disposition::Refuse => {}
    }
}

/// The job id a message carries, or one derived from its SQS message id
/// (the same on every delivery of that message).
fn job_id_of(message: &ReceivedMessage) -> Uuid {
    if let Some(id) = message
        .attributes
        .get(JOB_ID_ATTRIBUTE)
        .and_then(|text| Uuid::parse_str(text).ok())
    {
        return id;
    }
    let digest = Sha256::digest(message.message_id.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// A body that is not an `AsyncInput`: its failure goes where the body asks
/// (if it names a failure queue), else to the dead-letter file; then delete.
async fn reject_malformed<P: InferencePipeline>(
    context: &Context<P>,
    message: &ReceivedMessage,
    problem: &str,
) {
    let raw: Value =
        serde_json::from_str(&message.body).unwrap_or_else(|_| Value::from(message.body.clone()));
    let failure_queue = raw
        .get("failure_queue")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    tracing::warn!(message_id = %message.message_id, problem, "malformed input message");
    if failure_queue.is_empty() {
        let record = modalkit_queue::dead_letter_record(
            &context.config.queue_name,
            &message.body,
            problem,
            0,
            None,
        );
        context.jobs.delivery().dead_letter(&record).await;
    } else {
        let envelope = AsyncInput {
            message: raw.get("message").cloned().unwrap_or(raw.clone()),
            success_queue: String::new(),
            failure_queue,
            meta: raw
                .get("meta")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_else(Meta::new),
        };
        let job_id = job_id_of(message);
        let traceparent = message.attributes.get(TRACEPARENT_ATTRIBUTE);
        let span = context.jobs.job_span(
            job_id,
            &context.config.default_model,
            traceparent.map(String::as_str),
        );
        let trace = JobTrace {
            id: &job_id.to_string(),
            span: &span,
        };
        deliver_outcome::<Value>(
            context.jobs.delivery(),
            &trace,
            envelope,
            Err(ItemError::Item(problem.to_owned())),
        )
        .await;
        span.end();
    }
    delete(context, message).await;
}

async fn keep_hidden<P: InferencePipeline>(context: Arc<Context<P>>, receipt_handle: String) {
    let every = Duration::from_secs_f64(f64::from(context.config.visibility_seconds.max(2)) / 2.0);
    loop {
        tokio::time::sleep(every).await;
        if let Err(err) = context
            .sqs
            .set_visibility(
                &context.queue_url,
                &receipt_handle,
                context.config.visibility_seconds,
            )
            .await
        {
            tracing::warn!(%err, "could not extend a message's visibility");
        }
    }
}

async fn delete<P: InferencePipeline>(context: &Context<P>, message: &ReceivedMessage) {
    if let Err(err) = context
        .sqs
        .delete(&context.queue_url, &message.receipt_handle)
        .await
    {
        // The result was delivered; the message will come back and be
        // processed again (at least once).
        tracing::warn!(%err, message_id = %message.message_id, "could not delete a processed message");
    }
}

async fn release<P: InferencePipeline>(context: &Context<P>, message: &ReceivedMessage) {
    if let Err(err) = context
        .sqs
        .set_visibility(&context.queue_url, &message.receipt_handle, 0)
        .await
    {
        tracing::warn!(%err, message_id = %message.message_id, "could not release a message; it reappears after its visibility timeout");
    }
}
