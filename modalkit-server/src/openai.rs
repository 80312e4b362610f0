//! OpenAI-compatible embeddings for any pipeline whose output is a vector:
//! `POST /v1/embeddings` (and `/embeddings`) and `GET /v1/models`, so the
//! `openai` client (and LangChain, LlamaIndex, ...) can use the server.
//! Each input of a request goes through the model's batcher as its own item,
//! mixing with other traffic. `encoding_format` `float` or `base64`
//! (little-endian f32, what the Python client asks for by default),
//! `dimensions` truncates and re-normalises, `user` is ignored. Errors come
//! in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
//!
//! Serve it with [`run`]:
//!
//! ```no_run
//! # use modalkit_server::openai::EmbeddingModel;
//! # fn demo<MyEmbedder: EmbeddingModel>() -> std::process::ExitCode {
//! modalkit_server::openai::run::<MyEmbedder>()
//! # }
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use modalkit_core::{InferencePipeline, SubmitOptions};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::{JsonBody, validate};
use crate::server::ServerOptions;
use crate::state::AppState;
use crate::traces::request_span;

/// A pipeline that turns one text into one vector.
pub trait EmbeddingModel: InferencePipeline {
    /// The input for one text.
    fn input_from_text(text: String) -> Self::Input;

    /// The vector of one output.
    fn embedding(output: &Self::Output) -> &[f32];

    /// The tokens the model read for this output (for `usage`); default 0.
    fn token_count(output: &Self::Output) -> usize {
        let _ = output;
        0
    }
}

/// Serves pipeline `P` with modalkit's routes and the OpenAI ones (the
/// command line of [`crate::cli::run`]).
pub fn run<P: EmbeddingModel>() -> ExitCode {
    crate::cli::run_with_routes::<P>(ServerOptions::default(), routes::<P>)
}

/// The OpenAI routes, to merge into a server's router
/// ([`crate::Server::with_routes`]); they sit behind the API key like the
/// predict routes.
pub fn routes<P: EmbeddingModel>() -> Router<Arc<AppState<P>>> {
    Router::new()
        .route("/v1/embeddings", post(embeddings::<P>))
        .route("/embeddings", post(embeddings::<P>))
        .route("/v1/models", get(models::<P>))
}

/// An error in OpenAI's shape.
pub(crate) struct OpenAiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) kind: &'static str,
    pub(crate) param: Option<&'static str>,
    pub(crate) code: String,
}

impl OpenAiError {
    pub(crate) fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param),
            code: "invalid_value".to_owned(),
        }
    }
}

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        let status = error.status();
        OpenAiError {
            status,
            message: error.to_string(),
            kind: if status.is_server_error() {
                "server_error"
            } else {
                "invalid_request_error"
            },
            param: None,
            code: error.code().to_owned(),
        }
    }
}

