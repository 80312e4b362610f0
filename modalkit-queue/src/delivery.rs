//! The delivery step every async result goes through: retries with
//! exponential backoff and jitter, bounded in attempts and time; what still
//! fails goes to the dead-letter queue when one is configured (it outlives
//! the container), else (or if that fails too) to a dead-letter file.
//! Nothing accepted is lost.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use modalkit_core::settings::QueueConfig;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::backend::{Labels, QueueBackend};
use crate::backoff::Backoff;
use crate::error::QueueError;

/// How hard delivery tries before dead-lettering.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all.
    pub max_attempts: u32,
    /// The wait between attempts.
    pub backoff: Backoff,
    /// Longest time one message may spend in delivery.
    pub max_total: Duration,
}

impl RetryPolicy {
    /// The policy `queue_config` asks for.
    pub fn from_config(config: &QueueConfig) -> Self {
        RetryPolicy {
            max_attempts: config.max_attempts.max(1),
            backoff: Backoff::new(
                Duration::from_millis(config.initial_backoff_ms),
                Duration::from_millis(config.max_backoff_ms),
            ),
            max_total: Duration::from_secs(config.max_delivery_seconds),
        }
    }
}

/// An append-only JSON-lines file of undeliverable results.
#[derive(Debug)]
pub struct DeadLetterFile {
    path: PathBuf,
    lock: Mutex<()>,
}

impl DeadLetterFile {
    /// A dead-letter file at `path` (created on first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DeadLetterFile {
            path: path.into(),
            lock: Mutex::new(()),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends one record and syncs it to disk.
    pub fn write(
        &self,
        queue: &str,
        message: &str,
        error: &str,
        attempts: u32,
    ) -> Result<(), QueueError> {
        self.write_record(&dead_letter_record(queue, message, error, attempts, None))
    }

    /// Appends one record built by [`dead_letter_record`] and syncs it.
    pub fn write_record(&self, record: &Value) -> Result<(), QueueError> {
        let mut line = record.to_string();
        line.push('\n');
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let fail = |err: std::io::Error| QueueError::DeadLetter {
            path: self.path.display().to_string(),
            message: err.to_string(),
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(fail)?;
        file.write_all(line.as_bytes()).map_err(fail)?;
        file.sync_data().map_err(fail)
    }
}

/// A dead-letter record: the queue the message was meant for, the message
/// (as JSON when it is JSON), why it could not be delivered, the attempts
/// made, when, and the job it belongs to (if any).
pub fn dead_letter_record(
    queue: &str,
    message: &str,
    error: &str,
    attempts: u32,
    job_id: Option<&str>,
) -> Value {
    let body: Value = serde_json::from_str(message).unwrap_or_else(|_| Value::from(message));
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let mut record = json!({"queue": queue, "message": body, "error": error, "attempts": attempts, "dead_lettered_at": at});
    if let Some(job_id) = job_id {
        record["job_id"] = Value::from(job_id);
    }
    record
}

/// Whether a queue name is a webhook URL (delivered by POST, not by the
/// queue backend).
pub fn is_webhook(queue: &str) -> bool {
    queue.starts_with("http://") || queue.starts_with("https://")
}

/// How one message's delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It reached the queue.
    Delivered,
    /// It is in the dead-letter queue or file.
    DeadLettered,
}

/// Attempts at the dead-letter queue before falling back to the file.
const DEAD_LETTER_QUEUE_ATTEMPTS: u32 = 3;

/// Sends results through a backend with retries, dead-lettering failures.
pub struct Delivery {
    backend: Arc<dyn QueueBackend>,
    policy: RetryPolicy,
    dead_letters: DeadLetterFile,
    dead_letter_queue: Option<String>,
    /// Set when the backend is one this build left out: the Cargo feature
    /// it needs. Queue names are then refused at submit, not dead-lettered.
    backend_missing_feature: Option<&'static str>,
    #[cfg(feature = "webhooks")]
    webhooks: Option<Arc<crate::webhook::WebhookSender>>,
    give_up: CancellationToken,
    sent: metrics::Counter,
    retried: metrics::Counter,
    failed: metrics::Counter,
    dead_lettered: metrics::Counter,
}

