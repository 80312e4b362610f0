//! The outermost layer of every request: its id and its log span.
//!
//! The id is the client's `x-request-id` when it sent one, else a new UUID
//! v4; it is set on the request (for handlers and the trace span) and on
//! the response. The `request` span (method, path, request id) carries every
//! log line the request causes, and the response is logged at debug with
//! its status and latency.
//!
//! One hand-written layer, applied once around the whole router. It replaces
//! tower-http's `SetRequestId`, `PropagateRequestId` and `TraceLayer`:
//! applied with `Router::layer`, each of those wrapped every route
//! separately, and axum clones a route's whole stack of boxed services on
//! every request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Span;

/// The request id header, read from requests and set on responses.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Gives each request its id and span; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RequestScopeLayer;

impl<S> Layer<S> for RequestScopeLayer {
    type Service = RequestScope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestScope { inner }
    }
}

/// The service of [`RequestScopeLayer`].
#[derive(Debug, Clone)]
pub(crate) struct RequestScope<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for RequestScope<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Scoped<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = match request.headers().get(&REQUEST_ID) {
            Some(given) => given.clone(),
            None => {
                let made = new_request_id();
                request.headers_mut().insert(REQUEST_ID, made.clone());
                made
            }
        };
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            path = request.uri().path(),
            request_id = id.to_str().unwrap_or(""),
        );
        // The clock is read only when the response will be logged.
        let started = tracing::enabled!(tracing::Level::DEBUG).then(Instant::now);
        let inner = span.in_scope(|| self.inner.call(request));
        Scoped {
            inner,
            span,
            id: Some(id),
            started,
        }
    }
}

/// A fresh request id: a UUID v4, hyphenated, lower case.
fn new_request_id() -> HeaderValue {
    let mut text = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("unknown"))
}

pin_project_lite::pin_project! {
    /// A request's response future, polled inside its span; the response
    /// gets the request's id.
    pub struct Scoped<F> {
        #[pin]
        inner: F,
        span: Span,
        id: Option<HeaderValue>,
        started: Option<Instant>,
    }
}

impl<F, R, E> Future for Scoped<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut result = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &mut result {
            if let Some(id) = this.id.take() {
                response.headers_mut().entry(REQUEST_ID).or_insert(id);
            }
            if let Some(started) = this.started {
                tracing::debug!(
                    status = response.status().as_u16(),
                    latency_ms = started.elapsed().as_secs_f64() * 1e3,
                    "finished processing request"
                );
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_are_distinct_uuids() {
        let first = new_request_id();
        let second = new_request_id();
        assert_ne!(first, second);
        let parsed = uuid::Uuid::parse_str(first.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(first.len(), 36);
    }
}
