//! The per-connection service in front of the router: marks each request's
//! start and the end of its response on the connection's [`Activity`], and
//! gives the request body a deadline (`body_read_timeout_seconds` from the
//! head), after which reading it fails with [`BodyReadTimeout`] (a 408).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tower::{Service, ServiceExt};

use super::activity::{Activity, RequestGuard};

/// The request body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {}s of its head", .0.as_secs_f64())]
pub(crate) struct BodyReadTimeout(pub(crate) Duration);

/// Wraps the router for one connection.
#[derive(Debug, Clone)]
pub(crate) struct RequestWatch<S> {
    pub(crate) inner: S,
    pub(crate) activity: Arc<Activity>,
    pub(crate) body_read_timeout: Duration,
}

impl<S, B> Service<axum::http::Request<B>> for RequestWatch<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The router is always ready; it is cloned and driven to readiness
        // per request below.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let guard = self.activity.request_started();
        let timeout = self.body_read_timeout;
        let request = request.map(|body| {
            Body::new(DeadlineBody {
                inner: body,
                timeout,
                deadline: Instant::now() + timeout,
                sleep: None,
            })
        });
        let inner = self.inner.clone();
        Box::pin(async move {
            let response = inner.oneshot(request).await?;
            Ok(response.map(|body| {
                Body::new(GuardedBody {
                    inner: body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// A request body that fails once its deadline passes before its end.
struct DeadlineBody<B> {
    inner: B,
    timeout: Duration,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                metrics::counter!("modalkit_http_connections_timed_out_total", "timeout" => "body")
                    .increment(1);
                Poll::Ready(Some(Err(BodyReadTimeout(self.timeout).into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that marks its request done when dropped (hyper drops
/// it once written, or with the connection).
struct GuardedBody {
    inner: Body,
    _guard: RequestGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether reading a body failed because of [`BodyReadTimeout`], anywhere
/// in the error's chain of sources.
pub(crate) fn body_timeout_in(error: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(BodyReadTimeout(after)) = error.downcast_ref::<BodyReadTimeout>() {
            return Some(*after);
        }
        current = error.source();
    }
    None
}
