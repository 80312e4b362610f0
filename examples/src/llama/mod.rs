//! A causal language model served with streaming: a Llama-architecture
//! GGUF (SmolLM2-135M-Instruct, from `scripts/fetch-llm.sh`), dequantized
//! to fp32 on candle, generating through modalkit's engine with
//! iteration-level batching. `/predict_stream`, `/v1/completions` and
//! `/v1/chat/completions` stream its tokens; `/predict_sync` and async jobs
//! answer with the whole text.
//!
//! An input is a raw `prompt` or chat `messages` (rendered with the
//! folder's chat template), with `max_tokens` (default 256), `temperature`
//! (default 1; 0 is greedy), `top_p`, up to four `stop` strings and a
//! `seed`. A sequence ends at the model's end token, a stop string, or
//! `max_tokens`.
//!
//! - [`model`]: the weights and the batched forward.
//! - [`text`]: tokenizer, chat template, incremental detokenizer.
//! - [`sample`]: greedy and nucleus sampling.

pub mod model;
pub mod sample;
pub mod text;

use std::path::PathBuf;

use modalkit::generate::{
    ChatMessage, CompletionRequest, FinishReason, GenerativePipeline, Prompt, TextGenerator, Token,
};
use modalkit::prelude::*;

use model::{Llama, SequenceCache};
use sample::Sampler;
use text::{Detokenizer, TextSide};

/// Longest prompt accepted, in characters (tokenized only below this).
pub const MAX_PROMPT_CHARS: usize = 100_000;
/// `max_tokens` when a request names none.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// A request: a `prompt` or `messages`, and how to generate.
#[modalkit::input]
#[derive(Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct GenerateInput {
    /// A text to continue (or `messages`).
    #[serde(default)]
    #[garde(inner(length(chars, max = MAX_PROMPT_CHARS)))]
    pub prompt: Option<String>,
    /// A conversation for the chat template (or `prompt`).
    #[serde(default)]
    #[garde(inner(length(min = 1, max = 1024)))]
    pub messages: Option<Vec<ChatMessage>>,
    /// Most tokens to generate: 1 to 8192 (and, with the prompt, within
    /// the model's context).
    #[serde(default)]
    #[garde(inner(range(min = 1, max = 8192)))]
    pub max_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2 (default 1); 0 is greedy.
    #[serde(default)]
    #[garde(inner(range(min = 0.0, max = 2.0)))]
    pub temperature: Option<f32>,
    /// Nucleus sampling's mass, above 0 to 1 (default 1).
    #[serde(default)]
    #[garde(inner(range(min = 0.000_001, max = 1.0)))]
    pub top_p: Option<f32>,
    /// Up to four strings that end the text (left out of it).
    #[serde(default)]
    #[garde(length(max = 4))]
    pub stop: Vec<String>,
    /// The sampler's seed (default: a random one).
    #[serde(default)]
    #[garde(skip)]
    pub seed: Option<u64>,
}

/// This model's entry in `model_entries`. The engine's keys
/// (`max_running_sequences`, ...) sit beside these, so unknown keys are not
/// refused here.
#[modalkit::entry]
struct LlamaEntry {
    /// The model folder, under the repository folder.
    path: String,
    /// Longest sequence (prompt and generated tokens) served.
    #[serde(default = "default_context")]
    max_context_tokens: usize,
}

fn default_context() -> usize {
    2048
}

/// The served model.
pub struct LlamaGenerator {
    model: Llama,
    text: TextSide,
    /// Tokens that end a sequence.
    end_tokens: Vec<u32>,
    context: usize,
}

/// One running request.
pub struct Sequence {
    prompt: Vec<u32>,
    generated: Vec<u32>,
    max_tokens: usize,
    cache: SequenceCache,
    sampler: Sampler,
    detokenizer: Detokenizer,
}

