//! Result delivery for modalkit-rs.
//!
//! Async results go to a [`QueueBackend`] by queue name, as in modalkit. The
//! [`Delivery`] step wraps every send in retries with backoff and, when a
//! result still cannot be delivered, writes it to a dead-letter file, so an
//! accepted job is never lost. Backends are chosen by name from a
//! [`BackendRegistry`] (`memory` built in, `sqs` with the `sqs` feature) or
//! injected as instances.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod backoff;
mod delivery;
mod error;
mod lazy;
mod memory;
mod registry;
#[cfg(feature = "sqs")]
mod sqs;
mod sqs_names;
#[cfg(feature = "webhooks")]
mod webhook;

pub use backend::{Labels, QueueBackend};
pub use backoff::Backoff;
pub use delivery::{
    DeadLetterFile, Delivery, Outcome, RetryPolicy, dead_letter_record, is_webhook,
};
pub use error::{QueueError, WebhookRefusal};
pub use lazy::LazyBackend;
pub use memory::InMemoryQueue;
pub use registry::BackendRegistry;
#[cfg(feature = "sqs")]
pub use sqs::{
    FIFO_MESSAGE_GROUP, JOB_ID_ATTRIBUTE, MODEL_ATTRIBUTE, Outgoing, ReceivedMessage, SqsOptions,
    SqsQueue, TRACEPARENT_ATTRIBUTE, is_fifo,
};
#[cfg(feature = "webhooks")]
pub use webhook::{WebhookConfig, WebhookSender};
