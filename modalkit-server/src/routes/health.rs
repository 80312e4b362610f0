//! `/health` (liveness), `/ready` (readiness) and `/metrics`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use modalkit_core::InferencePipeline;
use modalkit_core::batcher::BatcherState;
use serde_json::{Map, Value, json};

use crate::state::AppState;

/// Liveness: the process answers.
pub(crate) async fn health() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Readiness: 200 once every model is loaded, warmed up and takes work, 503
/// otherwise, with the phase (`warming`, `ready`, `draining`, `failed`),
/// the load and warm-up times, each model's state and queue depth and the
/// device.
pub(crate) async fn ready<P: InferencePipeline>(
    State(state): State<Arc<AppState<P>>>,
) -> impl IntoResponse {
    let ready = state.is_ready();
    let models: Map<String, Value> = state
        .models
        .iter()
        .map(|(name, batcher)| {
            let (model_state, reason) = match batcher.state() {
                BatcherState::Serving => ("serving", None),
                BatcherState::Draining => ("draining", None),
                BatcherState::Failed(reason) => ("failed", Some(reason)),
            };
            let device = batcher.device();
            (name.clone(), json!({"state": model_state, "reason": reason, "queue_depth": batcher.queue_depth(), "device": device}))
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let times = state.startup_times();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "phase": state.phase().as_str(),
        "load_seconds": times.load_seconds,
        "warmup_seconds": times.warmup_seconds,
        "shutting_down": state.shutting_down.load(std::sync::atomic::Ordering::SeqCst),
        "device": state.models.values().next().map(|b| b.device()).unwrap_or("cpu"),
        "models": models,
    });
    (status, Json(body))
}

/// Prometheus text; the queue depths are read at this moment.
pub(crate) async fn metrics<P: InferencePipeline>(
    State(state): State<Arc<AppState<P>>>,
) -> impl IntoResponse {
    for name in &state.model_names {
        if let Some(batcher) = state.batcher(name) {
            batcher.publish_queue_depth();
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::prometheus().render(),
    )
}
