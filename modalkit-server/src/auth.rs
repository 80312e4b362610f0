//! API-key authentication for the predict and jobs routes: the key from
//! `auth_config` in the configured header, compared in constant time, never
//! logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The expected key and the header that carries it.
#[derive(Clone)]
pub(crate) struct ApiKey {
    header: axum::http::HeaderName,
    key: Arc<[u8]>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("header", &self.header)
            .field("key", &"***")
            .finish()
    }
}

/// `auth_config.auth_header` is not a valid HTTP header name.
#[derive(Debug, thiserror::Error)]
#[error("invalid auth header name '{header}'")]
pub(crate) struct InvalidAuthHeader {
    header: String,
    #[source]
    source: axum::http::header::InvalidHeaderName,
}

impl ApiKey {
    /// A key checked in `header`; fails if the header name is invalid.
    pub(crate) fn new(header: &str, key: &str) -> Result<Self, InvalidAuthHeader> {
        let header = axum::http::HeaderName::from_bytes(header.as_bytes()).map_err(|source| {
            InvalidAuthHeader {
                header: header.to_owned(),
                source,
            }
        })?;
        Ok(ApiKey {
            header,
            key: Arc::from(key.as_bytes()),
        })
    }

    fn accepts(&self, presented: Option<&[u8]>) -> bool {
        match presented {
            Some(value) => bool::from(value.ct_eq(&self.key)),
            None => false,
        }
    }
}

/// Middleware: lets the request through only with the right key.
pub(crate) async fn require_api_key(
    State(key): State<ApiKey>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request.headers().get(&key.header).map(|v| v.as_bytes());
    if key.accepts(presented) {
        next.run(request).await
    } else {
        ApiError::Unauthorized(key.header.to_string()).into_response()
    }
}
