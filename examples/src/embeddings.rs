//! Sentence embeddings with sentence-transformers/all-MiniLM-L6-v2 on candle.
//!
//! Loads `config.json`, `tokenizer.json`, `model.safetensors`,
//! `sentence_bert_config.json` and `1_Pooling/config.json` from the model's
//! folder (`local_model_repository_folder` + the entry's `path`); truncates
//! at `max_seq_length` (256); mean-pools over the attention mask and
//! L2-normalizes, as sentence-transformers does.
//!
//! On a CPU with AVX2 + FMA or AVX-512 the encoder is the project's own
//! ([`modalkit::candle::encoder::cpu`]: packed
//! weights, no padding, kernels per ISA; `/ready` names the kernels and
//! the precision in use, e.g. `cpu (avx2, fp32)`; the entry's
//! `precision: bf16` runs the linear layers in bf16 on AMX or AVX512-BF16); elsewhere (CUDA, or a CPU without AVX2) it is [`BertEncoder`] on candle's ops, fed batches sorted by length and cut into
//! groups padded only to their own longest item.
//!
//! Input `{"text": "..."}` (at most 20,000 characters; empty is allowed and
//! embeds like sentence-transformers' `""`), output `{"embedding": [384 floats]}`.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use modalkit::candle::encoder::cpu::precision::Precision;
use modalkit::candle::encoder::{
    BertConfig, BertEncoder, CpuEncoder, Weights, cpu, mean_pool_normalized,
};
use modalkit::candle::{describe, resolve};
use modalkit::device::DeviceRequest;
use modalkit::prelude::*;
use tokenizers::{Tokenizer, TruncationParams};

/// Longest accepted text, in characters (longer inputs are refused with 422
/// rather than tokenized only to be truncated at 256 tokens).
pub const MAX_TEXT_CHARS: usize = 20_000;

/// A request.
#[modalkit::input]
#[derive(Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingInput {
    /// The text to embed: at most 20,000 characters; truncated at the
    /// model's `max_seq_length` tokens.
    #[garde(length(chars, max = MAX_TEXT_CHARS))]
    pub text: String,
}

/// A result.
#[modalkit::output]
#[derive(Debug, Clone)]
pub struct EmbeddingOutput {
    /// The L2-normalized sentence embedding (384 floats for MiniLM-L6).
    pub embedding: Vec<f32>,
    /// Tokens the model read (for the OpenAI route's `usage`); not sent.
    #[serde(skip)]
    #[schemars(skip)]
    pub tokens: usize,
}

/// This model's entry in `model_entries`.
#[modalkit::entry]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
struct EmbeddingsEntry {
    /// The model folder, relative to `local_model_repository_folder`.
    path: String,
    /// Overrides `sentence_bert_config.json`'s `max_seq_length`.
    #[serde(default)]
    max_seq_length: Option<usize>,
    /// `cpu`, `cuda`, `cuda:N` or `auto` (also read from `common`).
    #[serde(default)]
    #[allow(dead_code)]
    device: Option<String>,
    /// The linear layers' precision on the native CPU encoder: `fp32`
    /// (default) or `bf16` (bf16 products summed in fp32; on AVX512-BF16
    /// where the CPU has it).
    #[serde(default)]
    precision: Option<String>,
}

/// How [`Embeddings::load_folder`] loads a model folder.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Overrides `sentence_bert_config.json`'s `max_seq_length`.
    pub max_seq_length: Option<usize>,
    /// The native encoder's precision (candle's encoder takes fp32 only).
    pub precision: Precision,
}

#[modalkit::entry]
struct SentenceBertConfig {
    max_seq_length: usize,
}

#[modalkit::entry]
struct PoolingConfig {
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
}

/// Which implementation of the encoder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// This project's CPU encoder (`modalkit::candle::encoder::cpu`); CPU only.
    Native,
    /// The encoder on candle's ops (`modalkit::candle::encoder::bert`); any device.
    Candle,
}

enum Encoder {
    Native(CpuEncoder),
    Candle {
        encoder: Box<BertEncoder>,
        device: Device,
    },
}

/// The pipeline.
pub struct Embeddings {
    tokenizer: Tokenizer,
    encoder: Encoder,
}

fn read_json<T: modalkit::serde::de::DeserializeOwned>(path: &Path) -> Result<T, PipelineError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| PipelineError::msg(format!("{}: {err}", path.display())))?;
    modalkit::serde_json::from_str(&text)
        .map_err(|err| PipelineError::msg(format!("{}: {err}", path.display())))
}

