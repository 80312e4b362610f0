//! Request and job traces (OpenTelemetry).
//!
//! With the `otel` feature and `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, spans are exported over
//! OTLP/HTTP; the standard `OTEL_*` variables configure the rest (service
//! name, resource attributes, headers, timeout, sampler, batch processor).
//! Otherwise tracing is off and costs a header lookup per request.
//!
//! The spans:
//!
//! ```text
//! POST /predict_sync (server, parent: the request's `traceparent`)
//!   ├─ queue_wait    submit -> its batch starts
//!   ├─ preprocess    ┐
//!   ├─ predict       ├ its batch's stages (shared by the batch's items)
//!   └─ postprocess   ┘
//! job (consumer, parent: the accepting request, across SQS too)
//!   ├─ queue_wait, preprocess, predict, postprocess
//!   └─ delivery      (its `traceparent` goes on the result message / webhook)
//! POST /predict_stream, /v1/completions, /v1/chat/completions (server)
//!   └─ sequence      a generation, ended with its stream (generate/trace.rs)
//! ```
//!
//! Stage spans are built after the item is answered, from the batcher's
//! [`ItemTiming`], so the worker thread does no tracing work. Export runs on
//! the SDK's own thread with a bounded queue: a slow or failing collector
//! drops spans and never slows or fails a request. Without a recording span
//! an incoming `traceparent` is still passed on, unchanged, to a job's
//! result, so the caller's trace stays linked.

#[cfg_attr(feature = "otel", path = "otlp.rs")]
#[cfg_attr(not(feature = "otel"), path = "off.rs")]
mod exporter;

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use modalkit_core::ItemTiming;
use tower::{Layer, Service};

use crate::request_scope::REQUEST_ID;

/// Where the batcher records one item's timing (see [`TraceSpan::timing_cell`]).
pub(crate) type TimingCell = Arc<OnceLock<ItemTiming>>;

/// The W3C trace-context header and message attribute.
pub(crate) const TRACEPARENT: &str = "traceparent";

/// What a span stands for, as OpenTelemetry's span kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanKind {
    /// An HTTP request this server answers.
    Server,
    /// An async job this server runs (from its own intake or a queue).
    Consumer,
    /// A result this server sends to a queue or webhook.
    Producer,
    /// A step inside one of the above (exported stage spans only).
    Internal,
}

/// Starts spans: exporting when configured, else a no-op that only passes
/// incoming trace contexts on. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Tracer {
    otlp: Option<Arc<exporter::Exporting>>,
}

impl Tracer {
    /// A tracer that records nothing.
    pub(crate) fn disabled() -> Self {
        Tracer::default()
    }

    /// The tracer the environment asks for: exporting over OTLP when the
    /// `otel` feature is built and an OTLP endpoint is set (and
    /// `OTEL_SDK_DISABLED` is not `true`); `service_name` unless
    /// `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names one. A
    /// configuration the exporter refuses is logged and leaves tracing off.
    pub(crate) fn from_env(service_name: &str) -> Self {
        let wanted = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
            && !std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim() == "true")
            && !std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
        if !wanted {
            return Tracer::disabled();
        }
        match exporter::Exporting::from_env(service_name) {
            Ok(exporting) => {
                tracing::info!(endpoint = %exporting.endpoint(), "exporting traces over OTLP/HTTP");
                Tracer {
                    otlp: Some(Arc::new(exporting)),
                }
            }
            Err(err) => {
                tracing::error!(%err, "cannot export traces; tracing is off");
                Tracer::disabled()
            }
        }
    }

    /// Whether spans are exported.
    pub(crate) fn is_enabled(&self) -> bool {
        self.otlp.is_some()
    }

    /// Starts a span now, as the child of `parent` (a W3C `traceparent`;
    /// a root when absent or malformed).
    pub(crate) fn start(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: Option<&str>,
    ) -> TraceSpan {
        if let Some(otlp) = &self.otlp {
            return TraceSpan {
                recording: Some(otlp.start(name.into(), kind, parent)),
                inbound: None,
            };
        }
        TraceSpan {
            recording: None,
            // Passed on only if well formed: it goes into webhook headers
            // and queue attributes, where junk could fail a delivery.
            inbound: parent.filter(|p| is_traceparent(p)).map(Arc::from),
        }
    }

    /// Exports what is buffered and stops exporting (blocks up to the
    /// exporter's timeout; call it off the async threads).
    pub(crate) fn shutdown(&self) {
        if let Some(otlp) = &self.otlp {
            otlp.shutdown();
        }
    }
}

