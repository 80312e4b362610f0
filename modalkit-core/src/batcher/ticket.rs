//! The future a caller awaits for one submitted item.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::error::ItemError;

/// One item's result, on its way. Dropping it before the item's batch starts
/// cancels the item: it never reaches the pipeline.
#[must_use = "dropping a ticket cancels its item"]
pub struct Ticket<O> {
    receiver: oneshot::Receiver<Result<O, ItemError>>,
    model: String,
}

impl<O> Ticket<O> {
    pub(super) fn new(receiver: oneshot::Receiver<Result<O, ItemError>>, model: String) -> Self {
        Ticket { receiver, model }
    }
}

impl<O> Future for Ticket<O> {
    type Output = Result<O, ItemError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver).poll(cx).map(|received| {
            received.unwrap_or_else(|_| {
                Err(ItemError::Unavailable {
                    model: self.model.clone(),
                    reason: "the worker stopped before answering".to_owned(),
                })
            })
        })
    }
}
