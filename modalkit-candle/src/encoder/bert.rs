//! BERT on candle ops: the encoder for non-CPU devices (CUDA) and the
//! reference the CPU encoder ([`super::cpu`]) is tested against. One fused
//! QKV projection, weights transposed once at load, the attention scale
//! folded into the query weights, candle's `softmax_last_dim` and
//! `layer_norm`. Numerically it is candle-transformers' (and Hugging Face's)
//! `BertModel`.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::ops::{layer_norm, softmax_last_dim};
use serde::Deserialize;

use super::input::Pooling;
use super::weights::Weights;

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
    /// `model_type`: `bert` (absent in some old folders).
    #[serde(default)]
    pub model_type: Option<String>,
    /// `architectures`, e.g. `BertModel` or `BertForSequenceClassification`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// A classifier's label names by index (`"0"`, `"1"`, ...).
    #[serde(default)]
    pub id2label: std::collections::BTreeMap<String, String>,
    /// `absolute` is the only kind BERT uses and the only one supported.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

impl BertConfig {
    /// What in this config the encoders cannot run, if anything.
    pub fn unsupported(&self) -> Option<String> {
        if let Some(kind) = self.model_type.as_deref().filter(|kind| *kind != "bert") {
            return Some(format!(
                "model_type {kind} (only the BERT architecture is supported)"
            ));
        }
        if self.hidden_act != "gelu" {
            return Some(format!(
                "hidden_act {} (only gelu is supported)",
                self.hidden_act
            ));
        }
        if let Some(kind) = self
            .position_embedding_type
            .as_deref()
            .filter(|kind| *kind != "absolute")
        {
            return Some(format!(
                "position_embedding_type {kind} (only absolute is supported)"
            ));
        }
        None
    }
}

struct Norm {
    gamma: Tensor,
    beta: Tensor,
}

struct Layer {
    qkv_weight: Tensor,
    qkv_bias: Tensor,
    attention_out_weight: Tensor,
    attention_out_bias: Tensor,
    attention_norm: Norm,
    intermediate_weight: Tensor,
    intermediate_bias: Tensor,
    output_weight: Tensor,
    output_bias: Tensor,
    output_norm: Norm,
}

/// The encoder: token ids in, one vector per token out.
pub struct BertEncoder {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    config: BertConfig,
}

/// Takes tensors out of [`Weights`] onto a device.
struct Loader<'a> {
    weights: &'a mut Weights,
    device: &'a Device,
}

impl Loader<'_> {
    fn take(&mut self, name: &str) -> Result<Tensor> {
        let raw = self.weights.take(name).map_err(candle_core::Error::Msg)?;
        Tensor::from_vec(raw.values, raw.shape, self.device)
    }

    fn norm(&mut self, prefix: &str) -> Result<Norm> {
        Ok(Norm {
            gamma: self.take(&format!("{prefix}.weight"))?,
            beta: self.take(&format!("{prefix}.bias"))?,
        })
    }

    fn transposed(&mut self, name: &str) -> Result<Tensor> {
        self.take(name)?.t()?.contiguous()
    }
}