/// A span under way. Clones share it; it ends at [`TraceSpan::end`] (or
/// when its last clone drops).
#[derive(Clone, Default)]
pub(crate) struct TraceSpan {
    recording: Option<exporter::Recording>,
    /// Not recording: the caller's trace context, passed on as it came.
    inbound: Option<Arc<str>>,
}

impl TraceSpan {
    /// Whether this span is exported (sampled); stage timings are worth
    /// collecting only then.
    pub(crate) fn is_recording(&self) -> bool {
        self.recording
            .as_ref()
            .is_some_and(exporter::Recording::is_sampled)
    }

    /// The `traceparent` that makes a receiver's span this span's child
    /// (or, not recording, the caller's context passed on).
    pub(crate) fn traceparent(&self) -> Option<String> {
        match &self.recording {
            Some(recording) => recording.traceparent(),
            None => self.inbound.as_deref().map(str::to_owned),
        }
    }

    /// Sets a string attribute.
    pub(crate) fn set_str(&self, key: &'static str, value: &str) {
        if let Some(recording) = &self.recording {
            recording.set_str(key, value);
        }
    }

    /// Sets an integer attribute.
    pub(crate) fn set_int(&self, key: &'static str, value: i64) {
        if let Some(recording) = &self.recording {
            recording.set_int(key, value);
        }
    }

    /// Marks the span failed, with why.
    pub(crate) fn set_error(&self, message: &str) {
        if let Some(recording) = &self.recording {
            recording.set_error(message);
        }
    }

    /// Starts a child span now.
    pub(crate) fn child(&self, name: &'static str, kind: SpanKind) -> TraceSpan {
        match &self.recording {
            Some(recording) => TraceSpan {
                recording: Some(recording.child(name, kind, None)),
                inbound: None,
            },
            None => self.clone(),
        }
    }

    /// A cell for the batcher to record an item's timing in, when this span
    /// records (stage spans are worth collecting only then).
    pub(crate) fn timing_cell(&self) -> Option<TimingCell> {
        self.is_recording().then(Arc::default)
    }

    /// One cell per item of a multi-item request; none when not recording.
    pub(crate) fn timing_cells(&self, items: usize) -> Vec<TimingCell> {
        if self.is_recording() {
            (0..items).map(|_| Arc::default()).collect()
        } else {
            Vec::new()
        }
    }

    /// The stage spans of each item of a multi-item request, numbered.
    pub(crate) fn record_items(&self, cells: &[TimingCell]) {
        for (index, cell) in cells.iter().enumerate() {
            if let Some(timing) = cell.get() {
                self.record_item(timing, Some(index));
            }
        }
    }

    /// Adds the children an item's [`ItemTiming`] describes: `queue_wait`
    /// and, when its stages ran, `preprocess`, `predict` and `postprocess`.
    /// `item`: its index in a multi-item request.
    pub(crate) fn record_item(&self, timing: &ItemTiming, item: Option<usize>) {
        if let Some(recording) = &self.recording {
            let clock = Clock::now();
            let mut spans = vec![(
                "queue_wait",
                timing.batch_started.checked_sub(timing.queue),
                timing.batch_started,
            )];
            if let Some(stages) = &timing.stages {
                spans.push(("preprocess", Some(stages.preprocess), stages.predict));
                spans.push(("predict", Some(stages.predict), stages.postprocess));
                spans.push(("postprocess", Some(stages.postprocess), stages.finished));
            }
            for (name, start, end) in spans {
                let start = clock.wall(start.unwrap_or(timing.batch_started));
                let child = recording.child(name, SpanKind::Internal, Some(start));
                child.set_int("modalkit.batch_size", timing.batch_size as i64);
                if let Some(index) = item {
                    child.set_int("modalkit.item", index as i64);
                }
                child.end_at(clock.wall(end));
            }
        }
    }

    /// Ends the span now.
    pub(crate) fn end(&self) {
        if let Some(recording) = &self.recording {
            recording.end_at(SystemTime::now());
        }
    }
}

/// Whether `text` is a W3C `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`,
/// lower case, ids not all zero.
fn is_traceparent(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    let hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let nonzero = |part: &str| part.bytes().any(|b| b != b'0');
    matches!(parts.as_slice(), [version, trace, span, flags]
        if *version == "00" && hex(trace, 32) && hex(span, 16) && hex(flags, 2)
            && nonzero(trace) && nonzero(span))
}

/// Maps the batcher's monotonic instants to wall-clock times.
struct Clock {
    instant: Instant,
    wall: SystemTime,
}

