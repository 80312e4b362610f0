//! `SqsQueue`: results to Amazon SQS (or any SQS-API server) with
//! `aws-sdk-sqs`. Queue names resolve to URLs once and are cached; a missing
//! queue is created (as modalkit does), also when it vanishes later; FIFO
//! queues (`.fifo`) get a message group id and a deduplication id that stays
//! the same across retries of one result; oversized messages fail with a
//! clear, non-retryable error. It also offers the receive/delete/visibility
//! calls the input consumer needs.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};

use crate::backend::{Labels, QueueBackend};
use crate::error::QueueError;

/// SQS's message size limit (256 KiB).
pub const SQS_MAX_MESSAGE_BYTES: usize = 262_144;

/// The message group of FIFO results.
pub const FIFO_MESSAGE_GROUP: &str = "modalkit";

/// How to reach SQS; unset fields come from the standard AWS chain
/// (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_SQS`).
#[derive(Debug, Clone, Default)]
pub struct SqsOptions {
    /// Endpoint of an SQS-compatible server (`queue_config.broker_url`).
    pub endpoint_url: Option<String>,
}

/// The message attribute that carries an async job's id, on input messages
/// and on the results delivered for them.
pub const JOB_ID_ATTRIBUTE: &str = "job_id";

/// The message attribute that names the model an input message is for.
pub const MODEL_ATTRIBUTE: &str = "model";

/// The message attribute carrying a W3C trace context (`traceparent`): on
/// an input message, the trace its job continues; on a result, the span
/// that delivered it.
pub const TRACEPARENT_ATTRIBUTE: &str = "traceparent";

/// A message to send, with what SQS needs besides its body.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The body (a JSON document).
    pub body: &'a str,
    /// FIFO queues: the deduplication id (the same across retries of one
    /// message).
    pub dedup_id: &'a str,
    /// FIFO queues: the message group; `None`: [`FIFO_MESSAGE_GROUP`].
    /// Messages of one group are received in order, one batch at a time.
    pub group_id: Option<&'a str>,
    /// String message attributes.
    pub attributes: &'a [(&'a str, &'a str)],
}

/// One received message.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// The body.
    pub body: String,
    /// Its string message attributes (`job_id`, `model`, ...).
    pub attributes: HashMap<String, String>,
    /// Handle for delete / visibility calls.
    pub receipt_handle: String,
    /// SQS's message id.
    pub message_id: String,
}

/// An SQS-backed [`QueueBackend`].
pub struct SqsQueue {
    client: Client,
    urls: Mutex<HashMap<String, String>>,
}