impl LlamaGenerator {
    /// Loads the folder: `model.gguf`, `tokenizer.json`,
    /// `tokenizer_config.json` and, for the end tokens,
    /// `generation_config.json` if present.
    pub fn load_folder(folder: &std::path::Path, context: usize) -> Result<Self, PipelineError> {
        let model = Llama::load(&folder.join("model.gguf")).map_err(PipelineError::msg)?;
        let text = TextSide::load(folder).map_err(PipelineError::msg)?;
        let end_tokens = end_tokens(folder, &text)?;
        let context = context.min(model.shape().context);
        Ok(LlamaGenerator {
            model,
            text,
            end_tokens,
            context,
        })
    }

    /// The prompt's token ids: the chat template's rendering of `messages`,
    /// or `prompt`.
    pub fn prompt_ids(&self, input: &GenerateInput) -> Result<Vec<u32>, PipelineError> {
        let text = match (&input.prompt, &input.messages) {
            (Some(prompt), None) => prompt.clone(),
            (None, Some(messages)) => self
                .text
                .render_chat(messages)
                .map_err(PipelineError::invalid_input)?,
            _ => {
                return Err(PipelineError::invalid_input(
                    "give either prompt or messages",
                ));
            }
        };
        let ids = self
            .text
            .encode(&text)
            .map_err(PipelineError::invalid_input)?;
        if ids.is_empty() {
            return Err(PipelineError::invalid_input("the prompt is empty"));
        }
        Ok(ids)
    }

    /// The next token of each sequence from its logits row.
    fn next_tokens(
        &self,
        sequences: &mut [&mut Sequence],
        logits: candle_core::Tensor,
    ) -> Result<Vec<Token>, PipelineError> {
        let rows: Vec<Vec<f32>> = logits.to_vec2().map_err(PipelineError::msg)?;
        sequences
            .iter_mut()
            .zip(rows)
            .map(|(sequence, row)| {
                let id = sequence.sampler.pick(&row);
                sequence.generated.push(id);
                self.token(sequence, id)
            })
            .collect()
    }

    /// The token `id` as the stream carries it, and whether it ends.
    fn token(&self, sequence: &mut Sequence, id: u32) -> Result<Token, PipelineError> {
        if self.end_tokens.contains(&id) {
            return Ok(Token {
                id,
                text: sequence.detokenizer.finish(),
                finish: Some(FinishReason::Stop),
            });
        }
        let released = sequence
            .detokenizer
            .push(&self.text, id)
            .map_err(PipelineError::msg)?;
        if released.stopped {
            return Ok(Token {
                id,
                text: released.text,
                finish: Some(FinishReason::Stop),
            });
        }
        if sequence.generated.len() >= sequence.max_tokens {
            let mut text = released.text;
            text.push_str(&sequence.detokenizer.finish());
            return Ok(Token {
                id,
                text,
                finish: Some(FinishReason::Length),
            });
        }
        Ok(Token {
            id,
            text: released.text,
            finish: None,
        })
    }
}

/// The end tokens: `generation_config.json`'s `eos_token_id` (one or a
/// list), else the tokenizer's `eos_token`.
fn end_tokens(folder: &std::path::Path, text: &TextSide) -> Result<Vec<u32>, PipelineError> {
    let path = folder.join("generation_config.json");
    if let Ok(source) = std::fs::read_to_string(&path) {
        let config: serde_json::Value = serde_json::from_str(&source)
            .map_err(|e| PipelineError::msg(format!("{}: {e}", path.display())))?;
        let ids: Vec<u32> = match &config["eos_token_id"] {
            serde_json::Value::Number(n) => n.as_u64().into_iter().map(|v| v as u32).collect(),
            serde_json::Value::Array(list) => list
                .iter()
                .filter_map(|v| v.as_u64().map(|v| v as u32))
                .collect(),
            _ => Vec::new(),
        };
        if !ids.is_empty() {
            return Ok(ids);
        }
    }
    text.eos_id()
        .map(|id| vec![id])
        .ok_or_else(|| PipelineError::msg(format!("{}: no end token", folder.display())))
}

