//! A BERT encoder forward pass owned by this project, on plain candle ops,
//! laid out for speed on CPU: one fused QKV projection, weights transposed
//! once at load, the attention scale folded into the query weights, candle's
//! fused `softmax_last_dim`, and this project's fused kernels for bias+GELU
//! (exact erf GELU, as the reference model) and bias+residual+layer norm. Numerically it is candle-transformers' (and
//! Hugging Face's) `BertModel`; the tests compare it with sentence-
//! transformers' vectors.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::ops::{layer_norm, softmax_last_dim};
use serde::Deserialize;

use super::kernels::{BiasGelu, BiasResidualNorm, FusedLayerOps, bias_gelu, bias_residual_norm};

/// The fields of `config.json` the forward pass needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Width of every token's vector.
    pub hidden_size: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Longest input the position embeddings allow.
    pub max_position_embeddings: usize,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// Activation; only `gelu` (erf) is supported.
    pub hidden_act: String,
}

struct Norm {
    gamma: Tensor,
    beta: Tensor,
}

struct Layer {
    qkv_weight: Tensor,
    qkv_bias: Tensor,
    attention_out_weight: Tensor,
    intermediate_weight: Tensor,
    output_weight: Tensor,
    /// Biases, the GELU and the layer norms, fused.
    fused: FusedLayerOps,
}

/// The encoder: token ids in, one vector per token out.
pub struct BertEncoder {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embedding: Tensor,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    config: BertConfig,
}

struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    fn take(&mut self, name: &str) -> Result<Tensor> {
        self.tensors.remove(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("model.safetensors has no tensor {name}"))
        })
    }

    fn norm(&mut self, prefix: &str) -> Result<Norm> {
        Ok(Norm {
            gamma: self.take(&format!("{prefix}.weight"))?,
            beta: self.take(&format!("{prefix}.bias"))?,
        })
    }
}

impl BertEncoder {
    /// Loads `model.safetensors` for `config` onto `device`.
    pub fn load(weights_path: &Path, config: BertConfig, device: &Device) -> Result<Self> {
        if config.hidden_act != "gelu" {
            return Err(candle_core::Error::Msg(format!(
                "unsupported hidden_act {}",
                config.hidden_act
            )));
        }
        let mut weights = Weights {
            tensors: read_safetensors(weights_path, device)?,
        };
        let heads = config.num_attention_heads;
        let scale = 1.0 / ((config.hidden_size / heads) as f64).sqrt();
        let eps = config.layer_norm_eps as f32;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            // Fold the attention scale into the query projection.
            let q_weight = (weights.take(&format!("{p}.attention.self.query.weight"))? * scale)?;
            let q_bias = (weights.take(&format!("{p}.attention.self.query.bias"))? * scale)?;
            let k_weight = weights.take(&format!("{p}.attention.self.key.weight"))?;
            let k_bias = weights.take(&format!("{p}.attention.self.key.bias"))?;
            let v_weight = weights.take(&format!("{p}.attention.self.value.weight"))?;
            let v_bias = weights.take(&format!("{p}.attention.self.value.bias"))?;
            let attention_norm = weights.norm(&format!("{p}.attention.output.LayerNorm"))?;
            let output_norm = weights.norm(&format!("{p}.output.LayerNorm"))?;
            let attention_bias = weights.take(&format!("{p}.attention.output.dense.bias"))?;
            let output_bias = weights.take(&format!("{p}.output.dense.bias"))?;
            let fused = FusedLayerOps {
                intermediate: BiasGelu::new(
                    &weights.take(&format!("{p}.intermediate.dense.bias"))?,
                )?,
                attention_norm: BiasResidualNorm::new(
                    &attention_bias,
                    &attention_norm.gamma,
                    &attention_norm.beta,
                    eps,
                )?,
                output_norm: BiasResidualNorm::new(
                    &output_bias,
                    &output_norm.gamma,
                    &output_norm.beta,
                    eps,
                )?,
            };
            let transposed = |weights: &mut Weights, name: &str| -> Result<Tensor> {
                weights.take(&format!("{p}.{name}"))?.t()?.contiguous()
            };
            layers.push(Layer {
                qkv_weight: Tensor::cat(&[q_weight, k_weight, v_weight], 0)?
                    .t()?
                    .contiguous()?,
                qkv_bias: Tensor::cat(&[q_bias, k_bias, v_bias], 0)?,
                attention_out_weight: transposed(&mut weights, "attention.output.dense.weight")?,
                intermediate_weight: transposed(&mut weights, "intermediate.dense.weight")?,
                output_weight: transposed(&mut weights, "output.dense.weight")?,
                fused,
            });
        }
        let token_types = weights.take("embeddings.token_type_embeddings.weight")?;
        Ok(BertEncoder {
            word_embeddings: weights.take("embeddings.word_embeddings.weight")?,
            position_embeddings: weights.take("embeddings.position_embeddings.weight")?,
            token_type_embedding: token_types.get(0)?,
            embedding_norm: weights.norm("embeddings.LayerNorm")?,
            layers,
            config,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// `ids` [batch, len] (u32) and `mask` [batch, len] (f32, 1 = token,
    /// 0 = padding) to hidden states [batch, len, hidden].
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, len) = ids.dims2()?;
        let hidden = self.config.hidden_size;
        let eps = self.config.layer_norm_eps as f32;
        let words = self
            .word_embeddings
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((batch, len, hidden))?;
        let positions = self.position_embeddings.narrow(0, 0, len)?;
        let x = words
            .broadcast_add(&positions)?
            .broadcast_add(&self.token_type_embedding)?;
        let mut x = layer_norm(
            &x,
            &self.embedding_norm.gamma,
            &self.embedding_norm.beta,
            eps,
        )?
        .reshape((batch * len, hidden))?;
        // 0 where there is a token, a large negative number on padding.
        let attention_bias = mask
            .affine(10_000.0, -10_000.0)?
            .reshape((batch, 1, 1, len))?;
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, &attention_bias, batch, len)?;
        }
        x.reshape((batch, len, hidden))
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        attention_bias: &Tensor,
        batch: usize,
        len: usize,
    ) -> Result<Tensor> {
        let hidden = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let head_dim = hidden / heads;

        let qkv = x
            .matmul(&layer.qkv_weight)?
            .broadcast_add(&layer.qkv_bias)?;
        let qkv = qkv
            .reshape((batch, len, 3, heads, head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let query = qkv.get(0)?.contiguous()?;
        let key = qkv.get(1)?.contiguous()?;
        let value = qkv.get(2)?.contiguous()?;
        let scores = query.matmul(&key.t()?)?.broadcast_add(attention_bias)?;
        let probabilities = softmax_last_dim(&scores)?;
        let context = probabilities
            .matmul(&value)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch * len, hidden))?;
        let attention = context.matmul(&layer.attention_out_weight)?;
        let x = bias_residual_norm(&attention, x, &layer.fused.attention_norm)?;
        let intermediate = bias_gelu(
            &x.matmul(&layer.intermediate_weight)?,
            &layer.fused.intermediate,
        )?;
        let output = intermediate.matmul(&layer.output_weight)?;
        bias_residual_norm(&output, &x, &layer.fused.output_norm)
    }
}