impl Embeddings {
    /// Loads the model folder onto `device`, truncating at
    /// `options.max_seq_length` (default: the folder's
    /// `sentence_bert_config.json`): the native encoder on a CPU with AVX2
    /// and FMA or AVX-512 (as capped by `MODALKIT_CPU_ISA`), candle's
    /// elsewhere (the native encoder's portable kernels are for tests, not
    /// speed), except that bf16 always takes the native encoder.
    pub fn load_folder(
        folder: &Path,
        device: Device,
        options: LoadOptions,
    ) -> Result<Self, PipelineError> {
        cpu::isa::cap_from_env().map_err(PipelineError::msg)?;
        let engine =
            if device.is_cpu() && (cpu::isa::avx2() || options.precision != Precision::Fp32) {
                Engine::Native
            } else {
                Engine::Candle
            };
        Self::load_folder_with(folder, device, options, engine)
    }

    /// [`Embeddings::load_folder`] with the engine chosen by the caller
    /// ([`Engine::Native`] needs `device` to be the CPU).
    pub fn load_folder_with(
        folder: &Path,
        device: Device,
        options: LoadOptions,
        engine: Engine,
    ) -> Result<Self, PipelineError> {
        let LoadOptions {
            max_seq_length,
            precision,
        } = options;
        if !folder.join("model.safetensors").is_file() {
            return Err(PipelineError::msg(format!(
                "no model.safetensors in {} (run scripts/fetch-model.sh)",
                folder.display()
            )));
        }
        let config: BertConfig = read_json(&folder.join("config.json"))?;
        let sentence: SentenceBertConfig = read_json(&folder.join("sentence_bert_config.json"))?;
        let pooling: PoolingConfig = read_json(&folder.join("1_Pooling/config.json"))?;
        if !pooling.pooling_mode_mean_tokens
            || pooling.pooling_mode_cls_token
            || pooling.pooling_mode_max_tokens
        {
            return Err(PipelineError::msg(
                "only mean pooling is supported (1_Pooling/config.json)",
            ));
        }
        let max_len = max_seq_length
            .unwrap_or(sentence.max_seq_length)
            .min(config.max_position_embeddings);
        let mut tokenizer = Tokenizer::from_file(folder.join("tokenizer.json"))
            .map_err(|err| PipelineError::msg(format!("tokenizer.json: {err}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|err| PipelineError::msg(format!("tokenizer truncation: {err}")))?;
        tokenizer.with_padding(None);
        let weights_path = folder.join("model.safetensors");
        let encoder = match engine {
            Engine::Native if !device.is_cpu() => {
                return Err(PipelineError::msg(
                    "the native encoder runs on the CPU only",
                ));
            }
            Engine::Native => {
                let encoder = CpuEncoder::load_with_precision(&weights_path, &config, precision)
                    .map_err(PipelineError::msg)?;
                tracing::info!(
                    kernels = encoder.kernels(),
                    precision = precision.name(),
                    detected = cpu::isa::detected().name(),
                    "native CPU encoder"
                );
                Encoder::Native(encoder)
            }
            Engine::Candle if precision != Precision::Fp32 => {
                return Err(PipelineError::msg(format!(
                    "precision {precision} needs the native CPU encoder (device cpu); candle's encoder on {} computes in fp32",
                    describe(&device)
                )));
            }
            Engine::Candle => {
                let mut weights = Weights::read(&weights_path, &[]).map_err(PipelineError::msg)?;
                Encoder::Candle {
                    encoder: Box::new(BertEncoder::load(&mut weights, config, &device)?),
                    device,
                }
            }
        };
        Ok(Embeddings { tokenizer, encoder })
    }

    /// Embeds tokenized inputs, in order.
    pub fn embed_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, PipelineError> {
        let (encoder, device) = match &self.encoder {
            Encoder::Native(encoder) => {
                let sequences: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
                return encoder.embed(&sequences).map_err(PipelineError::msg);
            }
            Encoder::Candle { encoder, device } => (encoder, device),
        };
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut embeddings = vec![Vec::new(); ids.len()];
        for group in length_groups(&order, ids) {
            let vectors = embed_group(encoder, device, group.iter().map(|&i| ids[i].as_slice()))?;
            for (&index, vector) in group.iter().zip(vectors) {
                embeddings[index] = vector;
            }
        }
        Ok(embeddings)
    }

    /// Tokenizes texts (truncated at `max_seq_length`).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, PipelineError> {
        texts
            .iter()
            .map(|text| {
                self.tokenizer
                    .encode(*text, true)
                    .map(|encoding| encoding.get_ids().to_vec())
                    .map_err(|err| PipelineError::msg(format!("tokenization failed: {err}")))
            })
            .collect()
    }
}

/// Embeds one group of similar-length items on the candle encoder.
fn embed_group<'a>(
    encoder: &BertEncoder,
    device: &Device,
    items: impl ExactSizeIterator<Item = &'a [u32]> + Clone,
) -> Result<Vec<Vec<f32>>, PipelineError> {
    let batch = items.len();
    let len = items.clone().map(<[u32]>::len).max().unwrap_or(0).max(1);
    let mut flat_ids = Vec::with_capacity(batch * len);
    let mut flat_mask = Vec::with_capacity(batch * len);
    for item in items {
        flat_ids.extend_from_slice(item);
        flat_ids.extend(std::iter::repeat_n(0u32, len - item.len()));
        flat_mask.extend(std::iter::repeat_n(1f32, item.len()));
        flat_mask.extend(std::iter::repeat_n(0f32, len - item.len()));
    }
    let ids = Tensor::from_vec(flat_ids, (batch, len), device)?;
    let mask = Tensor::from_vec(flat_mask, (batch, len), device)?;
    let hidden = encoder.forward(&ids, &mask)?;
    Ok(mean_pool_normalized(&hidden, &mask)?.to_vec2::<f32>()?)
}

/// Cuts items sorted by length into groups whose padding stays small:
/// a group closes when adding the next item would make more than a quarter
/// of its padded tokens padding.
fn length_groups<'a>(sorted: &'a [usize], ids: &[Vec<u32>]) -> Vec<&'a [usize]> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut real_tokens = 0usize;
    for (position, &index) in sorted.iter().enumerate() {
        let len = ids[index].len().max(1);
        let count = position - start + 1;
        let padded = count * len;
        if count > 1 && (padded - (real_tokens + len)) * 4 > padded {
            groups.push(&sorted[start..position]);
            start = position;
            real_tokens = 0;
        }
        real_tokens += len;
    }
    if start < sorted.len() {
        groups.push(&sorted[start..]);
    }
    groups
}

