//! The BERT family on the project's encoder: any BERT-architecture
//! sentence-transformers folder (mean, CLS or max pooling, with or without
//! `Normalize`, prompts from `config_sentence_transformers.json`), and
//! `BertForSequenceClassification` folders: cross-encoders (one label:
//! rerankers) and classifiers (labels from `id2label`). The folder decides
//! ([`folder`]); a folder it cannot serve is refused at load, naming what
//! is unsupported.
//!
//! `/predict_sync` takes `{"text"}` (plus `prompt_name`, `normalize`,
//! `truncate`) and answers `{"embedding"}` from an embedding model,
//! `{"label", "score", "labels"}` from a classifier; a reranker takes
//! `{"query", "text"}` and answers `{"score"}` (the sigmoid of its logit).
//! TEI's routes ([`modalkit::tei`]) and OpenAI's embeddings route serve
//! the same pipeline. Each text or (query, text) pair is one batcher item.
//!
//! - [`folder`]: what a model folder is and serves.
//! - [`text`]: prompts, pairs, truncation, tokens for `/tokenize`.
//! - [`engine`]: the native CPU encoder or candle's.

pub mod engine;
pub mod folder;
pub mod text;

use std::path::{Path, PathBuf};

use candle_core::Device;
use modalkit::candle::encoder::cpu::precision::Precision;
use modalkit::candle::encoder::{ClassifierHead, Pooling, Tokens, Weights, normalize};
use modalkit::candle::resolve;
use modalkit::device::DeviceRequest;
use modalkit::prelude::*;
use modalkit::tei::{ModelKind, TeiModel, TextOptions, Token};

use engine::Encoder;
pub use engine::Engine;
pub use folder::{ModelFolder, Task};
use text::{Encoded, TextTokenizer};

/// Longest accepted text (and query), in characters: longer inputs are
/// refused with 422 rather than tokenized only to be truncated.
pub const MAX_TEXT_CHARS: usize = 20_000;

/// A request.
#[modalkit::input]
#[derive(Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct BertInput {
    /// The text to embed or classify, or the passage a reranker scores
    /// against `query`: at most 20,000 characters.
    #[garde(length(chars, max = MAX_TEXT_CHARS))]
    pub text: String,
    /// A reranker's query (required there, refused elsewhere), or the
    /// first text of a classifier's pair.
    #[serde(default)]
    #[garde(length(chars, max = MAX_TEXT_CHARS))]
    pub query: Option<String>,
    /// Embedding models: the prompt (from the folder's
    /// `config_sentence_transformers.json`) to prepend; default: the
    /// folder's `default_prompt_name`, if any.
    #[serde(default)]
    #[garde(length(chars, max = 200))]
    pub prompt_name: Option<String>,
    /// Embedding models: scale the vector to unit length; default: whether
    /// the folder has a `Normalize` module.
    #[serde(default)]
    #[garde(skip)]
    pub normalize: Option<bool>,
    /// Cut an input longer than the model's `max_seq_length` tokens
    /// (default true); false refuses it with 422.
    #[serde(default)]
    #[garde(skip)]
    pub truncate: Option<bool>,
}

impl BertInput {
    /// A plain text with the model's defaults.
    pub fn text(text: impl Into<String>) -> Self {
        BertInput {
            text: text.into(),
            query: None,
            prompt_name: None,
            normalize: None,
            truncate: None,
        }
    }
}

/// One label's probability.
#[modalkit::output]
#[derive(Debug, Clone)]
pub struct LabelScore {
    /// The label (`id2label`).
    pub label: String,
    /// Its probability (softmax over the labels).
    pub score: f32,
}

/// A result; which fields it has depends on the model's kind.
#[modalkit::output]
#[derive(Debug, Clone, Default)]
pub struct BertOutput {
    /// Embedding models: the sentence vector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    /// Classifiers: the most likely label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Rerankers: the pair's relevance (the sigmoid of the logit, 0 to 1);
    /// classifiers: the probability of `label`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// Classifiers: every label's probability, most likely first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<LabelScore>>,
    /// The model's logits (rerankers, classifiers), for raw scores; not sent.
    #[serde(skip)]
    #[schemars(skip)]
    pub logits: Vec<f32>,
    /// Tokens the model read (for `usage`); not sent.
    #[serde(skip)]
    #[schemars(skip)]
    pub tokens: usize,
}

