//! The BERT encoder on CPU without candle: weights packed once at load
//! ([`gemm`]), tokens of all sequences packed one after another with no
//! padding (linear layers see only real tokens; attention runs per
//! sequence), fused bias + GELU in the product's epilogue, and kernels
//! compiled for AVX-512 when the CPU has it ([`isa`]). Numerically it is
//! the same model as [`super::bert::BertEncoder`] (the tests compare both).

pub mod columns;
pub mod gemm;
pub mod isa;
pub mod ops;
pub mod precision;
pub mod words;

use std::ops::Range;

use gemm::{Activation, PackedLinear, linear};
use ops::{AttentionShape, EmbeddingTables, LayerNorm, add_residual_norm, attention, embed_tokens};
use precision::Precision;
use rayon::prelude::*;

use super::bert::BertConfig;
use super::input::{Pooling, Tokens};
use super::weights::Weights;
use words::WordTable;

/// The tensor [`WordTable`] reads from the file.
const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";

/// Rows of the feed-forward block computed at once: bounds its
/// `rows × intermediate` scratch for long batches (1024 × 1536 floats = 6 MB).
const FEED_FORWARD_ROWS: usize = 1024;

struct Layer {
    qkv: PackedLinear,
    attention_out: PackedLinear,
    attention_norm: LayerNorm,
    intermediate: PackedLinear,
    output: PackedLinear,
    output_norm: LayerNorm,
}

/// The encoder plus pooling: token ids in, one vector per input out.
pub struct CpuEncoder {
    tables: EmbeddingTables,
    layers: Vec<Layer>,
    shape: AttentionShape,
    hidden: usize,
    max_positions: usize,
    precision: Precision,
}

impl CpuEncoder {
    /// Builds the encoder from a `model.safetensors` file, at fp32.
    pub fn load(path: &std::path::Path, config: &BertConfig) -> Result<Self, String> {
        Self::load_with_precision(path, config, Precision::Fp32)
    }

