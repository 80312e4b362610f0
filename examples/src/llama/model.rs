//! A Llama-architecture causal language model on candle (CPU, fp32), read
//! from a GGUF file and dequantized once at load, with one KV cache per
//! sequence. A forward takes the new tokens of many sequences at once
//! (prompts being prefilled, single tokens being decoded, at their own
//! positions): the linear layers run once over all their rows, attention
//! runs per sequence against its own cache.
//!
//! The GGUF stores the query and key weights permuted for interleaved
//! rotary embeddings (llama.cpp's layout); the model applies them that way,
//! which gives the same attention scores as Hugging Face's rotate-half on
//! the unpermuted weights.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{D, DType, Device, IndexOp, Tensor};
use candle_nn::kv_cache::KvCache;

/// The model's shape, from the GGUF's `llama.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaShape {
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// The longest context the model was trained for.
    pub context: usize,
    /// RMS norm epsilon.
    pub eps: f32,
    /// Rotary base.
    pub rope_base: f32,
}

/// One block's weights (linear weights as `outputs × inputs`).
struct Block {
    attn_norm: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    ffn_norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// The weights, dequantized to fp32.
pub struct Llama {
    shape: LlamaShape,
    embeddings: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
    /// The output projection (the embeddings when tied).
    head: Tensor,
    cos: Tensor,
    sin: Tensor,
}

/// A sequence's cache: keys and values of every block, sized for the
/// sequence's whole budget at its first append.
pub struct SequenceCache {
    blocks: Vec<KvCache>,
    /// Tokens already in the cache.
    len: usize,
}

impl SequenceCache {
    /// Tokens the cache holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was read yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

type CandleResult<T> = candle_core::Result<T>;

impl Llama {
    /// Reads and dequantizes `path`; refuses an architecture other than
    /// `llama`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let fail =
            |what: &str, err: candle_core::Error| format!("{}: {what}: {err}", path.display());
        let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let content =
            gguf_file::Content::read(&mut file).map_err(|e| fail("not a GGUF file", e))?;
        let meta = |key: &str| {
            content
                .metadata
                .get(key)
                .ok_or_else(|| format!("{}: no metadata {key}", path.display()))
        };
        let arch = meta("general.architecture")?
            .to_string()
            .map_err(|e| fail("general.architecture", e))?
            .clone();
        if arch != "llama" {
            return Err(format!(
                "{}: architecture '{arch}', this model reads only 'llama'",
                path.display()
            ));
        }
        let number = |key: &str| -> Result<usize, String> {
            let value = meta(key)?;
            value
                .to_u64()
                .or_else(|_| value.to_u32().map(u64::from))
                .map(|v| v as usize)
                .map_err(|e| fail(key, e))
        };
        let float =
            |key: &str| -> Result<f32, String> { meta(key)?.to_f32().map_err(|e| fail(key, e)) };
        let hidden = number("llama.embedding_length")?;
        let heads = number("llama.attention.head_count")?;
        if heads == 0 {
            return Err(format!("{}: no attention heads", path.display()));
        }
        let shape = LlamaShape {
            layers: number("llama.block_count")?,
            hidden,
            heads,
            kv_heads: number("llama.attention.head_count_kv")?,
            head_dim: hidden / heads,
            vocab: 0,
            context: number("llama.context_length")?,
            eps: float("llama.attention.layer_norm_rms_epsilon")?,
            rope_base: float("llama.rope.freq_base").unwrap_or(10_000.0),
        };
        if !shape.heads.is_multiple_of(shape.kv_heads) || !hidden.is_multiple_of(heads) {
            return Err(format!(
                "{}: {shape:?} is not a Llama shape",
                path.display()
            ));
        }
        let device = Device::Cpu;
        let mut tensor = |name: &str| -> Result<Tensor, String> {
            content
                .tensor(&mut file, name, &device)
                .and_then(|q| q.dequantize(&device))
                .map_err(|e| fail(name, e))
        };
        let embeddings = tensor("token_embd.weight")?;
        let mut blocks = Vec::with_capacity(shape.layers);
        for i in 0..shape.layers {
            let mut named = |part: &str| tensor(&format!("blk.{i}.{part}.weight"));
            blocks.push(Block {
                attn_norm: named("attn_norm")?,
                q: named("attn_q")?,
                k: named("attn_k")?,
                v: named("attn_v")?,
                o: named("attn_output")?,
                ffn_norm: named("ffn_norm")?,
                gate: named("ffn_gate")?,
                up: named("ffn_up")?,
                down: named("ffn_down")?,
            });
        }
        let final_norm = tensor("output_norm.weight")?;
        let head = if content.tensor_infos.contains_key("output.weight") {
            tensor("output.weight")?
        } else {
            embeddings.clone()
        };
        let vocab = embeddings
            .dim(0)
            .map_err(|e| fail("token_embd.weight", e))?;
        let shape = LlamaShape { vocab, ..shape };
        let (cos, sin) = rotary_tables(&shape).map_err(|e| fail("rotary tables", e))?;
        Ok(Llama {
            shape,
            embeddings,
            blocks,
            final_norm,
            head,
            cos,
            sin,
        })
    }

    /// The model's shape.
    pub fn shape(&self) -> &LlamaShape {
        &self.shape
    }

    /// An empty cache for a sequence of at most `capacity` tokens.
    pub fn new_cache(&self, capacity: usize) -> SequenceCache {
        SequenceCache {
            blocks: (0..self.shape.layers)
                .map(|_| KvCache::new(2, capacity.max(1)))
                .collect(),
            len: 0,
        }
    }

