//! The `QueueBackend` trait: modalkit's contract (`send_message(queue_name,
//! message)`) with real errors instead of a bool, and the labels a backend
//! may attach to a message without changing its body.

use async_trait::async_trait;

use crate::error::QueueError;

/// Somewhere results can be sent by queue name.
///
/// Implement it to deliver to a broker of your own and register it in a
/// [`crate::BackendRegistry`] or inject the instance into the server.
///
/// ```
/// use async_trait::async_trait;
/// use modalkit_queue::{Labels, QueueBackend, QueueError};
///
/// struct Stdout;
///
/// #[async_trait]
/// impl QueueBackend for Stdout {
///     fn name(&self) -> &str { "stdout" }
///     async fn send(&self, queue: &str, message: &str, _: &Labels<'_>) -> Result<(), QueueError> {
///         println!("{queue}: {message}");
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait QueueBackend: Send + Sync + 'static {
    /// The backend's name, for metrics and logs.
    fn name(&self) -> &str;

    /// Sends one message (a JSON document) to the named queue. Backends
    /// that can label a message without changing its body do so (SQS: the
    /// `job_id` and `traceparent` message attributes, and the message id as
    /// FIFO deduplication id, so a result delivered again after a crash is
    /// recognisable as the same); others ignore `labels`.
    async fn send(&self, queue: &str, message: &str, labels: &Labels<'_>)
    -> Result<(), QueueError>;
}

/// What labels a message besides its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Labels<'a> {
    /// The same on every retry of one message, so a backend that
    /// deduplicates (SQS FIFO, a webhook receiver) sees one message.
    pub message_id: &'a str,
    /// The async job whose result this is.
    pub job_id: Option<&'a str>,
    /// The W3C trace context (`traceparent`) of the span delivering it, so
    /// the consumer's trace continues the job's; `None` when not traced.
    pub traceparent: Option<&'a str>,
}

impl<'a> Labels<'a> {
    /// A message that is no job's result.
    pub fn message(message_id: &'a str) -> Self {
        Labels {
            message_id,
            job_id: None,
            traceparent: None,
        }
    }

    /// An async job's result: its job id is also the message id.
    pub fn job(job_id: &'a str, traceparent: Option<&'a str>) -> Self {
        Labels {
            message_id: job_id,
            job_id: Some(job_id),
            traceparent,
        }
    }
}
