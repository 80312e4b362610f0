//! OpenAI's `POST /v1/completions` and `POST /v1/chat/completions` for a
//! [`TextGenerator`], streamed (`stream: true`: chunks as Server-Sent
//! Events, then `data: [DONE]`) or whole, so the `openai` client works
//! unchanged. `n` must be 1; `stop` takes up to four strings;
//! `stream_options.include_usage` adds the usage chunk. Errors come in
//! OpenAI's shape, all before the first event; a failure mid-stream (the
//! deadline) is an `error` event.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use modalkit_core::ItemError;
use modalkit_core::generate::{FinishReason, StreamEvent, WholeGeneration};
use serde::Deserialize;
use serde_json::{Value, json};

use super::stream::KEEP_ALIVE;
use super::trace::TracedTokens;
use super::{ChatMessage, CompletionRequest, Prompt, TextGenerator};
use crate::error::ApiError;
use crate::extract::{JsonBody, validate};
use crate::openai::{OpenAiError, pick_model};
use crate::state::AppState;
use crate::traces::{TraceSpan, request_span};

/// A string or an array of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The fields both routes share.
#[derive(Deserialize)]
struct Common {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    stop: Option<OneOrMany>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct CompletionsBody {
    prompt: OneOrMany,
    #[serde(flatten)]
    common: Common,
}

/// A message's content: a string, or parts of which only text is taken.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
struct ChatBody {
    messages: Vec<Message>,
    #[serde(flatten)]
    common: Common,
}

/// Which route answers: the shapes differ.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Text,
    Chat,
}

pub(super) async fn completions<G: TextGenerator>(
    State(state): State<Arc<AppState<WholeGeneration<G>>>>,
    request: Request,
) -> Result<Response, OpenAiError> {
    let trace = request_span(&request);
    let body: CompletionsBody = parse(request, "prompt").await?;
    let prompt = match body.prompt {
        OneOrMany::One(text) => text,
        OneOrMany::Many(mut texts) if texts.len() == 1 => texts.remove(0),
        OneOrMany::Many(_) => {
            return Err(OpenAiError::invalid(
                "prompt",
                "prompt must be one string (or an array of one)",
            ));
        }
    };
    answer::<G>(state, Prompt::Text(prompt), body.common, Shape::Text, trace).await
}

pub(super) async fn chat<G: TextGenerator>(
    State(state): State<Arc<AppState<WholeGeneration<G>>>>,
    request: Request,
) -> Result<Response, OpenAiError> {
    let trace = request_span(&request);
    let body: ChatBody = parse(request, "messages").await?;
    if body.messages.is_empty() {
        return Err(OpenAiError::invalid(
            "messages",
            "messages must hold at least one message",
        ));
    }
    let mut messages = Vec::with_capacity(body.messages.len());
    for (i, message) in body.messages.into_iter().enumerate() {
        if !matches!(
            message.role.as_str(),
            "system" | "developer" | "user" | "assistant"
        ) {
            return Err(OpenAiError::invalid(
                "messages",
                format!(
                    "messages[{i}].role must be system, developer, user or assistant, got '{}'",
                    message.role
                ),
            ));
        }
        let content = match message.content {
            Some(Content::Text(text)) => text,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(piece)) => text.push_str(&piece),
                        (kind, _) => {
                            return Err(OpenAiError::invalid(
                                "messages",
                                format!(
                                    "messages[{i}].content: only text parts are supported, got '{kind}'"
                                ),
                            ));
                        }
                    }
                }
                text
            }
            None => String::new(),
        };
        let role = if message.role == "developer" {
            "system".to_owned()
        } else {
            message.role
        };
        messages.push(ChatMessage { role, content });
    }
    answer::<G>(
        state,
        Prompt::Chat(messages),
        body.common,
        Shape::Chat,
        trace,
    )
    .await
}