impl From<modalkit_core::ItemError> for OpenAiError {
    fn from(error: modalkit_core::ItemError) -> Self {
        ApiError::from(error).into()
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        (self.status, Json(body)).into_response()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Texts {
    One(String),
    Many(Vec<String>),
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    input: Texts,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

/// The most inputs one request may hold (OpenAI's own limit).
const MAX_INPUTS: usize = 2048;

async fn embeddings<P: EmbeddingModel>(
    State(state): State<Arc<AppState<P>>>,
    request: Request,
) -> Result<Json<Value>, OpenAiError> {
    let trace = request_span(&request);
    let body = JsonBody::from_request(request, &()).await?;
    let request: EmbeddingsRequest = serde_json::from_slice(&body.0)
        .map_err(|err| OpenAiError::invalid("input", format!("invalid request body: {err}")))?;
    let texts = match request.input {
        Texts::One(text) => vec![text],
        Texts::Many(texts) => texts,
        Texts::Other(_) => {
            return Err(OpenAiError::invalid(
                "input",
                "input must be a string or an array of strings (token arrays are not supported)",
            ));
        }
    };
    if texts.is_empty() || texts.len() > MAX_INPUTS {
        return Err(OpenAiError::invalid(
            "input",
            format!(
                "input must hold 1 to {MAX_INPUTS} strings, got {}",
                texts.len()
            ),
        ));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(OpenAiError::invalid(
                "encoding_format",
                format!("encoding_format must be 'float' or 'base64', got '{other}'"),
            ));
        }
    };
    let model = pick_model(&state, request.model.as_deref())?;
    let batcher = state
        .batcher(&model)
        .ok_or_else(|| ApiError::UnknownModel(model.clone(), state.model_names.clone()))?;
    let deadline = Instant::now() + state.limits.request_timeout;
    let timings = trace.timing_cells(texts.len());
    let mut items = Vec::with_capacity(texts.len());
    for (i, text) in texts.into_iter().enumerate() {
        let input = P::input_from_text(text);
        validate(&input, &format!("input[{i}]"))?;
        let options = SubmitOptions {
            deadline: Some(deadline),
            on_start: None,
            timing: timings.get(i).cloned(),
        };
        items.push((input, options));
    }
    // All at once: a request's inputs share a batch where they fit.
    let tickets = batcher.submit_all(items)?;
    let timeout = state.limits.request_timeout.as_secs_f64();
    let mut data = Vec::with_capacity(tickets.len());
    let mut tokens = 0;
    for (index, ticket) in tickets.into_iter().enumerate() {
        let output = tokio::time::timeout_at(deadline.into(), ticket)
            .await
            .map_err(|_| ApiError::DeadlineExceeded(timeout))??;
        tokens += P::token_count(&output);
        let vector = shorten(P::embedding(&output), request.dimensions)?;
        let embedding = if base64 {
            Value::from(encode_base64(&vector))
        } else {
            Value::from(vector)
        };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    trace.record_items(&timings);
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

/// The served model a request names; with one model, any name (clients
/// must send one) means it.
pub(crate) fn pick_model<P: InferencePipeline>(
    state: &AppState<P>,
    requested: Option<&str>,
) -> Result<String, OpenAiError> {
    match requested {
        Some(name) if state.models.contains_key(name) => Ok(name.to_owned()),
        _ if state.model_names.len() == 1 => Ok(state.model_names[0].clone()),
        Some(name) => Err(OpenAiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "the model '{name}' does not exist; served: {}",
                state.model_names.join(", ")
            ),
            kind: "invalid_request_error",
            param: Some("model"),
            code: "model_not_found".to_owned(),
        }),
        None => Err(OpenAiError::invalid(
            "model",
            "model is required: this server serves several",
        )),
    }
}

/// The first `dimensions` values, re-normalised to unit length.
fn shorten(vector: &[f32], dimensions: Option<usize>) -> Result<Vec<f32>, OpenAiError> {
    let Some(dimensions) = dimensions else {
        return Ok(vector.to_vec());
    };
    if dimensions == 0 || dimensions > vector.len() {
        return Err(OpenAiError::invalid(
            "dimensions",
            format!("dimensions must be 1 to {}, got {dimensions}", vector.len()),
        ));
    }
    let mut short = vector[..dimensions].to_vec();
    let norm = short.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        short.iter_mut().for_each(|x| *x /= norm);
    }
    Ok(short)
}

/// Little-endian f32 bytes in standard base64 (with padding).
fn encode_base64(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    STANDARD.encode(bytes)
}

pub(crate) async fn models<P: InferencePipeline>(
    State(state): State<Arc<AppState<P>>>,
) -> Json<Value> {
    let data: Vec<Value> = state
        .model_names
        .iter()
        .map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "modalkit"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        assert_eq!(encode_base64(&[1.0]), "AACAPw==");
        assert_eq!(encode_base64(&[1.0, -2.5]), "AACAPwAAIMA=");
        assert_eq!(encode_base64(&[]), "");
    }

    #[test]
    fn dimensions_truncate_and_renormalise() {
        let short = shorten(&[3.0, 4.0, 12.0], Some(2)).ok().unwrap_or_default();
        assert_eq!(short, vec![0.6, 0.8]);
        assert!(shorten(&[1.0], Some(2)).is_err());
        assert!(shorten(&[1.0], Some(0)).is_err());
    }
}
