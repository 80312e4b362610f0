//! Text Embeddings Inference's API, so a TEI client works against this
//! server by changing its URL: `POST /embed`, `/rerank`, `/predict`
//! (classification), `/tokenize`, `GET /info`, `POST /` (dispatching on the
//! model's kind, as TEI does: what huggingface_hub's `InferenceClient`
//! posts to), and the Cohere/Jina rerank shape on `POST /v1/rerank` and
//! `/v2/rerank`. Each text or pair of a request is one batcher item, so
//! these requests batch with all other traffic and obey its token budget.
//!
//! With several models served, each route takes the one its
//! `?model_name=` names, else the first (by name) of the route's kind
//! (`/predict` prefers a classifier to a reranker; `/info`, `/tokenize` and
//! `POST /` take the first model): an embedding model and a reranker side
//! by side answer `/embed` and `/rerank` without a query string.
//!
//! ```no_run
//! # use modalkit_server::{openai::EmbeddingModel, tei::TeiModel};
//! # fn demo<MyModel: TeiModel + EmbeddingModel>() -> std::process::ExitCode {
//! modalkit_server::tei::run::<MyModel>()
//! # }
//! ```

mod classify;
mod describe;
mod embed;
mod error;
mod rerank;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{FromRequest, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use modalkit_core::{Batcher, InferencePipeline, SubmitOptions};
use serde::Deserialize;

pub(crate) use error::TeiError;

use crate::error::ApiError;
use crate::extract::{JsonBody, validate};
use crate::server::ServerOptions;
use crate::state::AppState;

/// What a served model does, as TEI's `/info` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelKind {
    /// One vector per text.
    Embedding {
        /// `cls`, `mean`, `max`, ...
        pooling: String,
    },
    /// One relevance logit per (query, text) pair.
    Reranker {
        /// Its one label's name (`LABEL_0` unless the model names it).
        label: String,
    },
    /// One logit per label.
    Classifier {
        /// Label names, by index.
        labels: Vec<String>,
    },
}

impl ModelKind {
    /// `embedding`, `reranker` or `classifier`.
    pub fn name(&self) -> &'static str {
        match self {
            ModelKind::Embedding { .. } => "embedding",
            ModelKind::Reranker { .. } => "reranker",
            ModelKind::Classifier { .. } => "classifier",
        }
    }
}

/// How a request wants one text handled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextOptions {
    /// Scale the vector to unit length; `None`: the model's own setting.
    pub normalize: Option<bool>,
    /// Cut a text longer than the model takes (`None`: yes, as TEI's
    /// `--auto-truncate`); `Some(false)` refuses it instead.
    pub truncate: Option<bool>,
    /// A prompt of the model's to prepend (`None`: its default prompt).
    pub prompt_name: Option<String>,
}

/// One token as `/tokenize` answers it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Token {
    /// Its id.
    pub id: u32,
    /// The input's text it covers, or the special token's name.
    pub text: String,
    /// Whether it is a special token (`[CLS]`, `[SEP]`).
    pub special: bool,
    /// Byte offset of its start in the input (prompt included); `None`
    /// for a special token.
    pub start: Option<usize>,
    /// Byte offset just past it; `None` for a special token.
    pub stop: Option<usize>,
}

/// A pipeline TEI's routes can serve: it says what it is and how to make
/// an input from a text or a pair, and reads vectors and logits back.
pub trait TeiModel: InferencePipeline {
    /// What this model does (asked of the loaded pipeline on every TEI
    /// request: keep it at hand, not computed).
    fn kind(&self) -> &ModelKind;

    /// The longest input in tokens.
    fn max_input_length(&self) -> usize;

    /// The model's name for `/info`'s `model_id` (e.g. its folder).
    fn model_id(&self) -> String;

    /// The precision it computes in, for `/info` (`float32`, `bfloat16`).
    fn model_dtype(&self) -> String {
        "float32".to_owned()
    }

    /// `text`'s tokens (after the prompt `prompt_name`, or the default
    /// one), not truncated; an error is the caller's (422).
    fn tokenize(
        &self,
        text: &str,
        add_special_tokens: bool,
        prompt_name: Option<&str>,
    ) -> Result<Vec<Token>, String>;

    /// The input for one text.
    fn text_input(text: String, options: TextOptions) -> Self::Input;

