//! The generation engine: one thread per model that steps every running
//! sequence together, admitting and retiring sequences between steps.
//!
//! Bounded three ways: sequences waiting for a slot
//! ([`EngineConfig::max_queued_sequences`], past which [`Engine::submit`] refuses),
//! sequences running at once ([`EngineConfig::max_running_sequences`]), and their
//! summed token budgets ([`EngineConfig::max_batch_total_tokens`]). Each sequence
//! streams its tokens through an unbounded channel (a step adds one token
//! per sequence, and a sequence's length is bounded, so the channel is
//! too); a receiver dropped (the client went away) frees the sequence's
//! slot before the next step.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{GenerativePipeline, Token};
use crate::error::ItemError;
use crate::pipeline::PipelineError;

/// How an engine is bounded, read from the model's entry (every key
/// optional): `max_running_sequences`, `max_batch_total_tokens` (TGI's
/// name), `max_queued_sequences`, `sequence_timeout_seconds`.
///
/// Non-exhaustive: start from `EngineConfig::default()` and set fields.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Most sequences stepped together.
    pub max_running_sequences: usize,
    /// Most summed [`GenerativePipeline::budget`] of the running sequences
    /// (the first one is always admitted).
    pub max_batch_total_tokens: usize,
    /// Most sequences waiting for a slot.
    pub max_queued_sequences: usize,
    /// Deadline of a sequence submitted without one, in seconds.
    pub sequence_timeout_seconds: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_running_sequences: 32,
            max_batch_total_tokens: 16_384,
            max_queued_sequences: 256,
            sequence_timeout_seconds: 300.0,
        }
    }
}

impl EngineConfig {
    /// The configuration in a model entry (its other keys ignored); an
    /// error names the key.
    pub fn from_entry(entry: &serde_json::Value) -> Result<Self, String> {
        let config: EngineConfig =
            serde_json::from_value(entry.clone()).map_err(|err| err.to_string())?;
        if config.max_running_sequences == 0
            || config.max_batch_total_tokens == 0
            || config.max_queued_sequences == 0
        {
            return Err(
                "max_running_sequences, max_batch_total_tokens and max_queued_sequences must be at least 1"
                    .to_owned(),
            );
        }
        if !(config.sequence_timeout_seconds > 0.0 && config.sequence_timeout_seconds.is_finite()) {
            return Err("sequence_timeout_seconds must be a positive number".to_owned());
        }
        Ok(config)
    }
}

/// What a sequence's stream carries. A stream ends after a token with
/// [`Token::finish`] set or after a failure.
#[derive(Debug, Clone)]
pub enum StreamEvent {
    /// The next token.
    Token(Token),
    /// The sequence failed (its deadline passed, the model failed, the
    /// engine shut down); nothing follows.
    Failed(ItemError),
}

/// The tokens of one submitted sequence, as the engine produces them.
/// Dropping it cancels the sequence at the next step.
#[derive(Debug)]
pub struct TokenStream {
    events: mpsc::UnboundedReceiver<StreamEvent>,
    prompt_tokens: usize,
}

impl TokenStream {
    /// The tokens of the sequence's prompt
    /// ([`GenerativePipeline::prompt_tokens`]).
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// The next event; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<StreamEvent> {
        self.events.recv().await
    }

    /// [`next`](Self::next) for a thread outside the async runtime.
    pub fn blocking_next(&mut self) -> Option<StreamEvent> {
        self.events.blocking_recv()
    }
}

/// A model's generation engine: submit sequences, read their tokens.
/// Dropping it lets the running sequences finish and refuses the waiting.
pub struct Engine<G: GenerativePipeline> {
    shared: Arc<Shared<G>>,
}

/// What the engine thread and submitters share.
struct Shared<G: GenerativePipeline> {
    model: String,
    config: EngineConfig,
    pipeline: Arc<G>,
    queue: Mutex<Queue<G>>,
    wake: Condvar,
    metrics: EngineMetrics,
}

struct Queue<G: GenerativePipeline> {
    waiting: VecDeque<Pending<G>>,
    /// Why the engine takes no more work, once it does not.
    closed: Option<String>,
}