    /// Reads each sequence's new tokens (`inputs[i]` into `caches[i]`, after
    /// what its cache holds) and returns each sequence's logits for the
    /// token after its last one: `sequences × vocab`.
    pub fn forward(
        &self,
        inputs: &[&[u32]],
        caches: &mut [&mut SequenceCache],
    ) -> CandleResult<Tensor> {
        assert_eq!(inputs.len(), caches.len(), "one cache per sequence");
        let shape = &self.shape;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut last_rows = Vec::with_capacity(inputs.len());
        for (tokens, cache) in inputs.iter().zip(caches.iter()) {
            if tokens.is_empty() {
                candle_core::bail!("a sequence with no new tokens");
            }
            ids.extend_from_slice(tokens);
            positions.extend((cache.len..cache.len + tokens.len()).map(|p| p as u32));
            last_rows.push((ids.len() - 1) as u32);
        }
        let rows = ids.len();
        let device = &Device::Cpu;
        let ids = Tensor::from_vec(ids, rows, device)?;
        let positions = Tensor::from_vec(positions, rows, device)?;
        let cos = self.cos.index_select(&positions, 0)?;
        let sin = self.sin.index_select(&positions, 0)?;
        let mut x = self.embeddings.index_select(&ids, 0)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, shape.eps)?;
            let q = heads(&linear(&h, &block.q)?, shape.heads, shape.head_dim)?;
            let k = heads(&linear(&h, &block.k)?, shape.kv_heads, shape.head_dim)?;
            let v = heads(&linear(&h, &block.v)?, shape.kv_heads, shape.head_dim)?;
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?;
            let mut outputs = Vec::with_capacity(inputs.len());
            let mut first = 0;
            for (tokens, cache) in inputs.iter().zip(caches.iter_mut()) {
                let count = tokens.len();
                let q = q.narrow(2, first, count)?;
                let k = k.narrow(2, first, count)?.contiguous()?;
                let v = v.narrow(2, first, count)?.contiguous()?;
                let (k, v) = cache.blocks[layer].append(&k, &v)?;
                outputs.push(self.attend(&q, &k, &v, cache.len)?);
                first += count;
            }
            let attended = Tensor::cat(&outputs, 0)?;
            x = (x + linear(&attended, &block.o)?)?;
            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, shape.eps)?;
            let gated =
                (candle_nn::ops::silu(&linear(&h, &block.gate)?)? * linear(&h, &block.up)?)?;
            x = (x + linear(&gated, &block.down)?)?;
        }
        for (tokens, cache) in inputs.iter().zip(caches.iter_mut()) {
            cache.len += tokens.len();
        }
        let last = x.index_select(&Tensor::from_vec(last_rows, inputs.len(), device)?, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.final_norm, shape.eps)?;
        linear(&last, &self.head)
    }

    /// Attention of one sequence's new queries (`1 × heads × new × dim`,
    /// the first at position `start`) over its cache (`1 × kv_heads ×
    /// all × dim`), as `new × heads·dim` rows. The query heads sharing a
    /// key/value head are stacked as rows of one product, so the cache is
    /// never copied per head.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, start: usize) -> CandleResult<Tensor> {
        let shape = &self.shape;
        let group = shape.heads / shape.kv_heads;
        let new = q.dim(2)?;
        let all = k.dim(2)?;
        let q = q
            .contiguous()?
            .reshape((shape.kv_heads, group * new, shape.head_dim))?;
        let k = k.squeeze(0)?;
        let v = v.squeeze(0)?;
        let scale = 1.0 / (shape.head_dim as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if new > 1 {
            // Row r of a group is the query at position start + r % new.
            let mask: Vec<f32> = (0..group * new)
                .flat_map(|row| {
                    let position = start + row % new;
                    (0..all).map(move |col| {
                        if col > position {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (1, group * new, all), q.device())?;
            scores = scores.broadcast_add(&mask)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = weights.matmul(&v.contiguous()?)?; // kv_heads × group·new × dim
        out.reshape((shape.heads, new, shape.head_dim))?
            .transpose(0, 1)?
            .reshape((new, shape.heads * shape.head_dim))
    }
}

/// `x Wᵀ` for rows `x` and a weight stored `outputs × inputs`.
fn linear(x: &Tensor, weight: &Tensor) -> CandleResult<Tensor> {
    x.matmul(&weight.t()?)
}

/// `rows × heads·dim` as `1 × heads × rows × dim`, contiguous (as the
/// rotary kernel takes it).
fn heads(x: &Tensor, heads: usize, dim: usize) -> CandleResult<Tensor> {
    let rows = x.dim(0)?;
    x.reshape((1, rows, heads, dim))?
        .transpose(1, 2)?
        .contiguous()
}

/// cos and sin of every position's rotary angles: `context × dim / 2`.
fn rotary_tables(shape: &LlamaShape) -> CandleResult<(Tensor, Tensor)> {
    let half = shape.head_dim / 2;
    let inverse: Vec<f32> = (0..half)
        .map(|i| 1.0 / shape.rope_base.powf(2.0 * i as f32 / shape.head_dim as f32))
        .collect();
    let inverse = Tensor::from_vec(inverse, (1, half), &Device::Cpu)?;
    let positions = Tensor::arange(0u32, shape.context as u32, &Device::Cpu)?
        .to_dtype(DType::F32)?
        .reshape((shape.context, 1))?;
    let angles = positions.broadcast_mul(&inverse)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// The id of the largest of each row of `logits` (`rows × vocab`).
pub fn argmax_rows(logits: &Tensor) -> CandleResult<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_vec1::<u32>()
}

/// Row `row` of `logits` as a vector.
pub fn row(logits: &Tensor, row: usize) -> CandleResult<Vec<f32>> {
    logits.i(row)?.to_vec1::<f32>()
}