    /// [`CpuEncoder::load`] with the linear layers at `precision`.
    pub fn load_with_precision(
        path: &std::path::Path,
        config: &BertConfig,
        precision: Precision,
    ) -> Result<Self, String> {
        if let Some(unsupported) = config.unsupported() {
            return Err(format!("unsupported {unsupported}"));
        }
        let weights = &mut Weights::read(path, &[WORD_EMBEDDINGS])?;
        let hidden = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(format!(
                "hidden_size {hidden} is not a multiple of {heads} heads"
            ));
        }
        let head_dim = hidden / heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let eps = config.layer_norm_eps as f32;
        let intermediate = config.intermediate_size;
        let norm = |weights: &mut Weights, prefix: &str| -> Result<LayerNorm, String> {
            Ok(LayerNorm {
                gamma: weights.values(&format!("{prefix}.weight"), &[hidden])?,
                beta: weights.values(&format!("{prefix}.bias"), &[hidden])?,
                eps,
            })
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let mut qkv_weight = Vec::with_capacity(3 * hidden * hidden);
            let mut qkv_bias = Vec::with_capacity(3 * hidden);
            for (name, factor) in [("query", scale), ("key", 1.0), ("value", 1.0)] {
                let weight = weights.values(
                    &format!("{p}.attention.self.{name}.weight"),
                    &[hidden, hidden],
                )?;
                let bias = weights.values(&format!("{p}.attention.self.{name}.bias"), &[hidden])?;
                // The attention scale is folded into the query projection.
                qkv_weight.extend(weight.iter().map(|w| w * factor));
                qkv_bias.extend(bias.iter().map(|b| b * factor));
            }
            let packed = |weights: &mut Weights, name: &str, outputs: usize, inputs: usize| {
                let weight = weights.values(&format!("{p}.{name}.weight"), &[outputs, inputs])?;
                let bias = weights.values(&format!("{p}.{name}.bias"), &[outputs])?;
                PackedLinear::with_precision(&weight, &bias, outputs, inputs, precision)
            };
            layers.push(Layer {
                qkv: PackedLinear::with_precision(
                    &qkv_weight,
                    &qkv_bias,
                    3 * hidden,
                    hidden,
                    precision,
                )?,
                attention_out: packed(weights, "attention.output.dense", hidden, hidden)?,
                attention_norm: norm(weights, &format!("{p}.attention.output.LayerNorm"))?,
                intermediate: packed(weights, "intermediate.dense", intermediate, hidden)?,
                output: packed(weights, "output.dense", hidden, intermediate)?,
                output_norm: norm(weights, &format!("{p}.output.LayerNorm"))?,
            });
        }
        let words = weights.take_in_file(WORD_EMBEDDINGS)?;
        let vocabulary = words.shape.first().copied().unwrap_or(0);
        if words.shape != [vocabulary, hidden] {
            return Err(format!("word embeddings of shape {:?}", words.shape));
        }
        let words = WordTable::open(path, words.offset, vocabulary, hidden)?;
        let max_positions = config.max_position_embeddings;
        let mut positions = weights.values(
            "embeddings.position_embeddings.weight",
            &[max_positions, hidden],
        )?;
        let token_types = weights.take("embeddings.token_type_embeddings.weight")?;
        if token_types.values.len() < hidden {
            return Err("token type embeddings are empty".into());
        }
        // Most tokens are of type 0: fold that row into the position table,
        // and keep what type 1 adds on top of it (a pair's second text).
        let (type_zero, rest) = token_types.values.split_at(hidden);
        for row in positions.chunks_exact_mut(hidden) {
            for (p, &t) in row.iter_mut().zip(type_zero) {
                *p += t;
            }
        }
        let second_type = rest
            .get(..hidden)
            .map(|type_one| type_one.iter().zip(type_zero).map(|(b, a)| b - a).collect());
        Ok(CpuEncoder {
            tables: EmbeddingTables {
                words,
                positions,
                second_type,
                norm: norm(weights, "embeddings.LayerNorm")?,
            },
            layers,
            shape: AttentionShape { heads, head_dim },
            hidden,
            max_positions,
            precision,
        })
    }

    /// The precision of the linear layers.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The kernels the linear layers run on, for logs and `/ready`: at
    /// bf16, `amx` where the tiles are granted (layers whose inputs are not
    /// a multiple of 32 take the AVX512-BF16 tiles) or `avx512-bf16`; else
    /// the fp32 level.
    pub fn kernels(&self) -> &'static str {
        let level = isa::active();
        if self.precision == Precision::Bf16 && level >= isa::Isa::Avx512Bf16 {
            return level.name();
        }
        level.min(isa::Isa::Avx512).name()
    }

    /// One pooled vector per input, in order, not normalized.
    ///
    /// A batch with enough tokens is split into one group of whole
    /// sequences per thread, and each thread runs the whole forward on its
    /// group alone: no synchronization between operations, each group's
    /// activations stay in its core's cache. Smaller inputs (one sentence)
    /// run one operation at a time, each split across the threads.
    pub fn encode(&self, sequences: &[Tokens], pooling: Pooling) -> Result<Vec<Vec<f32>>, String> {
        // Enter rayon's pool once: called from a thread outside it (the
        // batcher's worker), every parallel operation below would otherwise
        // inject a job and sleep until a pool thread finished it.
        if rayon::current_thread_index().is_none() {
            return rayon::scope(|_| self.encode(sequences, pooling));
        }
        for tokens in sequences {
            let ids = tokens.ids;
            if tokens.second_segment < ids.len() && self.tables.second_type.is_none() {
                return Err("a pair of texts, but the model has one token type".to_owned());
            }
            if ids.len() > self.max_positions {
                return Err(format!(
                    "{} tokens; the model takes at most {}",
                    ids.len(),
                    self.max_positions
                ));
            }
            if let Some(&id) = ids
                .iter()
                .find(|&&id| id as usize >= self.tables.words.rows())
            {
                return Err(format!(
                    "token id {id} outside the vocabulary of {}",
                    self.tables.words.rows()
                ));
            }
        }
        let threads = rayon::current_num_threads().max(1);
        let tokens: usize = sequences.iter().map(Tokens::len).sum();
        if tokens == 0 {
            // Nothing to encode: an empty sequence pools to the zero vector.
            return Ok(vec![vec![0f32; self.hidden]; sequences.len()]);
        }
        if threads == 1 || sequences.len() < 2 || tokens < MIN_TOKENS_PER_GROUP * 2 {
            return self.forward(sequences, pooling, Threads::Pool);
        }
        let groups = split_into_groups(sequences, threads.min(tokens / MIN_TOKENS_PER_GROUP));
        let embedded: Vec<Vec<Vec<f32>>> = groups
            .into_par_iter()
            .map(|group| self.forward(group, pooling, Threads::One))
            .collect::<Result<_, _>>()?;
        Ok(embedded.into_iter().flatten().collect())
    }

    /// The forward pass and pooling of `sequences` (already checked).
    fn forward(
        &self,
        sequences: &[Tokens],
        pooling: Pooling,
        threads: Threads,
    ) -> Result<Vec<Vec<f32>>, String> {
        let mut spans: Vec<Range<usize>> = Vec::with_capacity(sequences.len());
        let mut tokens = 0;
        for ids in sequences {
            spans.push(tokens..tokens + ids.len());
            tokens += ids.len();
        }
        let hidden = self.hidden;
        let width = self.layers.first().map_or(0, |l| l.intermediate.outputs());
        let ff_rows = FEED_FORWARD_ROWS.min(tokens);
        let mut scratch = SCRATCH.take();
        let Scratch {
            x,
            qkv,
            context,
            y,
            intermediate,
        } = &mut scratch;
        for (buffer, len) in [
            (&mut *x, tokens * hidden),
            (&mut *qkv, tokens * 3 * hidden),
            (&mut *context, tokens * hidden),
            (&mut *y, tokens * hidden),
            (&mut *intermediate, ff_rows * width),
        ] {
            buffer.clear();
            buffer.resize(len, 0f32);
        }
        embed_tokens(&self.tables, sequences, x, threads)?;
        for layer in &self.layers {
            linear(x, &layer.qkv, Activation::Identity, qkv, threads);
            attention(qkv, &spans, self.shape, context, threads);
            linear(
                context,
                &layer.attention_out,
                Activation::Identity,
                y,
                threads,
            );
            add_residual_norm(y, x, &layer.attention_norm, threads);
            std::mem::swap(x, y);
            for (x_rows, y_rows) in x
                .chunks(FEED_FORWARD_ROWS * hidden)
                .zip(y.chunks_mut(FEED_FORWARD_ROWS * hidden))
            {
                let rows = x_rows.len() / hidden;
                let inner = &mut intermediate[..rows * width];
                linear(
                    x_rows,
                    &layer.intermediate,
                    Activation::Gelu,
                    inner,
                    threads,
                );
                linear(inner, &layer.output, Activation::Identity, y_rows, threads);
            }
            add_residual_norm(y, x, &layer.output_norm, threads);
            std::mem::swap(x, y);
        }
        let embeddings = spans
            .into_iter()
            .map(|span| pooling.pool(x, span, hidden))
            .collect();
        if scratch.bytes() <= MAX_KEPT_SCRATCH_BYTES {
            SCRATCH.set(scratch);
        }
        Ok(embeddings)
    }
}