/// A sequence and where its tokens go.
struct Pending<G: GenerativePipeline> {
    sequence: G::Sequence,
    budget: usize,
    events: mpsc::UnboundedSender<StreamEvent>,
    submitted: Instant,
    deadline: Instant,
}

/// A running sequence: its tokens so far and when the last one came.
struct Running<G: GenerativePipeline> {
    pending: Pending<G>,
    generated: usize,
    last_token: Instant,
}

/// How a sequence ended: which counter it adds to.
#[derive(Clone, Copy)]
enum End {
    Finished,
    Cancelled,
    Deadline,
    Failed,
}

/// The engine's metrics, labelled by model.
struct EngineMetrics {
    queued: Gauge,
    running: Gauge,
    step_sequences: Histogram,
    time_to_first_token: Histogram,
    inter_token: Histogram,
    tokens: Counter,
    finished: Counter,
    cancelled: Counter,
    expired: Counter,
    failed: Counter,
}

impl EngineMetrics {
    fn new(model: &str) -> Self {
        let ended = |how: &'static str| metrics::counter!("modalkit_sequences_ended_total", "model" => model.to_owned(), "end" => how);
        EngineMetrics {
            queued: metrics::gauge!("modalkit_sequences_queued", "model" => model.to_owned()),
            running: metrics::gauge!("modalkit_sequences_running", "model" => model.to_owned()),
            step_sequences: metrics::histogram!("modalkit_step_sequences", "model" => model.to_owned()),
            time_to_first_token: metrics::histogram!("modalkit_time_to_first_token_seconds", "model" => model.to_owned()),
            inter_token: metrics::histogram!("modalkit_inter_token_seconds", "model" => model.to_owned()),
            tokens: metrics::counter!("modalkit_generated_tokens_total", "model" => model.to_owned()),
            finished: ended("finished"),
            cancelled: ended("cancelled"),
            expired: ended("deadline"),
            failed: ended("failed"),
        }
    }
}

impl<G: GenerativePipeline> Engine<G> {
    /// Starts the engine's thread for `pipeline`.
    pub fn start(model: &str, config: EngineConfig, pipeline: Arc<G>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            model: model.to_owned(),
            metrics: EngineMetrics::new(model),
            config,
            pipeline,
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                closed: None,
            }),
            wake: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("modalkit-{model}-generate"))
            .spawn(move || run(&thread_shared))?;
        Ok(Engine { shared })
    }

    /// The model's pipeline (for what a route needs outside the engine: a
    /// template, a tokenizer).
    pub fn pipeline(&self) -> &G {
        &self.shared.pipeline
    }

    /// The engine's bounds.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Checks `input` ([`GenerativePipeline::start`], on this thread) and
    /// queues its sequence; `deadline` defaults to the configured timeout.
    /// Refuses at once: an invalid input ([`ItemError::InvalidInput`]), a
    /// sequence over the whole token budget (the same), a full queue
    /// ([`ItemError::Overloaded`]), a closed engine
    /// ([`ItemError::Unavailable`]).
    pub fn submit(
        &self,
        input: &G::Input,
        deadline: Option<Instant>,
    ) -> Result<TokenStream, ItemError> {
        let shared = &self.shared;
        let started = catch_unwind(AssertUnwindSafe(|| shared.pipeline.start(input)))
            .unwrap_or_else(|_| Err(PipelineError::msg("the pipeline panicked in start")));
        let sequence = started.map_err(|err| match err.kind() {
            crate::ErrorKind::InvalidInput => ItemError::InvalidInput(err.to_string()),
            _ => ItemError::Pipeline(err.to_string()),
        })?;
        let budget = G::budget(&sequence);
        let prompt_tokens = G::prompt_tokens(&sequence);
        if budget > shared.config.max_batch_total_tokens {
            return Err(ItemError::InvalidInput(format!(
                "the prompt and max_tokens need {budget} tokens, more than this model's max_batch_total_tokens ({})",
                shared.config.max_batch_total_tokens
            )));
        }
        let (events, receiver) = mpsc::unbounded_channel();
        let now = Instant::now();
        let timeout = Duration::from_secs_f64(shared.config.sequence_timeout_seconds);
        let mut queue = shared.lock();
        if let Some(reason) = &queue.closed {
            return Err(ItemError::Unavailable {
                model: shared.model.clone(),
                reason: reason.clone(),
            });
        }
        if queue.waiting.len() >= shared.config.max_queued_sequences {
            return Err(ItemError::Overloaded {
                model: shared.model.clone(),
                depth: shared.config.max_queued_sequences,
            });
        }
        queue.waiting.push_back(Pending {
            sequence,
            budget,
            events,
            submitted: now,
            deadline: deadline.unwrap_or(now + timeout),
        });
        shared.metrics.queued.set(queue.waiting.len() as f64);
        drop(queue);
        shared.wake.notify_one();
        Ok(TokenStream {
            events: receiver,
            prompt_tokens,
        })
    }

    /// Stops intake: waiting sequences fail, running ones finish.
    pub fn close(&self) {
        self.shared.close("shutting down".to_owned());
    }
}

