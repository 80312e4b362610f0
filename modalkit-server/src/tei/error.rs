//! Errors on TEI's routes, in TEI's shape `{"error", "error_type"}` and
//! with its statuses: 400 `Empty`, 413 too many inputs, 422 `Validation`
//! (and tokenizer errors), 424 `Backend` (a failed or missing model), 429
//! `Overloaded`, 503 `Unhealthy`. Everything else keeps the status the
//! server's own routes give it (401, 404, 408, 415, ...).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::ApiError;

/// An error answered on a TEI route.
#[derive(Debug)]
pub(crate) struct TeiError {
    status: StatusCode,
    message: String,
    error_type: &'static str,
}

impl TeiError {
    /// A request TEI would refuse as invalid (422).
    pub(crate) fn validation(message: impl Into<String>) -> Self {
        TeiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
            error_type: "Validation",
        }
    }

    /// An empty input list or text (400).
    pub(crate) fn empty(message: impl Into<String>) -> Self {
        TeiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            error_type: "Empty",
        }
    }

    /// More inputs than one request may carry (413).
    pub(crate) fn too_many(got: usize, limit: usize) -> Self {
        TeiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("batch size {got} > maximum allowed batch size {limit}"),
            error_type: "Validation",
        }
    }

    /// No served model can answer this route, or the model failed (424).
    pub(crate) fn backend(message: impl Into<String>) -> Self {
        TeiError {
            status: StatusCode::FAILED_DEPENDENCY,
            message: message.into(),
            error_type: "Backend",
        }
    }
}

impl From<ApiError> for TeiError {
    fn from(error: ApiError) -> Self {
        let (status, error_type) = match &error {
            ApiError::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, "Overloaded"),
            ApiError::Unavailable(_) | ApiError::TooManyConnections(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "Unhealthy")
            }
            ApiError::Pipeline(_) | ApiError::Internal(_) => {
                (StatusCode::FAILED_DEPENDENCY, "Backend")
            }
            ApiError::InvalidInput(_) | ApiError::Validation(_) | ApiError::InvalidBody { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "Validation")
            }
            other => (other.status(), "Validation"),
        };
        TeiError {
            status,
            message: error.to_string(),
            error_type,
        }
    }
}

impl From<modalkit_core::ItemError> for TeiError {
    fn from(error: modalkit_core::ItemError) -> Self {
        match error {
            // An item that failed alone in postprocess is the model's failure.
            modalkit_core::ItemError::Item(message) => TeiError::backend(message),
            other => ApiError::from(other).into(),
        }
    }
}

impl IntoResponse for TeiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "error_type": self.error_type});
        (self.status, Json(body)).into_response()
    }
}
