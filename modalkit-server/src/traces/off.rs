//! The exporter's stand-in without the `otel` feature: it is never built
//! ([`Exporting::from_env`] says why), so a tracer never records and only
//! passes incoming trace contexts on. Its methods are the no-ops a
//! recording-less tracer would do.

use std::borrow::Cow;
use std::time::SystemTime;

use super::SpanKind;

/// Never built in this build.
#[allow(dead_code)]
pub(super) struct Exporting;

impl Exporting {
    pub(super) fn from_env(_: &str) -> Result<Self, String> {
        Err(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, but this binary was built without the `otel` feature"
                .to_owned(),
        )
    }

    pub(super) fn endpoint(&self) -> &str {
        ""
    }

    pub(super) fn start(&self, _: Cow<'static, str>, _: SpanKind, _: Option<&str>) -> Recording {
        Recording
    }

    pub(super) fn shutdown(&self) {}
}

/// A span of the exporter that is never built.
#[derive(Clone)]
pub(super) struct Recording;

impl Recording {
    pub(super) fn is_sampled(&self) -> bool {
        false
    }

    pub(super) fn traceparent(&self) -> Option<String> {
        None
    }

    pub(super) fn set_str(&self, _: &'static str, _: &str) {}

    pub(super) fn set_int(&self, _: &'static str, _: i64) {}

    pub(super) fn set_error(&self, _: &str) {}

    pub(super) fn child(&self, _: &'static str, _: SpanKind, _: Option<SystemTime>) -> Recording {
        Recording
    }

    pub(super) fn end_at(&self, _: SystemTime) {}
}
