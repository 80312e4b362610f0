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
use crate::traces::Tracer;

/// Request limits from `server_config`.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Largest body.
    pub(crate) max_body_bytes: usize,
    /// Longest `/predict_batch` array.
    pub(crate) max_batch_request_items: usize,
    /// Sync deadline.
    pub(crate) request_timeout: Duration,
    /// Async deadline.
    pub(crate) async_timeout: Duration,
}

/// Where a server is in its life, as `/ready` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Models loaded; warm-up batches running.
    Warming,
    /// Taking work.
    Ready,
    /// Shutting down.
    Draining,
    /// A model's device failed.
    Failed,
}

impl Phase {
    /// The phase's name in `/ready`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Warming => "warming",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
            Phase::Failed => "failed",
        }
    }
}

/// How long start-up took, for `/ready`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StartupTimes {
    /// Loading every model, in seconds.
    pub(crate) load_seconds: f64,
    /// Running the warm-up batches, in seconds, once done (until then the
    /// server is warming up).
    pub(crate) warmup_seconds: Option<f64>,
}

/// Shared state of a running server: what handlers, including routes added
/// with [`Server::with_routes`](crate::Server::with_routes), get as
/// `State<Arc<AppState<P>>>`. Its contents are the server's own.
pub struct AppState<P: InferencePipeline> {
    /// One batcher per served model.
    pub(crate) models: BTreeMap<String, Arc<Batcher<P>>>,
    /// Model names, for resolution and error messages.
    pub(crate) model_names: Vec<String>,
    /// Async jobs: intake, records, delivery.
    pub(crate) jobs: Arc<AsyncJobs<P>>,
    /// Limits.
    pub(crate) limits: Limits,
    /// Request and job traces (off unless configured).
    pub(crate) tracer: Tracer,
    /// Set when shutdown begins.
    pub(crate) shutting_down: AtomicBool,
    /// Load and warm-up times; warmed up once `warmup_seconds` is set.
    pub(crate) startup: std::sync::Mutex<StartupTimes>,
    /// The OpenAPI document, rendered once.
    pub(crate) openapi: Bytes,
}

impl<P: InferencePipeline> AppState<P> {
    /// The batcher for a resolved model name.
    pub(crate) fn batcher(&self, model: &str) -> Option<&Arc<Batcher<P>>> {
        self.models.get(model)
    }

    /// Whether every model is warmed up and takes work, and no shutdown
    /// began.
    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Ready
    }

    /// The server's phase.
    pub(crate) fn phase(&self) -> Phase {
        if self
            .models
            .values()
            .any(|b| matches!(b.state(), BatcherState::Failed(_)))
        {
            Phase::Failed
        } else if self.shutting_down.load(Ordering::SeqCst)
            || self
                .models
                .values()
                .any(|b| b.state() == BatcherState::Draining)
        {
            Phase::Draining
        } else if self.startup_times().warmup_seconds.is_none() {
            Phase::Warming
        } else {
            Phase::Ready
        }
    }

    /// Load and warm-up times so far.
    pub(crate) fn startup_times(&self) -> StartupTimes {
        *self.startup.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the end of warm-up: from now on the server is ready.
    pub(crate) fn warmed_up(&self, seconds: f64) {
        self.startup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .warmup_seconds = Some(seconds);
    }
}
