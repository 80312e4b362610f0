//! What every handler shares: the models' batchers, async jobs, readiness
//! and limits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use modalkit_core::batcher::BatcherState;
use modalkit_core::{Batcher, InferencePipeline};

use crate::async_jobs::AsyncJobs;

/// Request limits from `server_config`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest body.
    pub max_body_bytes: usize,
    /// Longest `/predict_batch` array.
    pub max_batch_request_items: usize,
    /// Sync deadline.
    pub request_timeout: Duration,
    /// Async deadline.
    pub async_timeout: Duration,
}

/// Shared state of a running server.
pub struct AppState<P: InferencePipeline> {
    /// One batcher per served model.
    pub models: BTreeMap<String, Arc<Batcher<P>>>,
    /// Model names, for resolution and error messages.
    pub model_names: Vec<String>,
    /// Async jobs: intake, records, delivery.
    pub jobs: Arc<AsyncJobs<P>>,
    /// Limits.
    pub limits: Limits,
    /// Set when shutdown begins.
    pub shutting_down: AtomicBool,
    /// The OpenAPI document, rendered once.
    pub openapi: Bytes,
}

impl<P: InferencePipeline> AppState<P> {
    /// The batcher for a resolved model name.
    pub fn batcher(&self, model: &str) -> Option<&Arc<Batcher<P>>> {
        self.models.get(model)
    }

    /// Whether every model takes work and no shutdown began.
    pub fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::SeqCst)
            && self
                .models
                .values()
                .all(|b| b.state() == BatcherState::Serving)
    }
}
