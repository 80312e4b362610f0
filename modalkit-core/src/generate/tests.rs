//! The engine's scheduling, on a counting pipeline whose tokens are known:
//! order and completion, the bounds (running, token budget, queue), the
//! deadline, a client that leaves, a failing step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use garde::Validate;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{Engine, EngineConfig, FinishReason, GenerativePipeline, StreamEvent, Token};
use crate::context::ModelContext;
use crate::error::ItemError;
use crate::pipeline::PipelineError;

#[derive(Deserialize, Validate, JsonSchema)]
struct Count {
    /// Tokens "in the prompt".
    #[garde(skip)]
    prompt: usize,
    /// Tokens to generate: the sequence counts 1, 2, ... up to it.
    #[garde(skip)]
    tokens: u32,
    /// A step that reaches this token fails.
    #[garde(skip)]
    fail_at: Option<u32>,
}

struct Counting {
    prompt: usize,
    tokens: u32,
    fail_at: Option<u32>,
    next: u32,
}

/// Counts, and remembers the largest step and how many steps ran.
#[derive(Default)]
struct Counter {
    widest_step: AtomicUsize,
    steps: AtomicUsize,
    step_pause: Duration,
}

impl Counter {
    fn emit(&self, sequences: &mut [&mut Counting]) -> Result<Vec<Token>, PipelineError> {
        std::thread::sleep(self.step_pause);
        self.steps.fetch_add(1, Ordering::SeqCst);
        self.widest_step
            .fetch_max(sequences.len(), Ordering::SeqCst);
        let mut tokens = Vec::new();
        for s in sequences.iter_mut() {
            s.next += 1;
            if s.fail_at == Some(s.next) {
                return Err(PipelineError::msg(format!("asked to fail at {}", s.next)));
            }
            tokens.push(Token {
                id: s.next,
                text: format!("{} ", s.next),
                finish: (s.next == s.tokens).then_some(FinishReason::Length),
            });
        }
        Ok(tokens)
    }
}

impl GenerativePipeline for Counter {
    type Input = Count;
    type Sequence = Counting;

    fn load(_: &ModelContext) -> Result<Self, PipelineError> {
        Ok(Counter::default())
    }

    fn start(&self, input: &Count) -> Result<Counting, PipelineError> {
        if input.tokens == 0 {
            return Err(PipelineError::invalid_input("tokens must be at least 1"));
        }
        Ok(Counting {
            prompt: input.prompt,
            tokens: input.tokens,
            fail_at: input.fail_at,
            next: 0,
        })
    }

    fn budget(sequence: &Counting) -> usize {
        sequence.prompt + sequence.tokens as usize
    }

    fn prompt_tokens(sequence: &Counting) -> usize {
        sequence.prompt
    }

    fn prefill(&self, sequences: &mut [&mut Counting]) -> Result<Vec<Token>, PipelineError> {
        self.emit(sequences)
    }

    fn step(&self, sequences: &mut [&mut Counting]) -> Result<Vec<Token>, PipelineError> {
        self.emit(sequences)
    }
}

fn engine(config: EngineConfig, pause_ms: u64) -> Engine<Counter> {
    let counter = Counter {
        step_pause: Duration::from_millis(pause_ms),
        ..Counter::default()
    };
    Engine::start("counter", config, Arc::new(counter)).unwrap()
}

fn count(prompt: usize, tokens: u32) -> Count {
    Count {
        prompt,
        tokens,
        fail_at: None,
    }
}

/// Every token of a stream until it ends, or its failure.
async fn drain(mut stream: super::TokenStream) -> Result<Vec<u32>, ItemError> {
    let mut ids = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            StreamEvent::Token(token) => {
                ids.push(token.id);
                if token.finish.is_some() {
                    assert!(
                        stream.next().await.is_none(),
                        "nothing after the last token"
                    );
                    return Ok(ids);
                }
            }
            StreamEvent::Failed(err) => return Err(err),
        }
    }
    panic!("the stream ended without a last token");
}

#[tokio::test]
async fn sequences_of_different_lengths_share_steps_and_each_ends_on_its_own() {
    let config = EngineConfig {
        max_running_sequences: 4,
        ..EngineConfig::default()
    };
    let engine = engine(config, 1);
    let lengths = [1u32, 5, 9, 3, 7, 2, 8, 4, 6, 10];
    let streams: Vec<_> = lengths
        .iter()
        .map(|&n| engine.submit(&count(3, n), None).unwrap())
        .collect();
    assert_eq!(streams[0].prompt_tokens(), 3);
    for (stream, n) in streams.into_iter().zip(lengths) {
        assert_eq!(drain(stream).await.unwrap(), (1..=n).collect::<Vec<_>>());
    }
    let counter = engine.pipeline();
    assert_eq!(
        counter.widest_step.load(Ordering::SeqCst),
        4,
        "never above the bound"
    );
    let total: u32 = lengths.iter().sum();
    assert!(
        counter.steps.load(Ordering::SeqCst) < total as usize / 2,
        "sequences shared steps"
    );
}