async fn parse<T: serde::de::DeserializeOwned>(
    request: Request,
    param: &'static str,
) -> Result<T, OpenAiError> {
    let body = JsonBody::from_request(request, &()).await?;
    serde_json::from_slice(&body.0)
        .map_err(|err| OpenAiError::invalid(param, format!("invalid request body: {err}")))
}

/// Largest `max_tokens` a request may name (the model may allow fewer).
const MAX_TOKENS_LIMIT: u64 = 1 << 20;

/// The request's checked parameters.
fn checked(prompt: Prompt, common: &Common) -> Result<CompletionRequest, OpenAiError> {
    if common.n.is_some_and(|n| n != 1) {
        return Err(OpenAiError::invalid("n", "n must be 1"));
    }
    let max_tokens = common.max_completion_tokens.or(common.max_tokens);
    if let Some(max) = max_tokens.filter(|m| !(1..=MAX_TOKENS_LIMIT).contains(m)) {
        return Err(OpenAiError::invalid(
            "max_tokens",
            format!("max_tokens must be between 1 and {MAX_TOKENS_LIMIT}, got {max}"),
        ));
    }
    if let Some(t) = common.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return Err(OpenAiError::invalid(
            "temperature",
            format!("temperature must be between 0 and 2, got {t}"),
        ));
    }
    if let Some(p) = common.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(OpenAiError::invalid(
            "top_p",
            format!("top_p must be in (0, 1], got {p}"),
        ));
    }
    let stop = match &common.stop {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s.clone()],
        Some(OneOrMany::Many(list)) => list.clone(),
    };
    if stop.len() > 4 {
        return Err(OpenAiError::invalid("stop", "stop takes at most 4 strings"));
    }
    Ok(CompletionRequest {
        prompt,
        max_tokens,
        temperature: common.temperature,
        top_p: common.top_p,
        stop,
        seed: common.seed,
    })
}

/// An engine refusal in OpenAI's shape: a bad input is the client's 400,
/// naming `max_tokens` when the model says so, else the prompt.
fn refused(error: ItemError, shape: Shape) -> OpenAiError {
    match error {
        ItemError::InvalidInput(message) => OpenAiError {
            status: StatusCode::BAD_REQUEST,
            param: Some(if message.starts_with("max_tokens") {
                "max_tokens"
            } else if shape == Shape::Chat {
                "messages"
            } else {
                "prompt"
            }),
            message,
            kind: "invalid_request_error",
            code: "invalid_value".to_owned(),
        },
        other => ApiError::from(other).into(),
    }
}

async fn answer<G: TextGenerator>(
    state: Arc<AppState<WholeGeneration<G>>>,
    prompt: Prompt,
    common: Common,
    shape: Shape,
    trace: TraceSpan,
) -> Result<Response, OpenAiError> {
    let request = checked(prompt, &common)?;
    let model = pick_model(&state, common.model.as_deref())?;
    let engine = super::engine(&state, &model)?;
    let input = G::completion_input(request);
    validate(&input, "")?;
    // A whole reply has the sync deadline; a stream the engine's
    // `sequence_timeout_seconds` (its client sees progress all along).
    let stream = common.stream.unwrap_or(false);
    let deadline = (!stream).then(|| Instant::now() + state.limits.request_timeout);
    let tokens = engine
        .submit(&input, deadline)
        .map_err(|error| refused(error, shape))?;
    let prompt_tokens = tokens.prompt_tokens();
    let tokens = TracedTokens::new(tokens, &trace, &model);
    let reply = Reply {
        id: format!(
            "{}-{}",
            if shape == Shape::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            uuid::Uuid::new_v4().simple()
        ),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model,
        shape,
        prompt_tokens,
    };
    if stream {
        let usage = common.stream_options.is_some_and(|o| o.include_usage);
        return Ok(streamed(reply, tokens, usage));
    }
    whole(reply, tokens).await
}

/// What every chunk or reply of one request repeats.
struct Reply {
    id: String,
    created: u64,
    model: String,
    shape: Shape,
    prompt_tokens: usize,
}