impl<G: GenerativePipeline> Drop for Engine<G> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<G: GenerativePipeline> Shared<G> {
    /// Counts a sequence's end.
    fn end(&self, how: End) {
        let metrics = &self.metrics;
        match how {
            End::Finished => &metrics.finished,
            End::Cancelled => &metrics.cancelled,
            End::Deadline => &metrics.expired,
            End::Failed => &metrics.failed,
        }
        .increment(1);
    }

    fn lock(&self) -> MutexGuard<'_, Queue<G>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes intake (the first reason stays) and fails what waits.
    fn close(&self, reason: String) {
        let mut queue = self.lock();
        let reason = queue.closed.get_or_insert(reason).clone();
        for pending in queue.waiting.drain(..) {
            let _ = pending
                .events
                .send(StreamEvent::Failed(ItemError::Unavailable {
                    model: self.model.clone(),
                    reason: reason.clone(),
                }));
            self.end(End::Failed);
        }
        self.metrics.queued.set(0.0);
        drop(queue);
        self.wake.notify_all();
    }
}

/// The engine's loop: admit, prefill the admitted, step the others, send
/// and retire; sleep while there is nothing to do.
fn run<G: GenerativePipeline>(shared: &Shared<G>) {
    let mut running: Vec<Running<G>> = Vec::new();
    loop {
        let admitted = {
            let mut queue = shared.lock();
            while running.is_empty() && queue.waiting.is_empty() {
                if queue.closed.is_some() {
                    return;
                }
                queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
            let admitted = admit(shared, &mut queue, &running);
            shared.metrics.queued.set(queue.waiting.len() as f64);
            admitted
        };
        retire_gone(shared, &mut running);
        let mut fresh: Vec<Running<G>> = admitted
            .into_iter()
            .map(|pending| Running {
                pending,
                generated: 0,
                last_token: Instant::now(),
            })
            .collect();
        if !fresh.is_empty() {
            let outcome = call(shared, &mut fresh, |pipeline, sequences| {
                pipeline.prefill(sequences)
            });
            deliver(shared, &mut fresh, outcome);
        }
        if !running.is_empty() {
            shared.metrics.step_sequences.record(running.len() as f64);
            let outcome = call(shared, &mut running, |pipeline, sequences| {
                pipeline.step(sequences)
            });
            deliver(shared, &mut running, outcome);
        }
        running.append(&mut fresh);
        shared.metrics.running.set(running.len() as f64);
    }
}

/// Takes waiting sequences while slots and the token budget allow (the
/// first always, when nothing runs); drops the cancelled and the expired.
fn admit<G: GenerativePipeline>(
    shared: &Shared<G>,
    queue: &mut Queue<G>,
    running: &[Running<G>],
) -> Vec<Pending<G>> {
    let config = &shared.config;
    let mut used: usize = running.iter().map(|r| r.pending.budget).sum();
    let mut count = running.len();
    let mut admitted = Vec::new();
    let now = Instant::now();
    while let Some(next) = queue.waiting.front() {
        let (closed, expired) = (next.events.is_closed(), next.deadline <= now);
        let fits = count == 0 || used + next.budget <= config.max_batch_total_tokens;
        if !closed && !expired && (count >= config.max_running_sequences || !fits) {
            break;
        }
        let Some(pending) = queue.waiting.pop_front() else {
            break;
        };
        if closed {
            shared.end(End::Cancelled);
            continue;
        }
        if expired {
            expire(shared, &pending);
            continue;
        }
        used += pending.budget;
        count += 1;
        admitted.push(pending);
    }
    admitted
}

/// Retires running sequences whose client left or whose deadline passed.
fn retire_gone<G: GenerativePipeline>(shared: &Shared<G>, running: &mut Vec<Running<G>>) {
    let now = Instant::now();
    running.retain(|r| {
        if r.pending.events.is_closed() {
            shared.end(End::Cancelled);
            false
        } else if r.pending.deadline <= now {
            expire(shared, &r.pending);
            false
        } else {
            true
        }
    });
}

fn expire<G: GenerativePipeline>(shared: &Shared<G>, pending: &Pending<G>) {
    let budget = pending
        .deadline
        .saturating_duration_since(pending.submitted);
    let _ = pending
        .events
        .send(StreamEvent::Failed(ItemError::DeadlineExceeded { budget }));
    shared.end(End::Deadline);
}

/// Runs `prefill` or `step` on `batch`, turning a panic or a wrong count
/// into an error.
fn call<G: GenerativePipeline>(
    shared: &Shared<G>,
    batch: &mut [Running<G>],
    compute: impl FnOnce(&G, &mut [&mut G::Sequence]) -> Result<Vec<Token>, PipelineError>,
) -> Result<Vec<Token>, PipelineError> {
    let mut sequences: Vec<&mut G::Sequence> =
        batch.iter_mut().map(|r| &mut r.pending.sequence).collect();
    let count = sequences.len();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        compute(&shared.pipeline, &mut sequences)
    }))
    .unwrap_or_else(|_| Err(PipelineError::msg("the pipeline panicked")));
    match outcome {
        Ok(tokens) if tokens.len() != count => Err(PipelineError::msg(format!(
            "the pipeline returned {} tokens for {count} sequences",
            tokens.len()
        ))),
        other => other,
    }
}