impl Clock {
    fn now() -> Self {
        Clock {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn wall(&self, at: Instant) -> SystemTime {
        match self.instant.checked_duration_since(at) {
            Some(ago) => self.wall - ago,
            None => self.wall + at.duration_since(self.instant),
        }
    }
}

/// Route layer on the model routes: one server span per request, the child
/// of its `traceparent`, left in the request's extensions for the handler
/// (which adds the stage spans). With tracing off and no `traceparent`, it
/// only looks the header up. Hand-written, not `axum::middleware::from_fn`
/// (which clones and boxes the route and boxes its future per request).
#[derive(Clone)]
pub(crate) struct TraceRequestsLayer {
    tracer: Tracer,
}

impl TraceRequestsLayer {
    /// Spans started by `tracer`.
    pub(crate) fn new(tracer: Tracer) -> Self {
        TraceRequestsLayer { tracer }
    }
}

impl<S> Layer<S> for TraceRequestsLayer {
    type Service = TraceRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceRequests {
            inner,
            tracer: self.tracer.clone(),
        }
    }
}

/// The service of [`TraceRequestsLayer`].
#[derive(Clone)]
pub(crate) struct TraceRequests<S> {
    inner: S,
    tracer: Tracer,
}

impl<S> Service<Request> for TraceRequests<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Traced<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let span = start_request_span(&self.tracer, &mut request);
        Traced {
            inner: self.inner.call(request),
            span,
        }
    }
}

/// Starts a request's server span and leaves it in its extensions; none
/// with tracing off and no `traceparent` to pass on.
fn start_request_span(tracer: &Tracer, request: &mut Request) -> Option<TraceSpan> {
    let parent = request
        .headers()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok());
    if !tracer.is_enabled() && parent.is_none() {
        return None;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let span = tracer.start(
        format!("{} {route}", request.method()),
        SpanKind::Server,
        parent,
    );
    if span.is_recording() {
        span.set_str("http.request.method", request.method().as_str());
        span.set_str("http.route", route);
        if let Some(id) = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
        {
            span.set_str("modalkit.request_id", id);
        }
    }
    request.extensions_mut().insert(span.clone());
    Some(span)
}

pin_project_lite::pin_project! {
    /// A traced route's response future: ends the span with the status.
    pub struct Traced<F> {
        #[pin]
        inner: F,
        span: Option<TraceSpan>,
    }
}

impl<F, E> Future for Traced<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Some(span), Ok(response)) = (this.span.take(), &result) {
            let status = response.status();
            span.set_int("http.response.status_code", i64::from(status.as_u16()));
            if status.is_server_error() {
                span.set_error(status.canonical_reason().unwrap_or("server error"));
            }
            span.end();
        }
        Poll::Ready(result)
    }
}

/// The span [`TraceRequestsLayer`] left for a request (a span that records
/// nothing when there is none).
pub(crate) fn request_span(request: &Request) -> TraceSpan {
    request
        .extensions()
        .get::<TraceSpan>()
        .cloned()
        .unwrap_or_default()
}

/// The trace context a request's job should continue: its span's (or, not
/// recording, the caller's `traceparent` passed on).
pub(crate) fn request_traceparent(request: &Request) -> Option<String> {
    request
        .extensions()
        .get::<TraceSpan>()
        .and_then(TraceSpan::traceparent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporter_the_callers_context_is_passed_on_unchanged() {
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = Tracer::disabled().start("POST /predict_async", SpanKind::Server, Some(caller));
        assert!(!span.is_recording());
        assert_eq!(span.traceparent().as_deref(), Some(caller));
        let delivery = span.child("delivery", SpanKind::Producer);
        assert_eq!(delivery.traceparent().as_deref(), Some(caller));
        let untraced = Tracer::disabled().start("job", SpanKind::Consumer, None);
        assert_eq!(untraced.traceparent(), None);
    }

    #[test]
    fn a_malformed_traceparent_is_not_passed_on() {
        for junk in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nx: y",
            "",
        ] {
            let span = Tracer::disabled().start("job", SpanKind::Consumer, Some(junk));
            assert_eq!(span.traceparent(), None, "{junk:?}");
        }
    }

    #[test]
    fn the_clock_maps_instants_before_and_after_its_anchor() {
        let clock = Clock::now();
        let earlier = clock.instant - std::time::Duration::from_millis(5);
        let later = clock.instant + std::time::Duration::from_millis(7);
        assert_eq!(
            clock.wall.duration_since(clock.wall(earlier)).ok(),
            Some(std::time::Duration::from_millis(5))
        );
        assert_eq!(
            clock.wall(later).duration_since(clock.wall).ok(),
            Some(std::time::Duration::from_millis(7))
        );
    }
}