impl InferencePipeline for Embeddings {
    type Input = EmbeddingInput;
    type Output = EmbeddingOutput;
    type Preprocessed = Vec<Vec<u32>>;
    /// Each text's vector and token count.
    type Predicted = Vec<(Vec<f32>, usize)>;

    /// Its tokens for `batch_config.max_batch_tokens`, estimated from its
    /// length (about four bytes a WordPiece token in English text, plus
    /// `[CLS]` and `[SEP]`) without running the tokenizer twice.
    fn cost(input: &EmbeddingInput) -> usize {
        (input.text.len() / 4 + 2).min(512)
    }

    fn load(ctx: &ModelContext) -> Result<Self, PipelineError> {
        let entry: EmbeddingsEntry = ctx.entry()?;
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

    /// One full batch of a typical sentence before `/ready`: the first
    /// batch pays for paging in the weights and growing the buffers.
    fn warmup_inputs(_ctx: &ModelContext, max_batch_size: usize) -> Vec<EmbeddingInput> {
        (0..max_batch_size)
            .map(|i| EmbeddingInput {
                text: format!("A short warm-up sentence, number {i}, about the weather today."),
            })
            .collect()
    }

    fn preprocess(&self, inputs: &[EmbeddingInput]) -> Result<Vec<Vec<u32>>, PipelineError> {
        let texts: Vec<&str> = inputs.iter().map(|i| i.text.as_str()).collect();
        self.tokenize(&texts)
    }

    fn predict(
        &self,
        _inputs: &[EmbeddingInput],
        ids: Vec<Vec<u32>>,
    ) -> Result<Vec<(Vec<f32>, usize)>, PipelineError> {
        let counts: Vec<usize> = ids.iter().map(Vec::len).collect();
        Ok(self.embed_ids(&ids)?.into_iter().zip(counts).collect())
    }

    fn postprocess(
        &self,
        _inputs: &[EmbeddingInput],
        embeddings: Vec<(Vec<f32>, usize)>,
    ) -> Vec<ItemResult<EmbeddingOutput>> {
        embeddings
            .into_iter()
            .map(|(embedding, tokens)| Ok(EmbeddingOutput { embedding, tokens }))
            .collect()
    }

    fn device(&self) -> String {
        match &self.encoder {
            Encoder::Native(encoder) => format!(
                "{} ({}, {})",
                describe(&Device::Cpu),
                encoder.kernels(),
                encoder.precision()
            ),
            Encoder::Candle { device, .. } => describe(device),
        }
    }
}

/// The OpenAI-compatible routes (`/v1/embeddings`, `/v1/models`).
impl modalkit::openai::EmbeddingModel for Embeddings {
    fn input_from_text(text: String) -> EmbeddingInput {
        EmbeddingInput { text }
    }

    fn embedding(output: &EmbeddingOutput) -> &[f32] {
        &output.embedding
    }

    fn token_count(output: &EmbeddingOutput) -> usize {
        output.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::length_groups;

    #[test]
    fn groups_keep_padding_under_a_quarter() {
        let ids: Vec<Vec<u32>> = [5, 5, 6, 6, 20, 21, 22, 60]
            .iter()
            .map(|&n| vec![1; n])
            .collect();
        let order: Vec<usize> = (0..ids.len()).collect();
        let groups = length_groups(&order, &ids);
        assert_eq!(groups, vec![&[0, 1, 2, 3][..], &[4, 5, 6][..], &[7][..]]);
        let same: Vec<Vec<u32>> = vec![vec![1; 12]; 32];
        let order: Vec<usize> = (0..32).collect();
        assert_eq!(
            length_groups(&order, &same).len(),
            1,
            "equal lengths stay one batch"
        );
    }
}