/// Sends each sequence its token and keeps the ones still going; on a
/// failed call, fails them all (and a fatal failure closes the engine).
fn deliver<G: GenerativePipeline>(
    shared: &Shared<G>,
    batch: &mut Vec<Running<G>>,
    outcome: Result<Vec<Token>, PipelineError>,
) {
    let metrics = &shared.metrics;
    let tokens = match outcome {
        Ok(tokens) => tokens,
        Err(err) => {
            tracing::error!(model = %shared.model, error = %err, "generation step failed");
            let message = err.to_string();
            for r in batch.drain(..) {
                let _ = r
                    .pending
                    .events
                    .send(StreamEvent::Failed(ItemError::Pipeline(message.clone())));
                shared.end(End::Failed);
            }
            if err.is_fatal() {
                shared.close(format!("the device failed: {message}"));
            }
            return;
        }
    };
    let now = Instant::now();
    let mut tokens = tokens.into_iter();
    batch.retain_mut(|r| {
        let Some(token) = tokens.next() else {
            return false; // not reached: `call` checked the count
        };
        let finished = token.finish.is_some();
        if r.generated == 0 {
            let waited = now.duration_since(r.pending.submitted);
            metrics.time_to_first_token.record(waited.as_secs_f64());
        } else {
            metrics
                .inter_token
                .record(now.duration_since(r.last_token).as_secs_f64());
        }
        metrics.tokens.increment(1);
        r.generated += 1;
        r.last_token = now;
        // Counted before it is sent: whoever reads the last token sees the
        // sequence counted as finished.
        if finished {
            shared.end(End::Finished);
        }
        if r.pending.events.send(StreamEvent::Token(token)).is_err() {
            if !finished {
                shared.end(End::Cancelled);
            }
            return false;
        }
        !finished
    });
}