/// This model's entry in `model_entries`.
#[modalkit::entry]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
struct BertEntry {
    /// The model folder, relative to `local_model_repository_folder`.
    path: String,
    /// Overrides the folder's `max_seq_length`.
    #[serde(default)]
    max_seq_length: Option<usize>,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (also read from `common`).
    #[serde(default)]
    #[allow(dead_code)]
    device: Option<String>,
    /// The linear layers' precision on the native CPU encoder: `fp32`
    /// (default) or `bf16`.
    #[serde(default)]
    precision: Option<String>,
}

/// How [`Bert::load_folder`] loads a model folder.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Overrides the folder's `max_seq_length`.
    pub max_seq_length: Option<usize>,
    /// The native encoder's precision (candle's encoder takes fp32 only).
    pub precision: Precision,
}

/// The pipeline.
pub struct Bert {
    model_id: String,
    /// What it serves, as TEI's routes ask (derived from `folder` at load).
    kind: ModelKind,
    folder: ModelFolder,
    tokenizer: TextTokenizer,
    encoder: Encoder,
    head: Option<ClassifierHead>,
    precision: Precision,
}

/// What preprocess hands to predict: each input's tokens, or why it is refused.
pub type Prepared = Vec<Result<Encoded, PipelineError>>;

impl Bert {
    /// Loads the model folder onto `device`: the native encoder on a CPU
    /// with AVX2 and FMA or AVX-512 (as capped by `MODALKIT_CPU_ISA`),
    /// candle's elsewhere, except that bf16 always takes the native encoder.
    pub fn load_folder(
        folder: &Path,
        device: Device,
        options: LoadOptions,
    ) -> Result<Self, PipelineError> {
        let engine = Engine::for_device(&device, options.precision)?;
        Self::load_folder_with(folder, device, options, engine)
    }

