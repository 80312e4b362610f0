//! The SQS input consumer: the scale-out path. It long-polls an input queue,
//! runs each `AsyncInput` message through the model's batcher like
//! `/predict_async`, delivers the result, and only then deletes the message
//! (at least once). Visibility is extended while an item is processed. A
//! malformed message goes to its failure queue (or the dead-letter file) and
//! is deleted, never retried forever. Work the server could not do (device
//! failure, shutdown) is made visible again for another consumer. Several
//! processes consuming one queue share the work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use garde::Validate;
use modalkit_core::batcher::BatcherState;
use modalkit_core::wire::{AsyncInput, Meta};
use modalkit_core::{Batcher, Error, InferencePipeline, SubmitOptions};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delivery::Delivery;
use crate::outcome::deliver_outcome;
use crate::sqs::{ReceivedMessage, SqsQueue};

/// How the consumer polls.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
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
    /// Deadline of each item in the batcher.
    pub item_timeout: Duration,
}

/// A running consumer.
pub struct InputConsumer {
    stop: CancellationToken,
    tracker: TaskTracker,
}

struct Context<P: InferencePipeline> {
    sqs: Arc<SqsQueue>,
    queue_url: String,
    batcher: Arc<Batcher<P>>,
    delivery: Arc<Delivery>,
    config: ConsumerConfig,
    stop: CancellationToken,
}

impl InputConsumer {
    /// Resolves (or creates) the input queue and starts polling it.
    pub async fn start<P: InferencePipeline>(
        sqs: Arc<SqsQueue>,
        batcher: Arc<Batcher<P>>,
        delivery: Arc<Delivery>,
        config: ConsumerConfig,
    ) -> Result<Self, crate::QueueError> {
        let queue_url = sqs.queue_url(&config.queue_name).await?;
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let context = Arc::new(Context {
            sqs,
            queue_url,
            batcher,
            delivery,
            config,
            stop: stop.clone(),
        });
        tracing::info!(queue = %context.config.queue_name, model = context.batcher.model(), "consuming the input queue");
        tracker.spawn(poll(context, tracker.clone()));
        Ok(InputConsumer { stop, tracker })
    }

    /// Stops receiving new messages; messages in progress go on.
    pub fn stop_polling(&self) {
        self.stop.cancel();
    }

    /// Waits until polling stopped and every message in progress ended.
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

async fn poll<P: InferencePipeline>(context: Arc<Context<P>>, tracker: TaskTracker) {
    let permits = Arc::new(Semaphore::new(context.config.max_in_flight.max(1)));
    let mut failures = 0u32;
    loop {
        if context.stop.is_cancelled() || context.batcher.state() != BatcherState::Serving {
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
                failures = (failures + 1).min(6);
                let pause = Duration::from_millis(100 << failures);
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
    if let Err(problem) = parse_input::<P>(&envelope.message) {
        let failure = envelope_failure(envelope, &problem);
        deliver_outcome::<Value>(&context.delivery, failure.0, Err(failure.1)).await;
        delete(&context, &message).await;
        return;
    }

    let heartbeat = tokio::spawn(keep_hidden(
        Arc::clone(&context),
        message.receipt_handle.clone(),
    ));
    let result = run_item(&context, &envelope.message).await;
    heartbeat.abort();
    match result {
        Some(Err(err @ (Error::Unavailable { .. } | Error::Overloaded { .. }))) => {
            tracing::warn!(message_id = %message.message_id, %err, "could not process the message here; releasing it");
            release(&context, &message).await;
        }
        None => release(&context, &message).await,
        Some(result) => {
            deliver_outcome(&context.delivery, envelope, result).await;
            delete(&context, &message).await;
        }
    }
}

/// Submits the item (waiting while the queue is full) and awaits it.
/// `None`: stopped before it could be submitted.
async fn run_item<P: InferencePipeline>(
    context: &Context<P>,
    message: &Value,
) -> Option<Result<P::Output, Error>> {
    let deadline = Instant::now() + context.config.item_timeout;
    loop {
        let input = parse_input::<P>(message).ok()?;
        let options = SubmitOptions {
            deadline: Some(deadline),
            on_start: None,
        };
        match context.batcher.submit_with(input, options) {
            Ok(ticket) => return Some(ticket.await),
            Err(Error::Overloaded { .. })
                if !context.stop.is_cancelled() && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => return Some(Err(err)),
        }
    }
}

fn parse_input<P: InferencePipeline>(message: &Value) -> Result<P::Input, String> {
    let input: P::Input = serde_path_to_error::deserialize(message).map_err(|err| {
        let path = err.path().to_string();
        format!("invalid message at message.{path}: {}", err.into_inner())
    })?;
    input.validate().map_err(|report| {
        format!(
            "invalid message: {}",
            report.to_string().trim_end().replace('\n', "; ")
        )
    })?;
    Ok(input)
}

fn envelope_failure(envelope: AsyncInput<Value>, problem: &str) -> (AsyncInput<Value>, Error) {
    (envelope, Error::Item(problem.to_owned()))
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
        if let Err(err) = context.delivery.dead_letters().write(
            &context.config.queue_name,
            &message.body,
            problem,
            0,
        ) {
            tracing::error!(%err, "could not dead-letter a malformed input message; it stays in the queue");
            return;
        }
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
        deliver_outcome::<Value>(
            &context.delivery,
            envelope,
            Err(Error::Item(problem.to_owned())),
        )
        .await;
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
