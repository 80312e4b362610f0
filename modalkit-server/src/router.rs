//! The axum router: routes, auth on the predict and jobs routes, and the
//! layers (request scope, body limit, CORS around the whole router; metrics
//! and traces on each route).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, Method};
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{get, post};
use modalkit_core::InferencePipeline;
use tower::{Service, ServiceBuilder};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::{ApiKey, require_api_key};
use crate::error::ApiError;
use crate::extract::BodyLimit;
use crate::request_scope::RequestScopeLayer;
use crate::routes::{docs, health, jobs, predict};
use crate::state::AppState;
use crate::telemetry::RecordRequestsLayer;
use crate::traces::TraceRequestsLayer;

/// Builds the router for a server's state; `extra` routes (e.g. the
/// OpenAI ones) sit behind the API key with the predict routes.
pub(crate) fn build<P: InferencePipeline>(
    state: Arc<AppState<P>>,
    api_key: Option<ApiKey>,
    cors_origins: &[String],
    extra: Option<Router<Arc<AppState<P>>>>,
) -> Router {
    Router::new().fallback_service(service(state, api_key, cors_origins, extra))
}

/// What [`build`] routes to, as a bare service: the server serves it
/// directly, which spares a router's lookup and a boxed clone per request.
pub(crate) fn service<P: InferencePipeline>(
    state: Arc<AppState<P>>,
    api_key: Option<ApiKey>,
    cors_origins: &[String],
    extra: Option<Router<Arc<AppState<P>>>>,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static {
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
    // Per route, since they need the matched route; stacked into one layer,
    // as each `route_layer` adds a boxed service that axum clones per
    // request. Outside the key check, so refused requests count and are
    // traced too.
    protected = protected.route_layer(
        ServiceBuilder::new()
            .layer(RecordRequestsLayer)
            .layer(TraceRequestsLayer::new(state.tracer.clone()))
            .into_inner(),
    );
    let open = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready::<P>))
        .route("/metrics", get(health::metrics::<P>))
        .route("/openapi.json", get(docs::openapi_json::<P>))
        .route("/docs", get(docs::docs_page))
        .route_layer(RecordRequestsLayer);

    let routes = open
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    // Around the whole router, once: `Router::layer` would wrap every route
    // separately, and axum clones a route's stack of boxed services on
    // every request.
    let cors = (!cors_origins.is_empty()).then(|| cors(cors_origins));
    ServiceBuilder::new()
        .option_layer(cors)
        .layer(RequestScopeLayer)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::Extension(BodyLimit(max_body)))
        .service(routes)
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