impl SqsQueue {
    /// Loads the AWS configuration chain (with `options` on top) and connects.
    pub async fn connect(options: SqsOptions) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(endpoint) = options.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        Self::from_config(&loader.load().await)
    }

    /// Uses an already loaded AWS configuration.
    pub fn from_config(config: &SdkConfig) -> Self {
        SqsQueue {
            client: Client::new(config),
            urls: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, queue: &str) -> Option<String> {
        self.urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(queue)
            .cloned()
    }

    fn forget(&self, queue: &str) {
        self.urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(queue);
    }

    /// The queue's URL, resolved once; a missing queue is created.
    pub async fn queue_url(&self, queue: &str) -> Result<String, QueueError> {
        if let Some(url) = self.cached(queue) {
            return Ok(url);
        }
        let url = match self.client.get_queue_url().queue_name(queue).send().await {
            Ok(output) => output.queue_url().map(str::to_owned),
            Err(err) if is_missing_queue(err.code()) => None,
            Err(err) => return Err(unavailable(queue, &err)),
        };
        let url = match url {
            Some(url) => url,
            None => self.create(queue).await?,
        };
        self.urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.to_owned(), url.clone());
        Ok(url)
    }

    async fn create(&self, queue: &str) -> Result<String, QueueError> {
        let mut request = self.client.create_queue().queue_name(queue);
        if is_fifo(queue) {
            request = request.attributes(QueueAttributeName::FifoQueue, "true");
        }
        let output = request
            .send()
            .await
            .map_err(|err| unavailable(queue, &err))?;
        tracing::info!(queue, "created missing SQS queue");
        output
            .queue_url()
            .map(str::to_owned)
            .ok_or_else(|| QueueError::Unavailable {
                queue: queue.to_owned(),
                message: "CreateQueue returned no URL".to_owned(),
            })
    }

    /// Sends one message; returns once SQS acknowledged it. A missing
    /// queue is created; oversized messages fail at once.
    pub async fn send_outgoing(
        &self,
        queue: &str,
        outgoing: Outgoing<'_>,
    ) -> Result<(), QueueError> {
        let Outgoing {
            body: message,
            dedup_id,
            group_id,
            attributes,
        } = outgoing;
        if let Some(problem) = crate::sqs_names::sqs_queue_name_problem(queue) {
            return Err(QueueError::Rejected {
                queue: queue.to_owned(),
                message: problem,
            });
        }
        if message.len() > SQS_MAX_MESSAGE_BYTES {
            return Err(QueueError::TooLarge {
                queue: queue.to_owned(),
                size: message.len(),
                limit: SQS_MAX_MESSAGE_BYTES,
            });
        }
        for attempt in 0..2 {
            let url = self.queue_url(queue).await?;
            let mut request = self
                .client
                .send_message()
                .queue_url(&url)
                .message_body(message);
            for (name, value) in attributes {
                let attribute = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(*value)
                    .build()
                    .map_err(|err| QueueError::Unavailable {
                        queue: queue.to_owned(),
                        message: err.to_string(),
                    })?;
                request = request.message_attributes(*name, attribute);
            }
            if is_fifo(queue) {
                request = request
                    .message_group_id(group_id.unwrap_or(FIFO_MESSAGE_GROUP))
                    .message_deduplication_id(dedup_id);
            }
            match request.send().await {
                Ok(_) => return Ok(()),
                // The queue was deleted (or the server restarted): recreate it once.
                Err(err) if attempt == 0 && is_missing_queue(err.code()) => self.forget(queue),
                Err(err) => return Err(unavailable(queue, &err)),
            }
        }
        Err(QueueError::Unavailable {
            queue: queue.to_owned(),
            message: "queue disappeared again after being recreated".to_owned(),
        })
    }

    /// Long-polls for up to `max` messages (1..=10), hiding them for
    /// `visibility_seconds`.
    pub async fn receive(
        &self,
        queue_url: &str,
        max: i32,
        wait_seconds: i32,
        visibility_seconds: i32,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let output = self
            .client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(max.clamp(1, 10))
            .wait_time_seconds(wait_seconds.clamp(0, 20))
            .visibility_timeout(visibility_seconds)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|err| unavailable(queue_url, &err))?;
        Ok(output
            .messages()
            .iter()
            .filter_map(|m| {
                let attributes = m
                    .message_attributes()
                    .map(|all| {
                        all.iter()
                            .filter_map(|(name, value)| {
                                Some((name.clone(), value.string_value()?.to_owned()))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Some(ReceivedMessage {
                    attributes,
                    body: m.body()?.to_owned(),
                    receipt_handle: m.receipt_handle()?.to_owned(),
                    message_id: m.message_id().unwrap_or_default().to_owned(),
                })
            })
            .collect())
    }

    /// Deletes a processed message.
    pub async fn delete(&self, queue_url: &str, receipt_handle: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| unavailable(queue_url, &err))
    }

    /// Hides a message for `seconds` more (0: make it visible again now).
    pub async fn set_visibility(
        &self,
        queue_url: &str,
        receipt_handle: &str,
        seconds: i32,
    ) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| unavailable(queue_url, &err))
    }
}

#[async_trait]
impl QueueBackend for SqsQueue {
    fn name(&self) -> &str {
        "sqs"
    }

    async fn send(
        &self,
        queue: &str,
        message: &str,
        labels: &Labels<'_>,
    ) -> Result<(), QueueError> {
        let mut attributes = Vec::with_capacity(2);
        if let Some(job_id) = labels.job_id {
            attributes.push((JOB_ID_ATTRIBUTE, job_id));
        }
        if let Some(traceparent) = labels.traceparent {
            attributes.push((TRACEPARENT_ATTRIBUTE, traceparent));
        }
        let outgoing = Outgoing {
            body: message,
            dedup_id: labels.message_id,
            group_id: None,
            attributes: &attributes,
        };
        self.send_outgoing(queue, outgoing).await
    }
}

/// Whether a queue name is a FIFO queue's.
pub fn is_fifo(queue: &str) -> bool {
    queue.ends_with(".fifo")
}

fn is_missing_queue(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" | "NonExistentQueue")
    )
}

fn unavailable<E: std::error::Error + 'static>(queue: &str, err: &E) -> QueueError {
    QueueError::Unavailable {
        queue: queue.to_owned(),
        message: DisplayErrorContext(err).to_string(),
    }
}