/// Reads a safetensors file one tensor at a time, so the whole file is never
/// held next to the tensors made from it (peak memory: the model plus its
/// largest tensor). Skips tensors the encoder does not use; strips a
/// `bert.` prefix.
fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    use std::io::{Read, Seek, SeekFrom};

    #[derive(Deserialize)]
    struct Entry {
        dtype: String,
        shape: Vec<usize>,
        data_offsets: [u64; 2],
    }
    let fail = |what: String| candle_core::Error::Msg(format!("{}: {what}", path.display()));
    let mut file = std::fs::File::open(path)?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length)?;
    let header_len = u64::from_le_bytes(length);
    if header_len > 100_000_000 {
        return Err(fail(format!("header of {header_len} bytes")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    let entries: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|err| fail(format!("bad header: {err}")))?;
    let data_start = 8 + header_len;
    let mut tensors = HashMap::new();
    for (name, value) in entries {
        if name == "__metadata__" || name.contains("pooler.") || name.ends_with("position_ids") {
            continue;
        }
        let entry: Entry =
            serde_json::from_value(value).map_err(|err| fail(format!("{name}: {err}")))?;
        if entry.dtype != "F32" {
            return Err(fail(format!(
                "{name}: dtype {} (only F32 weights are supported)",
                entry.dtype
            )));
        }
        let [start, end] = entry.data_offsets;
        let count: usize = entry.shape.iter().product();
        if end.saturating_sub(start) != (count * 4) as u64 {
            return Err(fail(format!(
                "{name}: {} bytes for shape {:?}",
                end.saturating_sub(start),
                entry.shape
            )));
        }
        // Read straight into the f32 buffer the tensor will own: no second copy.
        let mut values = vec![0f32; count];
        file.seek(SeekFrom::Start(data_start + start))?;
        file.read_exact(bytemuck::cast_slice_mut(&mut values))?;
        if cfg!(target_endian = "big") {
            values
                .iter_mut()
                .for_each(|v| *v = f32::from_bits(v.to_bits().swap_bytes()));
        }
        let tensor = Tensor::from_vec(values, entry.shape, device)?;
        tensors.insert(
            name.strip_prefix("bert.").unwrap_or(&name).to_owned(),
            tensor,
        );
    }
    Ok(tensors)
}

/// Mean of the token vectors over the mask, then L2-normalized: [batch, hidden].
pub fn mean_pool_normalized(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    let mean = summed.broadcast_div(&counts)?;
    let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    mean.broadcast_div(&norms)
}
