//! A sequence's tokens as a route reads them, with their counts and timings
//! (for the `end` event, the usage and the headers) and its trace span:
//! `sequence`, a child of its request's span, started at submit and ended
//! with the stream (finished, failed, or dropped by a client that left),
//! recording the tokens it got, how it ended and its time to first
//! token.

use std::time::{Duration, Instant};

use modalkit_core::generate::{StreamEvent, TokenStream};

use crate::traces::{SpanKind, TraceSpan};

/// A [`TokenStream`] that counts and times its tokens and records them on
/// the sequence's span.
pub(super) struct TracedTokens {
    tokens: TokenStream,
    span: TraceSpan,
    submitted: Instant,
    first_token: Option<Duration>,
    last_token: Option<Duration>,
    count: usize,
    end: Option<&'static str>,
}

impl TracedTokens {
    /// Traces `tokens`, submitted just now for `model`, under `request`.
    pub(super) fn new(tokens: TokenStream, request: &TraceSpan, model: &str) -> Self {
        let span = request.child("sequence", SpanKind::Internal);
        span.set_str("modalkit.model", model);
        TracedTokens {
            tokens,
            span,
            submitted: Instant::now(),
            first_token: None,
            last_token: None,
            count: 0,
            end: None,
        }
    }

    /// The next event, as [`TokenStream::next`].
    pub(super) async fn next(&mut self) -> Option<StreamEvent> {
        let event = self.tokens.next().await;
        match &event {
            Some(StreamEvent::Token(token)) => {
                let now = self.submitted.elapsed();
                self.first_token.get_or_insert(now);
                self.last_token = Some(now);
                self.count += 1;
                if let Some(finish) = token.finish {
                    self.end = Some(finish.name());
                }
            }
            Some(StreamEvent::Failed(err)) => {
                self.end = Some("failed");
                self.span.set_error(&err.to_string());
            }
            None => {}
        }
        event
    }

    /// Tokens received so far.
    pub(super) fn count(&self) -> usize {
        self.count
    }

    /// From submit to the first token, once it came.
    pub(super) fn time_to_first_token(&self) -> Option<Duration> {
        self.first_token
    }

    /// Tokens per second after the first (none before a second token).
    pub(super) fn tokens_per_second(&self) -> Option<f64> {
        let span = self.last_token?.checked_sub(self.first_token?)?;
        (self.count > 1 && !span.is_zero()).then(|| (self.count - 1) as f64 / span.as_secs_f64())
    }
}

impl Drop for TracedTokens {
    fn drop(&mut self) {
        let span = &self.span;
        span.set_int("modalkit.tokens", self.count as i64);
        span.set_str("modalkit.end", self.end.unwrap_or("cancelled"));
        if let Some(first) = self.first_token {
            span.set_int(
                "modalkit.time_to_first_token_us",
                first.as_micros().min(i64::MAX as u128) as i64,
            );
        }
        span.end();
    }
}