    /// [`Bert::load_folder`] with the engine chosen by the caller
    /// ([`Engine::Native`] needs `device` to be the CPU).
    pub fn load_folder_with(
        folder: &Path,
        device: Device,
        options: LoadOptions,
        engine: Engine,
    ) -> Result<Self, PipelineError> {
        let model = ModelFolder::read(folder, options.max_seq_length)?;
        let tokenizer = TextTokenizer::load(folder, model.max_seq_length)?;
        let weights_path = folder.join("model.safetensors");
        let head = match &model.task {
            Task::Embed(_) => None,
            Task::Rerank | Task::Classify { .. } => {
                let labels = match &model.task {
                    Task::Classify { labels } => labels.len(),
                    _ => 1,
                };
                let mut weights =
                    Weights::read(&weights_path, &["embeddings.word_embeddings.weight"])
                        .map_err(PipelineError::msg)?;
                Some(
                    ClassifierHead::load(&mut weights, model.config.hidden_size, labels).map_err(
                        |err| PipelineError::msg(format!("{}: {err}", weights_path.display())),
                    )?,
                )
            }
        };
        let encoder = Encoder::load(
            &weights_path,
            &model.config,
            device,
            options.precision,
            engine,
        )?;
        let model_id = folder
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Bert {
            model_id,
            kind: model_kind(&model),
            folder: model,
            tokenizer,
            encoder,
            head,
            precision: options.precision,
        })
    }

    /// What this model serves.
    pub fn task(&self) -> &Task {
        &self.folder.task
    }

    /// Longest input in tokens.
    pub fn max_seq_length(&self) -> usize {
        self.folder.max_seq_length
    }

    /// Tokenizes plain texts with the model's defaults (the default prompt,
    /// truncation).
    pub fn token_ids(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, PipelineError> {
        texts
            .iter()
            .map(|text| {
                self.prepare(&BertInput::text(*text))
                    .map(|encoded| encoded.ids)
            })
            .collect()
    }

    /// The vectors of tokenized single texts: pooled, and normalized when
    /// the folder has a `Normalize` module (what `/predict_sync` answers by
    /// default); a classifier's pooled `[CLS]` vectors.
    pub fn embed_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, PipelineError> {
        let tokens: Vec<Tokens> = ids.iter().map(|ids| Tokens::single(ids)).collect();
        let mut vectors = self.encoder.encode(&tokens, self.pooling())?;
        if let Task::Embed(settings) = &self.folder.task
            && settings.normalize
        {
            vectors.iter_mut().for_each(|v| normalize(v));
        }
        Ok(vectors)
    }

    fn pooling(&self) -> Pooling {
        match &self.folder.task {
            Task::Embed(settings) => settings.pooling,
            _ => Pooling::Cls,
        }
    }

    /// The prompt a request gets.
    fn prompt(&self, name: Option<&str>) -> Result<&str, PipelineError> {
        let Task::Embed(settings) = &self.folder.task else {
            return match name {
                None => Ok(""),
                Some(_) => Err(PipelineError::invalid_input(format!(
                    "prompt_name is for embedding models; this model is a {}",
                    self.folder.task.name()
                ))),
            };
        };
        match name.or(settings.default_prompt_name.as_deref()) {
            None => Ok(""),
            Some(name) => settings
                .prompts
                .get(name)
                .map(String::as_str)
                .ok_or_else(|| {
                    let known: Vec<&str> = settings.prompts.keys().map(String::as_str).collect();
                    PipelineError::invalid_input(if known.is_empty() {
                        format!("prompt_name '{name}': this model has no prompts")
                    } else {
                        format!(
                            "prompt_name '{name}' is not one of this model's prompts: {}",
                            known.join(", ")
                        )
                    })
                }),
        }
    }

    /// One input's tokens, or why this model refuses it.
    fn prepare(&self, input: &BertInput) -> Result<Encoded, PipelineError> {
        let truncate = input.truncate.unwrap_or(true);
        let embeds = matches!(self.folder.task, Task::Embed(_));
        if input.normalize.is_some() && !embeds {
            return Err(PipelineError::invalid_input(format!(
                "normalize is for embedding models; this model is a {}",
                self.folder.task.name()
            )));
        }
        let prompt = self.prompt(input.prompt_name.as_deref())?;
        match (&self.folder.task, &input.query) {
            (Task::Rerank, None) => Err(PipelineError::invalid_input(
                "query is required: this model is a reranker (it scores a query with a text)",
            )),
            (Task::Embed(_), Some(_)) => Err(PipelineError::invalid_input(
                "query is for rerankers and classifiers of pairs; this model embeds one text",
            )),
            (_, Some(query)) => self.tokenizer.pair(query, &input.text, truncate),
            (_, None) => self.tokenizer.single(prompt, &input.text, truncate),
        }
    }

    fn output(&self, input: &BertInput, vector: Vec<f32>, tokens: usize) -> BertOutput {
        match &self.folder.task {
            Task::Embed(settings) => {
                let mut embedding = vector;
                if input.normalize.unwrap_or(settings.normalize) {
                    normalize(&mut embedding);
                }
                BertOutput {
                    embedding: Some(embedding),
                    tokens,
                    ..BertOutput::default()
                }
            }
            Task::Rerank => {
                let logit = vector.first().copied().unwrap_or(f32::NAN);
                BertOutput {
                    score: Some(1.0 / (1.0 + (-logit).exp())),
                    logits: vector,
                    tokens,
                    ..BertOutput::default()
                }
            }
            Task::Classify { labels } => {
                let max = vector.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = vector.iter().map(|l| (l - max).exp()).collect();
                let sum: f32 = exps.iter().sum();
                let mut scored: Vec<LabelScore> = exps
                    .iter()
                    .zip(labels)
                    .map(|(e, label)| LabelScore {
                        label: label.clone(),
                        score: e / sum,
                    })
                    .collect();
                scored.sort_by(|a, b| b.score.total_cmp(&a.score));
                BertOutput {
                    label: scored.first().map(|s| s.label.clone()),
                    score: scored.first().map(|s| s.score),
                    labels: Some(scored),
                    logits: vector,
                    tokens,
                    ..BertOutput::default()
                }
            }
        }
    }
}

impl InferencePipeline for Bert {
    type Input = BertInput;
    type Output = BertOutput;
    type Preprocessed = Prepared;
    /// Each input's pooled vector (embedding models) or logits, and its
    /// token count; or why it was refused.
    type Predicted = Vec<Result<(Vec<f32>, usize), PipelineError>>;

    /// Its tokens for `batch_config.max_batch_tokens`, estimated from its
    /// length (about four bytes a WordPiece token in English text, plus
    /// the special tokens) without running the tokenizer twice.
    fn cost(input: &BertInput) -> usize {
        let query = input.query.as_ref().map_or(0, String::len);
        ((input.text.len() + query) / 4 + 3).min(512)
    }

    fn load(ctx: &ModelContext) -> Result<Self, PipelineError> {
        let entry: BertEntry = ctx.entry()?;
        let device = resolve(DeviceRequest::from_context(ctx)?)?;
        let folder: PathBuf = ctx.model_path(&entry.path);
        let precision = match entry.precision.as_deref() {
            Some(name) => Precision::parse(name).map_err(PipelineError::msg)?,
            None => Precision::Fp32,
        };
        let options = LoadOptions {
            max_seq_length: entry.max_seq_length,
            precision,
        };
        Self::load_folder(&folder, device, options)
    }

