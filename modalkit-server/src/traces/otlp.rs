//! The OTLP/HTTP side of [`super::Tracer`] (feature `otel`): the SDK's
//! tracer provider with its batch span processor (its own thread, a bounded
//! queue, spans dropped when full), and the HTTP client it exports with.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{SpanExporter, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use super::{SpanKind, TRACEPARENT};

/// A tracer provider exporting to the configured OTLP endpoint.
pub(super) struct Exporting {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    endpoint: String,
}

impl Exporting {
    /// Builds the exporter from the `OTEL_*` variables.
    pub(super) fn from_env(service_name: &str) -> Result<Self, String> {
        let client = BlockingClient {
            timeout: timeout_from_env(),
            client: OnceLock::new(),
        };
        let exporter = SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .build()
            .map_err(|err| err.to_string())?;
        let mut resource = Resource::builder();
        if !environment_names_service() {
            resource = resource.with_service_name(service_name.to_owned());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("modalkit");
        Ok(Exporting {
            provider,
            tracer,
            endpoint: endpoint_from_env(),
        })
    }

    /// Where spans go, for the start-up log.
    pub(super) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Starts a span under `parent` (a `traceparent`) or as a root.
    pub(super) fn start(
        &self,
        name: Cow<'static, str>,
        kind: SpanKind,
        parent: Option<&str>,
    ) -> Recording {
        let parent = match parent {
            Some(traceparent) => {
                let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
                TraceContextPropagator::new().extract(&carrier)
            }
            None => Context::new(),
        };
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(otel_kind(kind))
            .start_with_context(&self.tracer, &parent);
        Recording {
            tracer: self.tracer.clone(),
            context: parent.with_span(span),
        }
    }

    /// Exports what is buffered and stops.
    pub(super) fn shutdown(&self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(%err, "trace export did not shut down cleanly");
        }
    }
}

/// One span of an exporting tracer, in its context.
#[derive(Clone)]
pub(super) struct Recording {
    tracer: SdkTracer,
    context: Context,
}

impl Recording {
    pub(super) fn is_sampled(&self) -> bool {
        self.context.span().span_context().is_sampled()
    }

    pub(super) fn traceparent(&self) -> Option<String> {
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&self.context, &mut carrier);
        carrier.remove(TRACEPARENT)
    }

    pub(super) fn set_str(&self, key: &'static str, value: &str) {
        self.set(key, Value::from(value.to_owned()));
    }

    pub(super) fn set_int(&self, key: &'static str, value: i64) {
        self.set(key, Value::from(value));
    }

    fn set(&self, key: &'static str, value: Value) {
        self.context.span().set_attribute(KeyValue::new(key, value));
    }

    pub(super) fn set_error(&self, message: &str) {
        self.context
            .span()
            .set_status(Status::error(message.to_owned()));
    }

    /// A child span, started now or at `start`.
    pub(super) fn child(
        &self,
        name: &'static str,
        kind: SpanKind,
        start: Option<SystemTime>,
    ) -> Recording {
        let mut builder = self.tracer.span_builder(name).with_kind(otel_kind(kind));
        if let Some(start) = start {
            builder = builder.with_start_time(start);
        }
        let span = builder.start_with_context(&self.tracer, &self.context);
        Recording {
            tracer: self.tracer.clone(),
            context: self.context.with_span(span),
        }
    }

    pub(super) fn end_at(&self, at: SystemTime) {
        self.context.span().end_with_timestamp(at);
    }
}

fn otel_kind(kind: SpanKind) -> opentelemetry::trace::SpanKind {
    use opentelemetry::trace::SpanKind as Otel;
    match kind {
        SpanKind::Server => Otel::Server,
        SpanKind::Consumer => Otel::Consumer,
        SpanKind::Producer => Otel::Producer,
        SpanKind::Internal => Otel::Internal,
    }
}

/// Whether `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names the
/// service (the SDK reads both; the app name is only the fallback).
fn environment_names_service() -> bool {
    std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|attributes| {
            attributes
                .split(',')
                .any(|pair| pair.trim_start().starts_with("service.name="))
        })
}

/// The export timeout: `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or
/// `OTEL_EXPORTER_OTLP_TIMEOUT` in milliseconds, else 10 s.
fn timeout_from_env() -> Duration {
    [
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok()?.trim().parse::<u64>().ok())
    .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// The traces URL the exporter resolves (for the log only).
fn endpoint_from_env() -> String {
    if let Ok(url) = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        && !url.trim().is_empty()
    {
        return url;
    }
    let base = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default();
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

/// The exporter's HTTP client: blocking reqwest, since the batch span
/// processor exports from its own thread outside tokio. Built on first use,
/// on that thread (a blocking client must not be built or dropped on an
/// async thread).
#[derive(Debug)]
struct BlockingClient {
    timeout: Duration,
    client: OnceLock<Result<reqwest::blocking::Client, String>>,
}

#[async_trait::async_trait]
impl HttpClient for BlockingClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self
            .client
            .get_or_init(|| {
                reqwest::blocking::Client::builder()
                    .timeout(self.timeout)
                    .build()
                    .map_err(|err| err.to_string())
            })
            .as_ref()
            .map_err(|err| HttpError::from(err.clone()))?;
        let (parts, body) = request.into_parts();
        let response = client
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body.to_vec())
            .send()?;
        let mut reply = Response::builder().status(response.status());
        if let Some(headers) = reply.headers_mut() {
            *headers = response.headers().clone();
        }
        Ok(reply.body(response.bytes()?)?)
    }
}