/// Fewest tokens worth a thread of their own (below, one group of
/// sequences would not fill the matrix tiles of both cores).
const MIN_TOKENS_PER_GROUP: usize = 48;

/// Cuts `sequences` (in order) into at most `count` runs of about equal
/// token counts.
fn split_into_groups<'a, 'b>(sequences: &'b [Tokens<'a>], count: usize) -> Vec<&'b [Tokens<'a>]> {
    let total: usize = sequences.iter().map(Tokens::len).sum();
    let mut groups = Vec::with_capacity(count);
    let mut start = 0;
    let mut taken = 0;
    for (index, ids) in sequences.iter().enumerate() {
        taken += ids.len();
        let wanted = total * (groups.len() + 1) / count.max(1);
        if taken >= wanted && groups.len() + 1 < count && index + 1 < sequences.len() {
            groups.push(&sequences[start..=index]);
            start = index + 1;
        }
    }
    groups.push(&sequences[start..]);
    groups
}

/// How an operation may use threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Split across rayon's pool.
    Pool,
    /// Only the calling thread (one group of sequences per thread).
    One,
}

/// Scratch kept between calls only up to this size, so one batch of long
/// texts does not pin its buffers for the life of the thread.
const MAX_KEPT_SCRATCH_BYTES: usize = 32 << 20;

/// The forward's activation buffers, reused across calls on a thread
/// (fresh multi-megabyte buffers cost page faults every call).
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    y: Vec<f32>,
    intermediate: Vec<f32>,
}

impl Scratch {
    fn bytes(&self) -> usize {
        [
            &self.x,
            &self.qkv,
            &self.context,
            &self.y,
            &self.intermediate,
        ]
        .iter()
        .map(|buffer| buffer.capacity() * 4)
        .sum()
    }
}

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

#[cfg(test)]
mod tests {
    use super::{Tokens, split_into_groups};

    #[test]
    fn groups_have_about_equal_tokens_and_keep_order() {
        let lengths = [14, 14, 14, 14, 100, 14, 14, 14];
        let owned: Vec<Vec<u32>> = lengths.iter().map(|&n| vec![1; n]).collect();
        let sequences: Vec<Tokens> = owned.iter().map(|ids| Tokens::single(ids)).collect();
        let groups = split_into_groups(&sequences, 2);
        assert_eq!(groups.len(), 2);
        let sizes: Vec<usize> = groups
            .iter()
            .map(|g| g.iter().map(|s| s.len()).sum())
            .collect();
        assert_eq!(
            sizes,
            vec![156, 42],
            "the cut falls after the long sequence"
        );
        assert_eq!(groups.concat(), sequences, "every sequence once, in order");
        let one = split_into_groups(&sequences[..1], 2);
        assert_eq!(one.len(), 1, "a single sequence is never split");
    }
}