    /// The input for a pair: a reranker's (query, text), or a classifier's
    /// two texts.
    fn pair_input(first: String, second: String, truncate: Option<bool>) -> Self::Input;

    /// An embedding model's vector; `None` from other kinds.
    fn embedding(output: &Self::Output) -> Option<&[f32]>;

    /// A reranker's or classifier's logits (empty from an embedding model).
    fn logits(output: &Self::Output) -> &[f32];

    /// The tokens the model read for this output.
    fn token_count(output: &Self::Output) -> usize;
}

/// Serves `P` with modalkit's routes, TEI's and OpenAI's embeddings
/// (the command line of [`crate::cli::run`]).
pub fn run<P: TeiModel + crate::openai::EmbeddingModel>() -> ExitCode {
    crate::cli::run_with_routes::<P>(ServerOptions::default(), || {
        routes::<P>().merge(crate::openai::routes::<P>())
    })
}

/// TEI's routes, to merge into a server's router
/// ([`crate::Server::with_routes`]); behind the API key like the predict
/// routes.
pub fn routes<P: TeiModel>() -> Router<Arc<AppState<P>>> {
    Router::new()
        .route("/", post(compat::<P>))
        .route("/embed", post(embed::embed::<P>))
        .route("/rerank", post(rerank::rerank::<P>))
        .route("/v1/rerank", post(rerank::rerank_cohere::<P>))
        .route("/v2/rerank", post(rerank::rerank_cohere::<P>))
        .route("/predict", post(classify::predict::<P>))
        .route("/tokenize", post(describe::tokenize::<P>))
        .route("/info", get(describe::info::<P>))
}

/// The kinds of model a route can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Embedding,
    Reranker,
    /// `/predict`: classifiers, and rerankers (one label).
    Classifier,
    /// `/info`, `/tokenize`, `POST /`.
    Any,
}

impl Wanted {
    /// How well a model of `kind` fits, best 0; `None`: not at all.
    fn fit(self, kind: &ModelKind) -> Option<u8> {
        match (self, kind) {
            (Wanted::Any, _)
            | (Wanted::Embedding, ModelKind::Embedding { .. })
            | (Wanted::Reranker, ModelKind::Reranker { .. })
            | (Wanted::Classifier, ModelKind::Classifier { .. }) => Some(0),
            // A reranker classifies too (one label), when no classifier is served.
            (Wanted::Classifier, ModelKind::Reranker { .. }) => Some(1),
            _ => None,
        }
    }

    fn accepts(self, kind: &ModelKind) -> bool {
        self.fit(kind).is_some()
    }

    fn noun(self) -> &'static str {
        match self {
            Wanted::Embedding => "an embedding model",
            Wanted::Reranker => "a re-ranker model",
            Wanted::Classifier => "a classifier model",
            Wanted::Any => "a model",
        }
    }
}

#[derive(Deserialize, Default)]
struct ModelQuery {
    model_name: Option<String>,
}

/// The served model a request goes to: the one `requested` names (which
/// must be of a kind the route takes), else the first (by name) of the
/// best-fitting kind.
fn pick<'a, P: TeiModel>(
    state: &'a AppState<P>,
    requested: Option<&str>,
    wanted: Wanted,
) -> Result<(&'a str, &'a Arc<Batcher<P>>), TeiError> {
    if let Some(name) = requested {
        let batcher = state.batcher(name).ok_or_else(|| {
            TeiError::from(ApiError::UnknownModel(
                name.to_owned(),
                state.model_names.clone(),
            ))
        })?;
        let kind = batcher.pipeline().kind();
        if !wanted.accepts(kind) {
            return Err(TeiError::backend(format!(
                "model '{name}' is not {} (it is a {} model)",
                wanted.noun(),
                kind.name()
            )));
        }
        return Ok((batcher.model(), batcher));
    }
    state
        .model_names
        .iter()
        .filter_map(|name| state.batcher(name))
        .filter_map(|batcher| Some((wanted.fit(batcher.pipeline().kind())?, batcher)))
        .min_by_key(|(fit, _)| *fit)
        .map(|(_, batcher)| (batcher.model(), batcher))
        .ok_or_else(|| {
            let served: Vec<String> = state
                .model_names
                .iter()
                .filter_map(|name| state.batcher(name))
                .map(|b| format!("{}: {}", b.model(), b.pipeline().kind().name()))
                .collect();
            TeiError::backend(format!(
                "no served model is {} (served: {})",
                wanted.noun(),
                served.join(", ")
            ))
        })
}