    /// One full batch of a typical sentence (or pair) before `/ready`: the
    /// first batch pays for paging in the weights and growing the buffers.
    fn warmup_inputs(ctx: &ModelContext, max_batch_size: usize) -> Vec<BertInput> {
        let pairs = ctx
            .entry::<BertEntry>()
            .ok()
            .and_then(|entry| ModelFolder::read(&ctx.model_path(&entry.path), None).ok())
            .is_some_and(|folder| folder.task == Task::Rerank);
        (0..max_batch_size)
            .map(|i| BertInput {
                query: pairs.then(|| "what is the weather like today".to_owned()),
                ..BertInput::text(format!(
                    "A short warm-up sentence, number {i}, about the weather today."
                ))
            })
            .collect()
    }

    fn preprocess(&self, inputs: &[BertInput]) -> Result<Prepared, PipelineError> {
        Ok(inputs.iter().map(|input| self.prepare(input)).collect())
    }

    fn predict(
        &self,
        _inputs: &[BertInput],
        prepared: Prepared,
    ) -> Result<Self::Predicted, PipelineError> {
        let tokens: Vec<Tokens> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .map(|e| Tokens::pair(&e.ids, e.second_segment))
            .collect();
        let mut vectors = self.encoder.encode(&tokens, self.pooling())?.into_iter();
        Ok(prepared
            .into_iter()
            .map(|p| {
                let encoded = p?;
                let vector = vectors.next().unwrap_or_default();
                let vector = match &self.head {
                    Some(head) => head.logits(&vector),
                    None => vector,
                };
                Ok((vector, encoded.ids.len()))
            })
            .collect())
    }

    fn postprocess(
        &self,
        inputs: &[BertInput],
        predicted: Self::Predicted,
    ) -> Vec<ItemResult<BertOutput>> {
        inputs
            .iter()
            .zip(predicted)
            .map(|(input, result)| {
                result.map(|(vector, tokens)| self.output(input, vector, tokens))
            })
            .collect()
    }

    fn device(&self) -> String {
        self.encoder.describe()
    }
}

/// What `folder` serves, in TEI's terms.
fn model_kind(folder: &ModelFolder) -> ModelKind {
    match &folder.task {
        Task::Embed(settings) => ModelKind::Embedding {
            pooling: settings.pooling.name().to_owned(),
        },
        Task::Rerank => ModelKind::Reranker {
            label: folder
                .config
                .id2label
                .get("0")
                .cloned()
                .unwrap_or_else(|| "LABEL_0".to_owned()),
        },
        Task::Classify { labels } => ModelKind::Classifier {
            labels: labels.clone(),
        },
    }
}

impl TeiModel for Bert {
    fn kind(&self) -> &ModelKind {
        &self.kind
    }

    fn max_input_length(&self) -> usize {
        self.folder.max_seq_length
    }

    fn model_id(&self) -> String {
        self.model_id.clone()
    }

    fn model_dtype(&self) -> String {
        match self.precision {
            Precision::Fp32 => "float32".to_owned(),
            Precision::Bf16 => "bfloat16".to_owned(),
        }
    }

    fn tokenize(
        &self,
        text: &str,
        add_special_tokens: bool,
        prompt_name: Option<&str>,
    ) -> Result<Vec<Token>, String> {
        let prompt = self.prompt(prompt_name).map_err(|err| err.to_string())?;
        let text = format!("{prompt}{text}");
        self.tokenizer
            .spans(&text, add_special_tokens)
            .map_err(|err| err.to_string())
    }

    fn text_input(text: String, options: TextOptions) -> BertInput {
        BertInput {
            normalize: options.normalize,
            truncate: options.truncate,
            prompt_name: options.prompt_name,
            ..BertInput::text(text)
        }
    }

    fn pair_input(first: String, second: String, truncate: Option<bool>) -> BertInput {
        BertInput {
            query: Some(first),
            truncate,
            ..BertInput::text(second)
        }
    }

    fn embedding(output: &BertOutput) -> Option<&[f32]> {
        output.embedding.as_deref()
    }

    fn logits(output: &BertOutput) -> &[f32] {
        &output.logits
    }

    fn token_count(output: &BertOutput) -> usize {
        output.tokens
    }
}

/// The OpenAI-compatible routes (`/v1/embeddings`, `/v1/models`).
impl modalkit::openai::EmbeddingModel for Bert {
    fn input_from_text(text: String) -> BertInput {
        BertInput::text(text)
    }

    fn embedding(output: &BertOutput) -> &[f32] {
        output.embedding.as_deref().unwrap_or_default()
    }

    fn token_count(output: &BertOutput) -> usize {
        output.tokens
    }
}