impl Delivery {
    /// Delivery through `backend` under `policy`, dead-lettering to `dead_letters`.
    pub fn new(
        backend: Arc<dyn QueueBackend>,
        policy: RetryPolicy,
        dead_letters: DeadLetterFile,
    ) -> Self {
        let name = backend.name().to_owned();
        let outcome = |o: &'static str| metrics::counter!("modalkit_queue_send_total", "backend" => name.clone(), "outcome" => o);
        Delivery {
            sent: outcome("success"),
            retried: outcome("retry"),
            failed: outcome("failure"),
            dead_lettered: metrics::counter!("modalkit_dead_letters_total"),
            backend,
            policy,
            dead_letters,
            dead_letter_queue: None,
            backend_missing_feature: None,
            #[cfg(feature = "webhooks")]
            webhooks: None,
            give_up: CancellationToken::new(),
        }
    }

    /// Dead-letters to this queue (through the same backend) first, and to
    /// the file only when the queue cannot take the record.
    pub fn with_dead_letter_queue(mut self, queue: Option<String>) -> Self {
        self.dead_letter_queue = queue.filter(|q| !q.is_empty());
        self
    }

    /// Marks the backend as one this build left out (see
    /// [`crate::BackendRegistry::missing_feature`]): [`Delivery::check_destination`]
    /// then refuses every queue name, naming `feature`, so no job is
    /// accepted whose result could only be dead-lettered. Webhook URLs are
    /// not sent through the backend and are unaffected.
    pub fn with_backend_not_compiled(mut self, feature: &'static str) -> Self {
        self.backend_missing_feature = Some(feature);
        self
    }

    /// Sends results whose queue is an http(s) URL through `sender`.
    #[cfg(feature = "webhooks")]
    pub fn with_webhooks(mut self, sender: crate::webhook::WebhookSender) -> Self {
        self.webhooks = Some(Arc::new(sender));
        self
    }

    /// Whether a result may be sent to `queue`: the empty name (no
    /// delivery), a queue name when the backend is compiled in, or a
    /// webhook URL this server may call. The error says why not:
    /// [`QueueError::NotCompiled`] names the Cargo feature the binary lacks,
    /// [`QueueError::Refused`] a URL that is malformed or off the
    /// allow-list, [`QueueError::Rejected`] a name the SQS backend would
    /// refuse.
    pub fn check_destination(&self, queue: &str) -> Result<(), QueueError> {
        if queue.is_empty() {
            return Ok(());
        }
        if !is_webhook(queue) {
            if let Some(feature) = self.backend_missing_feature {
                return Err(QueueError::NotCompiled {
                    backend: self.backend.name().to_owned(),
                    feature: feature.to_owned(),
                });
            }
            if self.backend.name() == "sqs"
                && let Some(problem) = crate::sqs_names::sqs_queue_name_problem(queue)
            {
                return Err(QueueError::Rejected {
                    queue: queue.to_owned(),
                    message: problem,
                });
            }
            return Ok(());
        }
        #[cfg(feature = "webhooks")]
        if let Some(sender) = &self.webhooks {
            return sender.check(queue).map_err(|reason| QueueError::Refused {
                queue: queue.to_owned(),
                reason,
            });
        }
        Err(QueueError::NotCompiled {
            backend: "webhook".to_owned(),
            feature: "webhooks".to_owned(),
        })
    }

    /// One attempt.
    async fn send(
        &self,
        queue: &str,
        message: &str,
        labels: &Labels<'_>,
    ) -> Result<(), QueueError> {
        if is_webhook(queue) {
            #[cfg(feature = "webhooks")]
            if let Some(sender) = &self.webhooks {
                return sender
                    .send(queue, message, labels.message_id, labels.traceparent)
                    .await;
            }
            return Err(self.check_destination(queue).err().unwrap_or_else(|| {
                QueueError::Rejected {
                    queue: queue.to_owned(),
                    message: "webhook delivery is not set up".to_owned(),
                }
            }));
        }
        self.backend.send(queue, message, labels).await
    }