/// Submits every input to `batcher` at once, under one deadline, and waits
/// for all of them, in order: a request's texts share a batch where they
/// fit. Inputs are validated first, so a bad one refuses the request
/// before any is queued.
async fn submit_all<P: TeiModel>(
    state: &AppState<P>,
    batcher: &Batcher<P>,
    inputs: Vec<P::Input>,
    field: &str,
) -> Result<Vec<P::Output>, TeiError> {
    for (i, input) in inputs.iter().enumerate() {
        validate(input, &format!("{field}[{i}]"))?;
    }
    let deadline = Instant::now() + state.limits.request_timeout;
    let tickets = batcher.submit_all(inputs.into_iter().map(|input| {
        let options = SubmitOptions {
            deadline: Some(deadline),
            on_start: None,
            timing: None,
        };
        (input, options)
    }))?;
    let timeout = state.limits.request_timeout.as_secs_f64();
    let mut outputs = Vec::with_capacity(tickets.len());
    for ticket in tickets {
        let output = tokio::time::timeout_at(deadline.into(), ticket)
            .await
            .map_err(|_| TeiError::from(ApiError::DeadlineExceeded(timeout)))??;
        outputs.push(output);
    }
    Ok(outputs)
}

/// Refuses an empty list and one longer than `max_batch_request_items`.
fn check_count<P: InferencePipeline>(
    state: &AppState<P>,
    count: usize,
    field: &str,
) -> Result<(), TeiError> {
    let limit = state.limits.max_batch_request_items;
    if count == 0 {
        return Err(TeiError::empty(format!("`{field}` cannot be empty")));
    }
    if count > limit {
        return Err(TeiError::too_many(count, limit));
    }
    Ok(())
}

/// A string or a list of strings (TEI also takes token ids; this server
/// does not).
#[derive(Deserialize)]
#[serde(untagged)]
enum Inputs {
    One(String),
    Many(Vec<String>),
    Other(serde::de::IgnoredAny),
}

impl Inputs {
    /// The texts, or why the field is not a string or a list of strings.
    fn texts(self) -> Result<Vec<String>, TeiError> {
        match self {
            Inputs::One(text) => Ok(vec![text]),
            Inputs::Many(texts) => Ok(texts),
            Inputs::Other(_) => Err(TeiError::validation(
                "`inputs` must be a string or a list of strings (token ids are not supported)",
            )),
        }
    }
}

/// Parses a TEI request body.
async fn parse<T: serde::de::DeserializeOwned>(request: Request) -> Result<T, TeiError> {
    let body = JsonBody::from_request(request, &()).await?;
    serde_json::from_slice(&body.0)
        .map_err(|err| TeiError::validation(format!("invalid request body: {err}")))
}

/// The truncation fields every TEI request carries.
#[derive(Deserialize, Default)]
struct Truncation {
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Option<String>,
}

impl Truncation {
    /// `truncate`, once the direction is one this server has: right
    /// (TEI's default) only.
    fn truncate(&self) -> Result<Option<bool>, TeiError> {
        match self.truncation_direction.as_deref() {
            None | Some("right" | "Right") => Ok(self.truncate),
            Some(other) => Err(TeiError::validation(format!(
                "truncation_direction '{other}' is not supported: only right"
            ))),
        }
    }
}

/// `POST /`: what TEI's compat route does for the default model's kind.
async fn compat<P: TeiModel>(
    state: State<Arc<AppState<P>>>,
    query: Query<ModelQuery>,
    request: Request,
) -> Response {
    let kind = match pick(&state, query.model_name.as_deref(), Wanted::Any) {
        Ok((_, batcher)) => batcher.pipeline().kind().clone(),
        Err(err) => return err.into_response(),
    };
    match kind {
        ModelKind::Embedding { .. } => embed::embed(state, query, request).await.into_response(),
        ModelKind::Reranker { .. } => rerank::rerank(state, query, request).await.into_response(),
        ModelKind::Classifier { .. } => classify::predict(state, query, request)
            .await
            .into_response(),
    }
}