#[tokio::test]
async fn the_token_budget_bounds_what_runs_together_and_refuses_what_never_fits() {
    let config = EngineConfig {
        max_batch_total_tokens: 20,
        ..EngineConfig::default()
    };
    let engine = engine(config, 1);
    // Each needs 10: two run together, never three.
    let streams: Vec<_> = (0..6)
        .map(|_| engine.submit(&count(5, 5), None).unwrap())
        .collect();
    for stream in streams {
        assert_eq!(drain(stream).await.unwrap().len(), 5);
    }
    assert_eq!(engine.pipeline().widest_step.load(Ordering::SeqCst), 2);
    match engine.submit(&count(15, 6), None) {
        Err(ItemError::InvalidInput(message)) => {
            assert!(message.contains("max_batch_total_tokens"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match engine.submit(&count(1, 0), None) {
        Err(ItemError::InvalidInput(message)) => assert!(message.contains("tokens")),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_full_queue_refuses_with_overloaded() {
    let config = EngineConfig {
        max_running_sequences: 1,
        max_queued_sequences: 1,
        ..EngineConfig::default()
    };
    let engine = engine(config, 5);
    let mut running = engine.submit(&count(1, 200), None).unwrap();
    assert!(matches!(running.next().await, Some(StreamEvent::Token(_))));
    let _waiting = engine.submit(&count(1, 1), None).unwrap();
    match engine.submit(&count(1, 1), None) {
        Err(ItemError::Overloaded { depth, .. }) => assert_eq!(depth, 1),
        other => panic!("expected overloaded, got {other:?}"),
    }
}

#[tokio::test]
async fn a_dropped_stream_stops_its_sequence_and_frees_its_slot() {
    let config = EngineConfig {
        max_running_sequences: 1,
        ..EngineConfig::default()
    };
    let engine = engine(config, 2);
    let mut long = engine.submit(&count(1, 10_000), None).unwrap();
    assert!(matches!(long.next().await, Some(StreamEvent::Token(_))));
    let short = engine.submit(&count(1, 3), None).unwrap();
    drop(long);
    let started = Instant::now();
    assert_eq!(drain(short).await.unwrap(), vec![1, 2, 3]);
    assert!(started.elapsed() < Duration::from_secs(5));
    let steps = engine.pipeline().steps.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        engine.pipeline().steps.load(Ordering::SeqCst),
        steps,
        "nothing runs once both are gone"
    );
}

#[tokio::test]
async fn a_passed_deadline_fails_the_sequence_with_its_budget() {
    let engine = engine(EngineConfig::default(), 2);
    let deadline = Instant::now() + Duration::from_millis(30);
    let stream = engine.submit(&count(1, 10_000), Some(deadline)).unwrap();
    match drain(stream).await {
        Err(ItemError::DeadlineExceeded { .. }) => {}
        other => panic!("expected the deadline, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failing_step_fails_its_sequences_and_the_engine_goes_on() {
    let engine = engine(EngineConfig::default(), 1);
    let failing = engine
        .submit(
            &Count {
                prompt: 1,
                tokens: 10,
                fail_at: Some(3),
            },
            None,
        )
        .unwrap();
    match drain(failing).await {
        Err(ItemError::Pipeline(message)) => assert!(message.contains("asked to fail at 3")),
        other => panic!("expected the failure, got {other:?}"),
    }
    let after = engine.submit(&count(1, 2), None).unwrap();
    assert_eq!(drain(after).await.unwrap(), vec![1, 2]);
}

#[tokio::test]
async fn a_closed_engine_fails_the_waiting_and_refuses_new_work() {
    let config = EngineConfig {
        max_running_sequences: 1,
        ..EngineConfig::default()
    };
    let engine = engine(config, 2);
    let mut running = engine.submit(&count(1, 20), None).unwrap();
    assert!(matches!(running.next().await, Some(StreamEvent::Token(_))));
    let waiting = engine.submit(&count(1, 5), None).unwrap();
    engine.close();
    assert!(matches!(
        drain(waiting).await,
        Err(ItemError::Unavailable { .. })
    ));
    let mut rest = 1;
    while let Some(StreamEvent::Token(_)) = running.next().await {
        rest += 1;
    }
    assert_eq!(rest, 20, "the running sequence finished");
    assert!(matches!(
        engine.submit(&count(1, 1), None),
        Err(ItemError::Unavailable { .. })
    ));
}

#[test]
fn the_config_reads_its_keys_from_an_entry_and_refuses_zero_bounds() {
    let entry =
        serde_json::json!({"path": "m", "max_running_sequences": 8, "sequence_timeout_seconds": 5});
    let config = EngineConfig::from_entry(&entry).unwrap();
    assert_eq!(config.max_running_sequences, 8);
    assert_eq!(config.sequence_timeout_seconds, 5.0);
    assert_eq!(config.max_queued_sequences, 256);
    let zero = serde_json::json!({"max_batch_total_tokens": 0});
    assert!(
        EngineConfig::from_entry(&zero)
            .unwrap_err()
            .contains("at least 1")
    );
    let wrong = serde_json::json!({"max_running_sequences": "many"});
    assert!(EngineConfig::from_entry(&wrong).is_err());
}