impl GenerativePipeline for LlamaGenerator {
    type Input = GenerateInput;
    type Sequence = Sequence;

    fn load(ctx: &ModelContext) -> Result<Self, PipelineError> {
        let entry: LlamaEntry = ctx.entry()?;
        let folder: PathBuf = ctx.model_path(&entry.path);
        Self::load_folder(&folder, entry.max_context_tokens)
    }

    fn start(&self, input: &GenerateInput) -> Result<Sequence, PipelineError> {
        let prompt = self.prompt_ids(input)?;
        let room = self.context.saturating_sub(prompt.len());
        if room == 0 {
            return Err(PipelineError::invalid_input(format!(
                "the prompt has {} tokens: this model takes at most {} with the tokens it generates",
                prompt.len(),
                self.context
            )));
        }
        let max_tokens = match input.max_tokens {
            Some(asked) if asked as usize > room => {
                return Err(PipelineError::invalid_input(format!(
                    "max_tokens {asked} and the prompt's {} tokens exceed this model's context of {} tokens",
                    prompt.len(),
                    self.context
                )));
            }
            Some(asked) => asked as usize,
            None => (DEFAULT_MAX_TOKENS as usize).min(room),
        };
        let sampler = Sampler::new(
            input.temperature.unwrap_or(1.0),
            input.top_p.unwrap_or(1.0),
            input.seed,
        );
        Ok(Sequence {
            cache: self.model.new_cache(prompt.len() + max_tokens),
            prompt,
            generated: Vec::new(),
            max_tokens,
            sampler,
            detokenizer: Detokenizer::new(input.stop.clone()),
        })
    }

    fn budget(sequence: &Sequence) -> usize {
        sequence.prompt.len() + sequence.max_tokens
    }

    fn prompt_tokens(sequence: &Sequence) -> usize {
        sequence.prompt.len()
    }

    fn prefill(&self, sequences: &mut [&mut Sequence]) -> Result<Vec<Token>, PipelineError> {
        let inputs: Vec<Vec<u32>> = sequences.iter().map(|s| s.prompt.clone()).collect();
        self.forward_and_pick(sequences, inputs)
    }

    fn step(&self, sequences: &mut [&mut Sequence]) -> Result<Vec<Token>, PipelineError> {
        let inputs: Vec<Vec<u32>> = sequences
            .iter()
            .map(|s| s.generated.last().copied().into_iter().collect())
            .collect();
        self.forward_and_pick(sequences, inputs)
    }

    fn warmup_inputs(_ctx: &ModelContext) -> Vec<GenerateInput> {
        vec![GenerateInput {
            prompt: Some("Warm-up:".to_owned()),
            messages: None,
            max_tokens: Some(2),
            temperature: Some(0.0),
            top_p: None,
            stop: Vec::new(),
            seed: None,
        }]
    }
}

impl LlamaGenerator {
    fn forward_and_pick(
        &self,
        sequences: &mut [&mut Sequence],
        inputs: Vec<Vec<u32>>,
    ) -> Result<Vec<Token>, PipelineError> {
        let slices: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        let logits = {
            let mut caches: Vec<&mut SequenceCache> =
                sequences.iter_mut().map(|s| &mut s.cache).collect();
            self.model
                .forward(&slices, &mut caches)
                .map_err(PipelineError::msg)?
        };
        self.next_tokens(sequences, logits)
    }
}

impl TextGenerator for LlamaGenerator {
    fn completion_input(request: CompletionRequest) -> GenerateInput {
        let (prompt, messages) = match request.prompt {
            Prompt::Text(text) => (Some(text), None),
            Prompt::Chat(messages) => (None, Some(messages)),
        };
        GenerateInput {
            prompt,
            messages,
            max_tokens: request
                .max_tokens
                .map(|m| m.min(u64::from(u32::MAX)) as u32),
            temperature: request.temperature,
            top_p: request.top_p,
            stop: request.stop,
            seed: request.seed,
        }
    }
}