impl Reply {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.shape, chunk) {
            (Shape::Text, _) => "text_completion",
            (Shape::Chat, true) => "chat.completion.chunk",
            (Shape::Chat, false) => "chat.completion",
        }
    }

    /// One streamed choice: `text` (or `delta.content`), the finish reason.
    fn chunk(&self, text: Option<&str>, finish: Option<FinishReason>, first: bool) -> Value {
        let choice = match self.shape {
            Shape::Text => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish.map(FinishReason::name)})
            }
            Shape::Chat => {
                let delta = match (text, first) {
                    (Some(text), true) => json!({"role": "assistant", "content": text}),
                    (Some(text), false) => json!({"content": text}),
                    (None, _) => json!({}),
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish.map(FinishReason::name)})
            }
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [choice]})
    }

    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }
}

/// The whole text as one reply, with the generation's timings as headers.
async fn whole(reply: Reply, mut tokens: TracedTokens) -> Result<Response, OpenAiError> {
    let mut text = String::new();
    let finish = loop {
        match tokens.next().await {
            Some(StreamEvent::Token(token)) => {
                text.push_str(&token.text);
                if let Some(finish) = token.finish {
                    break finish;
                }
            }
            Some(StreamEvent::Failed(err)) => return Err(ApiError::from(err).into()),
            None => {
                return Err(ApiError::from(ItemError::Pipeline(
                    "the generation engine stopped".to_owned(),
                ))
                .into());
            }
        }
    };
    let choice = match reply.shape {
        Shape::Text => {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish.name()})
        }
        Shape::Chat => {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish.name()})
        }
    };
    let count = tokens.count();
    let body = json!({
        "id": reply.id, "object": reply.object(false), "created": reply.created,
        "model": reply.model, "choices": [choice], "usage": reply.usage(count),
    });
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert("x-generated-tokens", HeaderValue::from(count));
    if let Some(first) = tokens.time_to_first_token() {
        let millis = format!("{:.3}", first.as_secs_f64() * 1000.0);
        if let Ok(value) = HeaderValue::from_str(&millis) {
            headers.insert("x-time-to-first-token", value);
        }
    }
    if let Some(rate) = tokens.tokens_per_second()
        && let Ok(value) = HeaderValue::from_str(&format!("{rate:.1}"))
    {
        headers.insert("x-tokens-per-second", value);
    }
    Ok(response)
}

/// Where a streamed reply is.
struct Streaming {
    reply: Reply,
    tokens: TracedTokens,
    include_usage: bool,
    done: bool,
}

fn streamed(reply: Reply, tokens: TracedTokens, include_usage: bool) -> Response {
    let state = Streaming {
        reply,
        tokens,
        include_usage,
        done: false,
    };
    let events = stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let mut out = Vec::new();
        match s.tokens.next().await {
            Some(StreamEvent::Token(token)) => {
                let first = s.tokens.count() == 1;
                let text = (!token.text.is_empty() || first).then_some(token.text.as_str());
                if text.is_some() {
                    out.push(s.reply.chunk(text, None, first).to_string());
                }
                if let Some(finish) = token.finish {
                    out.push(s.reply.chunk(None, Some(finish), false).to_string());
                    if s.include_usage {
                        let mut usage = s.reply.chunk(None, None, false);
                        usage["choices"] = json!([]);
                        usage["usage"] = s.reply.usage(s.tokens.count());
                        out.push(usage.to_string());
                    }
                    out.push("[DONE]".to_owned());
                    s.done = true;
                }
            }
            Some(StreamEvent::Failed(err)) => {
                let error = OpenAiError::from(ApiError::from(err));
                out.push(json!({"error": {"message": error.message, "type": error.kind, "param": null, "code": error.code}}).to_string());
                s.done = true;
            }
            None => s.done = true,
        }
        let events = out
            .into_iter()
            .map(|data| Ok::<_, Infallible>(Event::default().data(data)));
        Some((stream::iter(events), s))
    })
    .flatten();
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}
