//! Every failure the HTTP layer reports, and the one place that maps each to
//! a status code and the JSON body `{"error": {"code", "message", "details"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use modalkit_core::ItemError;
use serde_json::{Value, json};

use crate::async_jobs::JobError;
use crate::async_jobs::store::StoreError;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// The body is not well-formed JSON (or is empty).
    #[error("{0}")]
    InvalidJson(String),
    /// The JSON does not fit the expected type; `path` names where.
    #[error("{message}")]
    InvalidBody {
        /// Where in the body (`text`, `[2].text`, `message.text`).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A success or failure queue this binary cannot deliver to: its backend
    /// was not compiled in, or it is a URL off the webhook allow-list.
    /// Refused before anything is accepted.
    #[error("{field} '{queue}': {}", reason(.source))]
    UndeliverableQueue {
        /// `success_queue` or `failure_queue`.
        field: &'static str,
        /// The queue name or URL.
        queue: String,
        /// Why it cannot be delivered to.
        #[source]
        source: modalkit_queue::QueueError,
    },
    /// garde validation failed; one entry per field.
    #[error("validation failed: {}", summary(.0))]
    Validation(Vec<(String, String)>),
    /// The content type is not JSON.
    #[error("expected Content-Type: application/json, got {0}")]
    UnsupportedMediaType(String),
    /// The body is larger than `max_body_bytes`.
    #[error("request body exceeds the limit of {0} bytes")]
    BodyTooLarge(usize),
    /// The body did not arrive within `body_read_timeout_seconds` of the
    /// request head; the connection is closed after the reply.
    #[error("the request body did not arrive within {0}s of its head")]
    BodyReadTimeout(f64),
    /// The connection cap (`max_connections`) is reached; answered on the
    /// raw connection, which is then closed.
    #[error("too many open connections (limit {0}); retry shortly")]
    TooManyConnections(usize),
    /// A `/predict_batch` array is longer than allowed.
    #[error("batch of {got} messages exceeds the limit of {limit}")]
    TooManyItems {
        /// Messages sent.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// `model_name` names no configured model.
    #[error("unknown model '{0}'")]
    UnknownModel(String, Vec<String>),
    /// `model_name` is required because several models are served.
    #[error("model_name query parameter is required: this server serves {}", .0.join(", "))]
    ModelRequired(Vec<String>),
    /// A query string that cannot be parsed.
    #[error("invalid query string: {0}")]
    InvalidQuery(String),
    /// The job id is not a UUID.
    #[error("invalid job id '{0}': expected a UUID")]
    InvalidJobId(String),
    /// No such job (or it expired).
    #[error("job '{0}' not found (unknown or expired)")]
    JobNotFound(String),
    /// The job is not in a state that allows the request.
    #[error("job '{job_id}' is {status}; only a queued job can be cancelled")]
    JobConflict {
        /// The job.
        job_id: String,
        /// Its state.
        status: &'static str,
    },
    /// An `Idempotency-Key` header that cannot be used.
    #[error("{0}")]
    InvalidIdempotencyKey(String),
    /// The idempotency key was used for another request.
    #[error("Idempotency-Key '{key}' was already used with a different request (job {job_id})")]
    IdempotencyKeyReused {
        /// The key.
        key: String,
        /// The job it names.
        job_id: String,
    },
    /// No route.
    #[error("no route for {0}")]
    NotFound(String),
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Missing or wrong API key.
    #[error("missing or invalid API key in header '{0}'")]
    Unauthorized(String),
    /// The queue is full: retry later.
    #[error("{0}")]
    Overloaded(String),
    /// Not taking work: shutting down or the device failed.
    #[error("{0}")]
    Unavailable(String),
    /// The request's deadline passed.
    #[error("the request did not complete within its {0:.3}s deadline")]
    DeadlineExceeded(f64),
    /// The pipeline said the input is invalid (`PipelineError::invalid_input`).
    #[error("{0}")]
    InvalidInput(String),
    /// The pipeline failed on this item.
    #[error("{0}")]
    Pipeline(String),
    /// Something the server itself got wrong.
    #[error("internal error: {0}")]
    Internal(String),
}

fn summary(fields: &[(String, String)]) -> String {
    fields
        .iter()
        .map(|(path, message)| {
            if path.is_empty() {
                message.clone()
            } else {
                format!("{path}: {message}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a queue cannot be delivered to, without the "refused the message"
/// of a send that was never made.
fn reason(error: &modalkit_queue::QueueError) -> String {
    match error {
        modalkit_queue::QueueError::Rejected { message, .. } => message.clone(),
        modalkit_queue::QueueError::Refused { reason, .. } => reason.to_string(),
        other => other.to_string(),
    }
}

impl ApiError {
    /// The HTTP status for this error.
    pub(crate) fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            InvalidJson(_)
            | ModelRequired(_)
            | InvalidQuery(_)
            | InvalidJobId(_)
            | InvalidIdempotencyKey(_) => StatusCode::BAD_REQUEST,
            InvalidBody { .. }
            | UndeliverableQueue { .. }
            | Validation(_)
            | InvalidInput(_)
            | IdempotencyKeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            JobConflict { .. } => StatusCode::CONFLICT,
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyTooLarge(_) | TooManyItems { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyReadTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            TooManyConnections(_) => StatusCode::SERVICE_UNAVAILABLE,
            UnknownModel(..) | JobNotFound(_) | NotFound(_) => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Overloaded(_) | Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            Pipeline(_) | Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub(crate) fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            InvalidJson(_) => "invalid_json",
            InvalidBody { .. } => "invalid_body",
            UndeliverableQueue {
                source: modalkit_queue::QueueError::NotCompiled { .. },
                ..
            } => "queue_not_compiled",
            UndeliverableQueue {
                source: modalkit_queue::QueueError::Rejected { .. },
                ..
            } => "invalid_queue_name",
            UndeliverableQueue { .. } => "queue_not_allowed",
            Validation(_) => "validation_failed",
            UnsupportedMediaType(_) => "unsupported_media_type",
            BodyTooLarge(_) => "body_too_large",
            TooManyItems { .. } => "too_many_items",
            BodyReadTimeout(_) => "body_read_timeout",
            TooManyConnections(_) => "too_many_connections",
            UnknownModel(..) => "unknown_model",
            ModelRequired(_) => "model_required",
            InvalidQuery(_) => "invalid_query",
            InvalidJobId(_) => "invalid_job_id",
            JobNotFound(_) => "job_not_found",
            JobConflict { .. } => "job_conflict",
            InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            IdempotencyKeyReused { .. } => "idempotency_key_reused",
            NotFound(_) => "not_found",
            MethodNotAllowed => "method_not_allowed",
            Unauthorized(_) => "unauthorized",
            Overloaded(_) => "overloaded",
            Unavailable(_) => "unavailable",
            DeadlineExceeded(_) => "deadline_exceeded",
            InvalidInput(_) => "invalid_input",
            Pipeline(_) => "pipeline_error",
            Internal(_) => "internal_error",
        }
    }

    fn details(&self) -> Value {
        match self {
            ApiError::InvalidBody { path, .. } => json!({ "path": path }),
            ApiError::UndeliverableQueue {
                field,
                source: modalkit_queue::QueueError::NotCompiled { feature, .. },
                ..
            } => json!({ "path": field, "feature": feature }),
            ApiError::UndeliverableQueue { field, .. } => json!({ "path": field }),
            ApiError::Validation(fields) => Value::Array(
                fields
                    .iter()
                    .map(|(path, message)| json!({ "path": path, "message": message }))
                    .collect(),
            ),
            ApiError::UnknownModel(_, models) | ApiError::ModelRequired(models) => {
                json!({ "models": models })
            }
            ApiError::TooManyItems { got, limit } => json!({ "got": got, "limit": limit }),
            ApiError::BodyTooLarge(limit) => json!({ "limit_bytes": limit }),
            ApiError::BodyReadTimeout(seconds) => json!({ "timeout_seconds": seconds }),
            ApiError::TooManyConnections(limit) => json!({ "limit": limit }),
            ApiError::JobConflict { job_id, status } => {
                json!({ "job_id": job_id, "status": status })
            }
            ApiError::IdempotencyKeyReused { job_id, .. } => json!({ "job_id": job_id }),
            _ => Value::Null,
        }
    }
}

impl From<ItemError> for ApiError {
    fn from(error: ItemError) -> Self {
        match error {
            ItemError::Overloaded { .. } => ApiError::Overloaded(error.to_string()),
            ItemError::Unavailable { .. } | ItemError::Cancelled => {
                ApiError::Unavailable(error.to_string())
            }
            ItemError::DeadlineExceeded { budget } => {
                ApiError::DeadlineExceeded(budget.as_secs_f64())
            }
            ItemError::Pipeline(message) | ItemError::Item(message) => ApiError::Pipeline(message),
            ItemError::InvalidInput(message) => ApiError::InvalidInput(message),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(error: JobError) -> Self {
        match error {
            JobError::InvalidIdempotencyKey { .. } => {
                ApiError::InvalidIdempotencyKey(error.to_string())
            }
            JobError::IdempotencyKeyReused { key, job_id } => {
                ApiError::IdempotencyKeyReused { key, job_id }
            }
            JobError::UndeliverableQueue {
                field,
                queue,
                source,
            } => ApiError::UndeliverableQueue {
                field,
                queue,
                source,
            },
            JobError::NotFound(job_id) => ApiError::JobNotFound(job_id),
            JobError::Conflict { job_id, status } => ApiError::JobConflict { job_id, status },
            JobError::Refused(error) => error.into(),
            JobError::Store(StoreError::Full(_)) => ApiError::Overloaded(error.to_string()),
            JobError::Store(StoreError::Unavailable(_)) | JobError::InputQueue(_) => {
                ApiError::Unavailable(error.to_string())
            }
            JobError::Encode(_) | JobError::NoBatcher(_) => ApiError::Internal(error.to_string()),
        }
    }
}

impl ApiError {
    fn body(&self) -> Value {
        json!({ "error": { "code": self.code(), "message": self.to_string(), "details": self.details() } })
    }

    /// The whole HTTP/1.1 reply as bytes, for a connection answered before
    /// hyper serves it (past the connection cap); it asks for the close.
    pub(crate) fn raw_reply(&self) -> Vec<u8> {
        let status = self.status();
        let body = self.body().to_string();
        let retry = if status == StatusCode::SERVICE_UNAVAILABLE {
            "retry-after: 1\r\n"
        } else {
            ""
        };
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n{retry}connection: close\r\ncontent-length: {}\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(self.body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, ApiError::BodyReadTimeout(_)) {
            // The rest of the body may still come: no next request can be
            // read on this connection.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status.is_server_error() {
            tracing::warn!(code = self.code(), error = %self, "request failed");
        }
        response
    }
}