impl BertEncoder {
    /// Builds the encoder for `config` on `device` from the model's tensors.
    pub fn load(weights: &mut Weights, config: BertConfig, device: &Device) -> Result<Self> {
        if let Some(unsupported) = config.unsupported() {
            return Err(candle_core::Error::Msg(format!(
                "unsupported {unsupported}"
            )));
        }
        let mut loader = Loader { weights, device };
        let heads = config.num_attention_heads;
        let scale = 1.0 / ((config.hidden_size / heads) as f64).sqrt();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            // Fold the attention scale into the query projection.
            let q_weight = (loader.take(&format!("{p}.attention.self.query.weight"))? * scale)?;
            let q_bias = (loader.take(&format!("{p}.attention.self.query.bias"))? * scale)?;
            let k_weight = loader.take(&format!("{p}.attention.self.key.weight"))?;
            let k_bias = loader.take(&format!("{p}.attention.self.key.bias"))?;
            let v_weight = loader.take(&format!("{p}.attention.self.value.weight"))?;
            let v_bias = loader.take(&format!("{p}.attention.self.value.bias"))?;
            layers.push(Layer {
                qkv_weight: Tensor::cat(&[q_weight, k_weight, v_weight], 0)?
                    .t()?
                    .contiguous()?,
                qkv_bias: Tensor::cat(&[q_bias, k_bias, v_bias], 0)?,
                attention_out_weight: loader
                    .transposed(&format!("{p}.attention.output.dense.weight"))?,
                attention_out_bias: loader.take(&format!("{p}.attention.output.dense.bias"))?,
                attention_norm: loader.norm(&format!("{p}.attention.output.LayerNorm"))?,
                intermediate_weight: loader
                    .transposed(&format!("{p}.intermediate.dense.weight"))?,
                intermediate_bias: loader.take(&format!("{p}.intermediate.dense.bias"))?,
                output_weight: loader.transposed(&format!("{p}.output.dense.weight"))?,
                output_bias: loader.take(&format!("{p}.output.dense.bias"))?,
                output_norm: loader.norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(BertEncoder {
            word_embeddings: loader.take("embeddings.word_embeddings.weight")?,
            position_embeddings: loader.take("embeddings.position_embeddings.weight")?,
            token_type_embeddings: loader.take("embeddings.token_type_embeddings.weight")?,
            embedding_norm: loader.norm("embeddings.LayerNorm")?,
            layers,
            config,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// `ids` [batch, len] (u32), `type_ids` [batch, len] (u32; `None`:
    /// all 0) and `mask` [batch, len] (f32, 1 = token, 0 = padding) to
    /// hidden states [batch, len, hidden].
    pub fn forward(
        &self,
        ids: &Tensor,
        type_ids: Option<&Tensor>,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let (batch, len) = ids.dims2()?;
        let hidden = self.config.hidden_size;
        let eps = self.config.layer_norm_eps as f32;
        let words = self
            .word_embeddings
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((batch, len, hidden))?;
        let positions = self.position_embeddings.narrow(0, 0, len)?;
        let types = match type_ids {
            Some(type_ids) => self
                .token_type_embeddings
                .index_select(&type_ids.flatten_all()?, 0)?
                .reshape((batch, len, hidden))?,
            None => self.token_type_embeddings.get(0)?.reshape((1, 1, hidden))?,
        };
        let x = words.broadcast_add(&positions)?.broadcast_add(&types)?;
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
        let eps = self.config.layer_norm_eps as f32;
        let attention = context
            .matmul(&layer.attention_out_weight)?
            .broadcast_add(&layer.attention_out_bias)?;
        let x = layer_norm(
            &(attention + x)?,
            &layer.attention_norm.gamma,
            &layer.attention_norm.beta,
            eps,
        )?;
        let intermediate = x
            .matmul(&layer.intermediate_weight)?
            .broadcast_add(&layer.intermediate_bias)?
            .gelu_erf()?;
        let output = intermediate
            .matmul(&layer.output_weight)?
            .broadcast_add(&layer.output_bias)?;
        layer_norm(
            &(output + x)?,
            &layer.output_norm.gamma,
            &layer.output_norm.beta,
            eps,
        )
    }
}

/// Pools hidden states [batch, len, hidden] over `mask` [batch, len]
/// (1 = token) to [batch, hidden], not normalized.
pub fn pool(hidden: &Tensor, mask: &Tensor, pooling: Pooling) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
    match pooling {
        Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1),
        Pooling::Mean => {
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
            summed.broadcast_div(&counts)
        }
        Pooling::Max => {
            // Padding is pushed far below any value before the max.
            let floor = ((mask.ones_like()? - &mask)? * -1e9)?;
            hidden.broadcast_add(&floor)?.max(1)
        }
    }
}
