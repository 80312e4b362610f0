//! Generation: the contract of a model that produces its output a token at
//! a time, and the engine that runs such models with iteration-level
//! ("continuous") batching.
//!
//! A [`GenerativePipeline`] keeps one [`Sequence`](GenerativePipeline::Sequence)
//! per request (its tokens, its KV cache). The [`Engine`] holds the running
//! sequences and calls [`step`](GenerativePipeline::step) for all of them at
//! once, one token each; between steps it retires the finished, the
//! cancelled (a client gone) and the expired, and admits waiting sequences
//! through [`prefill`](GenerativePipeline::prefill) while a token budget
//! allows. A short generation is answered as soon as it ends, never held
//! back by a longer one beside it. [`WholeGeneration`] serves the same
//! pipeline through the batcher's routes (`/predict_sync`, batch, async),
//! answering with the whole text.

mod engine;
#[cfg(test)]
mod tests;
mod whole;

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::ModelContext;
use crate::pipeline::PipelineError;

pub use engine::{Engine, EngineConfig, StreamEvent, TokenStream};
pub use whole::{Generated, WholeGeneration};

/// One token a step produced for one sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Token {
    /// Its id in the model's vocabulary.
    pub id: u32,
    /// The text it adds to the sequence's output (may be empty: a piece of
    /// a multi-byte character waits for the rest, a stop token adds none).
    pub text: String,
    /// Set on a sequence's last token: why it ended.
    pub finish: Option<FinishReason>,
}

/// Why a sequence ended, with OpenAI's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model's end token, or a stop string.
    Stop,
    /// The most tokens the request allowed.
    Length,
}

impl FinishReason {
    /// `stop` or `length`.
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// A model served by the generation [`Engine`]: it turns a request into a
/// sequence, reads the prompts of new sequences and produces one token per
/// running sequence a step.
///
/// `prefill` and `step` take every sequence of the step together, so the
/// model can batch them (one matrix product per layer for all of them);
/// each sequence keeps its own cache and position. Both are called on the
/// engine's thread and never concurrently. A whole-call error fails the
/// sequences of that call; a [fatal](PipelineError::fatal) one stops the
/// engine.
pub trait GenerativePipeline: Send + Sync + Sized + 'static {
    /// One request's message: deserialized from JSON, validated with garde.
    type Input: DeserializeOwned + garde::Validate<Context: Default> + JsonSchema + Send + 'static;
    /// One running request: its tokens so far, its cache, its limits.
    type Sequence: Send + 'static;

    /// Loads the model (weights, tokenizer, template).
    fn load(ctx: &ModelContext) -> Result<Self, PipelineError>;

    /// Checks an input and makes its sequence: tokenizes the prompt and
    /// refuses what cannot run (a prompt over the context, a `max_tokens`
    /// out of range) with [`PipelineError::invalid_input`]. Called on the
    /// request's task before anything is sent: keep it cheap.
    fn start(&self, input: &Self::Input) -> Result<Self::Sequence, PipelineError>;

    /// The most tokens `sequence` will hold (its prompt plus the most it may
    /// generate): what it counts against the engine's token budget.
    fn budget(sequence: &Self::Sequence) -> usize;

    /// The tokens of `sequence`'s prompt (what OpenAI's `usage` reports).
    fn prompt_tokens(sequence: &Self::Sequence) -> usize;

    /// Reads the prompts of newly admitted sequences and returns each one's
    /// first generated token, in order.
    fn prefill(&self, sequences: &mut [&mut Self::Sequence]) -> Result<Vec<Token>, PipelineError>;

    /// Generates the next token of each running sequence, in order.
    fn step(&self, sequences: &mut [&mut Self::Sequence]) -> Result<Vec<Token>, PipelineError>;

    /// Inputs generated once at start-up, before `/ready` turns 200.
    fn warmup_inputs(ctx: &ModelContext) -> Vec<Self::Input> {
        let _ = ctx;
        Vec::new()
    }

    /// The device this model computes on (`cpu`, `cuda:0`), for `/ready`.
    fn device(&self) -> String {
        "cpu".to_owned()
    }
}
