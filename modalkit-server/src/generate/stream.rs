//! `POST /predict_stream`: a generative model's tokens as Server-Sent
//! Events. Each token is an event in modalkit's output shape
//! (`{"status": "success", "error": null, "text", "token_id",
//! "finish_reason": null}`); the last, named `end`, carries the status,
//! any error, the finish reason and the sequence's timings. Comments keep
//! an idle connection alive. Closing the connection cancels the sequence
//! at the engine's next step.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, RawQuery, Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use modalkit_core::generate::{StreamEvent, WholeGeneration};
use serde_json::json;

use super::TextGenerator;
use super::trace::TracedTokens;
use crate::error::ApiError;
use crate::extract::{JsonBody, resolve_model, validate};
use crate::state::AppState;
use crate::traces::request_span;

/// How often an idle stream sends a keep-alive comment.
pub(super) const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(super) async fn predict_stream<G: TextGenerator>(
    State(state): State<Arc<AppState<WholeGeneration<G>>>>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let model = resolve_model(query.as_deref(), &state.model_names)?;
    let engine = super::engine(&state, model)?;
    let trace = request_span(&request);
    let body = JsonBody::from_request(request, &()).await?;
    let input: G::Input = body.parse()?;
    validate(&input, "")?;
    // A stream's deadline is the engine's `sequence_timeout_seconds`, not
    // the sync timeout: its client sees progress all along.
    let tokens = TracedTokens::new(engine.submit(&input, None)?, &trace, model);
    Ok(Sse::new(events(tokens))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// Where a stream is: its tokens, and whether `end` was sent.
struct Progress {
    tokens: TracedTokens,
    ended: bool,
}

impl Progress {
    /// The `end` event for a sequence that finished (`reason`) or failed.
    fn end(&mut self, reason: Option<&str>, error: Option<String>) -> Event {
        self.ended = true;
        let first = self.tokens.time_to_first_token();
        let body = json!({
            "status": if error.is_none() { "success" } else { "error" },
            "error": error,
            "text": "",
            "finish_reason": reason,
            "tokens": self.tokens.count(),
            "time_to_first_token_ms": first.map(|d| d.as_secs_f64() * 1000.0),
            "tokens_per_second": self.tokens.tokens_per_second(),
        });
        Event::default().event("end").data(body.to_string())
    }
}

fn events(tokens: TracedTokens) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let progress = Progress {
        tokens,
        ended: false,
    };
    stream::unfold(progress, |mut progress| async move {
        if progress.ended {
            return None;
        }
        let events = match progress.tokens.next().await {
            Some(StreamEvent::Token(token)) => {
                let chunk = chunk(&token.text, token.id);
                match token.finish {
                    Some(reason) => vec![chunk, progress.end(Some(reason.name()), None)],
                    None => vec![chunk],
                }
            }
            Some(StreamEvent::Failed(err)) => vec![progress.end(None, Some(err.to_string()))],
            None => vec![progress.end(None, Some("the generation engine stopped".to_owned()))],
        };
        Some((stream::iter(events.into_iter().map(Ok)), progress))
    })
    .flatten()
}

fn chunk(text: &str, token_id: u32) -> Event {
    let body = json!({"status": "success", "error": null, "text": text, "token_id": token_id, "finish_reason": null});
    Event::default().data(body.to_string())
}