    /// The dead-letter queue, if configured.
    pub fn dead_letter_queue(&self) -> Option<&str> {
        self.dead_letter_queue.as_deref()
    }

    /// The dead-letter file.
    pub fn dead_letters(&self) -> &DeadLetterFile {
        &self.dead_letters
    }

    /// Delivers one message: retries while the error is retryable and the
    /// policy allows, then dead-letters. Never fails: the outcome says where
    /// the message ended.
    /// `labels` say what it is (see [`QueueBackend::send`]); every retry
    /// sends the same labels.
    pub async fn deliver(&self, queue: &str, message: &str, labels: &Labels<'_>) -> Outcome {
        let started = Instant::now();
        let mut attempt = 0;
        let last_error = loop {
            attempt += 1;
            let send = self.send(queue, message, labels);
            let sent = if self.give_up.is_cancelled() {
                // After giving up, each delivery still makes its one attempt.
                send.await
            } else {
                tokio::select! {
                    biased;
                    sent = send => sent,
                    () = self.give_up.cancelled() => Err(QueueError::Unavailable {
                        queue: queue.to_owned(),
                        message: "delivery abandoned at shutdown".to_owned(),
                    }),
                }
            };
            let error = match sent {
                Ok(()) => {
                    self.sent.increment(1);
                    return Outcome::Delivered;
                }
                Err(error) => error,
            };
            let delay = self.policy.backoff.delay(attempt);
            let out_of_budget = attempt >= self.policy.max_attempts
                || started.elapsed() + delay > self.policy.max_total
                || !error.is_retryable();
            if out_of_budget || self.give_up.is_cancelled() {
                break error;
            }
            self.retried.increment(1);
            tracing::warn!(backend = self.backend.name(), queue, attempt, %error, ?delay, "delivery failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.give_up.cancelled() => break error,
            }
        };
        self.failed.increment(1);
        let record = dead_letter_record(
            queue,
            message,
            &last_error.to_string(),
            attempt,
            labels.job_id,
        );
        self.dead_letter(&record).await
    }

    /// Keeps a record of something undeliverable: in the dead-letter queue
    /// if one is configured and takes it, else in the file.
    pub async fn dead_letter(&self, record: &Value) -> Outcome {
        self.dead_lettered.increment(1);
        let queue = record["queue"].as_str().unwrap_or_default();
        // The body is never logged: results can hold user data.
        if let Some(dead_letter_queue) = &self.dead_letter_queue {
            match self
                .send_dead_letter(dead_letter_queue, &record.to_string())
                .await
            {
                Ok(()) => {
                    tracing::error!(backend = self.backend.name(), queue, dead_letter_queue = %dead_letter_queue,
                        error = record["error"].as_str().unwrap_or_default(), "result undeliverable; dead-lettered to the queue");
                    return Outcome::DeadLettered;
                }
                Err(err) => {
                    tracing::error!(%err, dead_letter_queue = %dead_letter_queue, "the dead-letter queue refused the record; writing it to the file");
                }
            }
        }
        tracing::error!(backend = self.backend.name(), queue, error = record["error"].as_str().unwrap_or_default(),
            file = %self.dead_letters.path().display(), "result undeliverable; dead-lettered to the file");
        if let Err(err) = self.dead_letters.write_record(record) {
            tracing::error!(%err, queue, "could not write the dead-letter record");
        }
        Outcome::DeadLettered
    }

    async fn send_dead_letter(&self, queue: &str, record: &str) -> Result<(), QueueError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .backend
                .send(queue, record, &Labels::message(&id))
                .await
            {
                Ok(()) => return Ok(()),
                Err(err) if attempt < DEAD_LETTER_QUEUE_ATTEMPTS && err.is_retryable() => {
                    tokio::time::sleep(self.policy.backoff.delay(attempt)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Makes every delivery under way stop retrying (and abandon a send in
    /// flight) and dead-letter at once; used when a shutdown's grace period
    /// is over. Deliveries started afterwards make one attempt each.
    pub fn give_up(&self) {
        self.give_up.cancel();
    }
}
