//! Serving a generative pipeline: `POST /predict_stream` (Server-Sent
//! Events in modalkit's output shape) and OpenAI's `POST /v1/completions`
//! and `POST /v1/chat/completions` (streamed or whole), beside modalkit's
//! routes, which answer with the whole text (`/predict_sync`, batch, async
//! jobs). Every route feeds the model's one [`Engine`]: a sequence from
//! any of them steps beside all the others.
//!
//! Bad input is refused before anything is streamed: the pipeline's
//! [`start`](GenerativePipeline::start) runs on the request's task, so an
//! empty conversation, a `max_tokens` out of range or a prompt over the
//! context gets a 4xx (OpenAI's error shape on its routes).
//!
//! ```no_run
//! # use modalkit_server::generate::TextGenerator;
//! # fn demo<MyModel: TextGenerator>() -> std::process::ExitCode {
//! modalkit_server::generate::run::<MyModel>()
//! # }
//! ```

mod completions;
mod stream;
mod trace;

use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use modalkit_core::generate::{Engine, GenerativePipeline, WholeGeneration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::server::ServerOptions;
use crate::state::AppState;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Its text.
    pub content: String,
}

/// What a completion continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A raw text.
    Text(String),
    /// A conversation, for the model's chat template.
    Chat(Vec<ChatMessage>),
}

/// An OpenAI completion or chat request, as a [`TextGenerator`] turns it
/// into its input; `None` means the model's default.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CompletionRequest {
    /// The prompt or the conversation.
    pub prompt: Prompt,
    /// Most tokens to generate.
    pub max_tokens: Option<u64>,
    /// Sampling temperature; 0 is greedy.
    pub temperature: Option<f32>,
    /// Nucleus sampling's probability mass.
    pub top_p: Option<f32>,
    /// Strings that end the text (not included).
    pub stop: Vec<String>,
    /// Seed of the sampler.
    pub seed: Option<u64>,
}

/// A generative pipeline that produces text: what the OpenAI routes need.
pub trait TextGenerator: GenerativePipeline {
    /// The input for an OpenAI request.
    fn completion_input(request: CompletionRequest) -> Self::Input;
}

/// Serves generative pipeline `G` with modalkit's routes, `/predict_stream`
/// and the OpenAI ones (the command line of [`crate::cli::run`]).
pub fn run<G: TextGenerator>() -> ExitCode {
    crate::cli::run_with_routes::<WholeGeneration<G>>(ServerOptions::default(), routes::<G>)
}

/// The streaming and OpenAI routes, to merge into a server's router
/// ([`crate::Server::with_routes`]); behind the API key like the predict
/// routes.
pub fn routes<G: TextGenerator>() -> Router<Arc<AppState<WholeGeneration<G>>>> {
    Router::new()
        .route("/predict_stream", post(stream::predict_stream::<G>))
        .route("/v1/completions", post(completions::completions::<G>))
        .route("/v1/chat/completions", post(completions::chat::<G>))
        .route(
            "/v1/models",
            get(crate::openai::models::<WholeGeneration<G>>),
        )
}

/// The engine of the model `name` names (the query's `model_name`, or the
/// OpenAI request's `model`, resolved by the caller). None once the server
/// drains: the streams already running finish, no new one starts.
fn engine<'a, G: GenerativePipeline>(
    state: &'a AppState<WholeGeneration<G>>,
    model: &str,
) -> Result<&'a Engine<G>, ApiError> {
    if state
        .shutting_down
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return Err(ApiError::Unavailable(
            "the server is shutting down".to_owned(),
        ));
    }
    state
        .batcher(model)
        .map(|batcher| batcher.pipeline().engine())
        .ok_or_else(|| ApiError::UnknownModel(model.to_owned(), state.model_names.clone()))
}
