//! The `QueueBackend` trait: modalkit's contract (`send_message(queue_name,
//! message)`) with real errors instead of a bool.

use async_trait::async_trait;

use crate::error::QueueError;

/// Somewhere results can be sent by queue name.
///
/// Implement it to deliver to a broker of your own and register it in a
/// [`crate::BackendRegistry`] or inject the instance into the server.
///
/// ```
/// use async_trait::async_trait;
/// use modalkit_queue::{QueueBackend, QueueError};
///
/// struct Stdout;
///
/// #[async_trait]
/// impl QueueBackend for Stdout {
///     fn name(&self) -> &str { "stdout" }
///     async fn send_message(&self, queue: &str, message: &str) -> Result<(), QueueError> {
///         println!("{queue}: {message}");
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait QueueBackend: Send + Sync + 'static {
    /// The backend's name, for metrics and logs.
    fn name(&self) -> &str;

    /// Sends one message (a JSON document) to the named queue.
    async fn send_message(&self, queue: &str, message: &str) -> Result<(), QueueError>;

    /// Sends a message with an id that stays the same across retries of one
    /// result, for backends that deduplicate (SQS FIFO). By default the id
    /// is ignored.
    async fn send_message_with_id(
        &self,
        queue: &str,
        message: &str,
        id: &str,
    ) -> Result<(), QueueError> {
        let _ = id;
        self.send_message(queue, message).await
    }

    /// Sends an async job's result. Backends that can label a message
    /// without changing its body do so (SQS: `job_id` and `traceparent`
    /// message attributes, and the job id as FIFO deduplication id, so a
    /// result delivered again after a crash is recognisable as the same
    /// job's). By default the same as
    /// [`send_message_with_id`](Self::send_message_with_id) with the job id.
    async fn send_job_result(
        &self,
        queue: &str,
        message: &str,
        labels: &JobLabels<'_>,
    ) -> Result<(), QueueError> {
        self.send_message_with_id(queue, message, labels.job_id)
            .await
    }
}

/// What labels an async job's result besides its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLabels<'a> {
    /// The job's id.
    pub job_id: &'a str,
    /// The W3C trace context (`traceparent`) of the span delivering it, so
    /// the consumer's trace continues the job's; `None` when not traced.
    pub traceparent: Option<&'a str>,
}
