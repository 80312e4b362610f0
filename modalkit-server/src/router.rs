//! The axum router: routes, auth on the predict and jobs routes, and the
//! tower layers (body limit, request id, tracing, metrics, CORS).

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use modalkit_core::InferencePipeline;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::{ApiKey, require_api_key};
use crate::error::ApiError;
use crate::extract::BodyLimit;
use crate::routes::{docs, health, jobs, predict};
use crate::state::AppState;
use crate::telemetry::RecordRequestsLayer;
use crate::traces::trace_request;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the router for a server's state; `extra` routes (e.g. the
/// OpenAI ones) sit behind the API key with the predict routes.
pub fn build<P: InferencePipeline>(
    state: Arc<AppState<P>>,
    api_key: Option<ApiKey>,
    cors_origins: &[String],
    extra: Option<Router<Arc<AppState<P>>>>,
) -> Router {
    let max_body = state.limits.max_body_bytes;
    let mut protected = extra
        .unwrap_or_default()
        .route("/predict_sync", post(predict::predict_sync::<P>))
        .route("/predict_batch", post(predict::predict_batch::<P>))
        .route("/predict_async", post(predict::predict_async::<P>))
        .route("/jobs/{job_id}", get(jobs::get_job::<P>))
        .route("/jobs/{job_id}/cancel", post(jobs::cancel_job::<P>));
    if let Some(key) = api_key {
        protected = protected.route_layer(from_fn_with_state(key, require_api_key));
    }
    // Outside the key check, so refused requests are traced too.
    protected = protected.route_layer(from_fn_with_state(state.tracer.clone(), trace_request));
    let open = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready::<P>))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(docs::openapi_json::<P>))
        .route("/docs", get(docs::docs_page));

    let mut router = open
        .merge(protected)
        .route_layer(RecordRequestsLayer)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::Extension(BodyLimit(max_body)))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let id = request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %request.method(), path = request.uri().path(), request_id = id)
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid));
    if !cors_origins.is_empty() {
        router = router.layer(cors(cors_origins));
    }
    router
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers(tower_http::cors::Any)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!("{} {}", request.method(), request.uri().path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
