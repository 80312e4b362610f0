//! Runs the encoder: the project's CPU encoder where the CPU has AVX2 + FMA
//! or AVX-512 (or bf16 was asked for), candle's elsewhere (CUDA, or a CPU
//! without AVX2), fed batches sorted by length and cut into groups padded
//! only to their own longest item. Either way: token ids in, one pooled
//! vector per input out.

use std::path::Path;

use candle_core::{Device, Tensor};
use modalkit::candle::describe;
use modalkit::candle::encoder::cpu::precision::Precision;
use modalkit::candle::encoder::{
    BertConfig, BertEncoder, CpuEncoder, Pooling, Tokens, Weights, cpu, pool,
};
use modalkit::prelude::*;

/// Which implementation of the encoder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// This project's CPU encoder (`modalkit::candle::encoder::cpu`); CPU only.
    Native,
    /// The encoder on candle's ops (`modalkit::candle::encoder::bert`); any device.
    Candle,
}

impl Engine {
    /// The engine [`super::Bert::load_folder`] picks for `device` and
    /// `precision` (with `MODALKIT_CPU_ISA` applied).
    pub fn for_device(device: &Device, precision: Precision) -> Result<Engine, PipelineError> {
        cpu::isa::cap_from_env().map_err(PipelineError::msg)?;
        Ok(
            if device.is_cpu() && (cpu::isa::avx2() || precision != Precision::Fp32) {
                Engine::Native
            } else {
                Engine::Candle
            },
        )
    }
}

/// A loaded encoder.
pub(super) enum Encoder {
    Native(CpuEncoder),
    Candle {
        encoder: Box<BertEncoder>,
        device: Device,
    },
}

impl Encoder {
    /// Loads `weights_path` with `engine`.
    pub(super) fn load(
        weights_path: &Path,
        config: &BertConfig,
        device: Device,
        precision: Precision,
        engine: Engine,
    ) -> Result<Self, PipelineError> {
        match engine {
            Engine::Native if !device.is_cpu() => Err(PipelineError::msg(
                "the native encoder runs on the CPU only",
            )),
            Engine::Native => {
                let encoder = CpuEncoder::load_with_precision(weights_path, config, precision)
                    .map_err(PipelineError::msg)?;
                tracing::info!(
                    kernels = encoder.kernels(),
                    precision = precision.name(),
                    detected = cpu::isa::detected().name(),
                    "native CPU encoder"
                );
                Ok(Encoder::Native(encoder))
            }
            Engine::Candle if precision != Precision::Fp32 => Err(PipelineError::msg(format!(
                "precision {precision} needs the native CPU encoder (device cpu); candle's encoder on {} computes in fp32",
                describe(&device)
            ))),
            Engine::Candle => {
                let mut weights = Weights::read(weights_path, &[]).map_err(PipelineError::msg)?;
                let encoder = BertEncoder::load(&mut weights, config.clone(), &device)?;
                Ok(Encoder::Candle {
                    encoder: Box::new(encoder),
                    device,
                })
            }
        }
    }

    /// One pooled (not normalized) vector per input, in order.
    pub(super) fn encode(
        &self,
        inputs: &[Tokens],
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>, PipelineError> {
        let (encoder, device) = match self {
            Encoder::Native(encoder) => {
                return encoder.encode(inputs, pooling).map_err(PipelineError::msg);
            }
            Encoder::Candle { encoder, device } => (encoder, device),
        };
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| inputs[i].len());
        let lengths: Vec<usize> = inputs.iter().map(Tokens::len).collect();
        let mut vectors = vec![Vec::new(); inputs.len()];
        for group in length_groups(&order, &lengths) {
            let members: Vec<Tokens> = group.iter().map(|&i| inputs[i]).collect();
            for (&index, vector) in group
                .iter()
                .zip(encode_group(encoder, device, &members, pooling)?)
            {
                vectors[index] = vector;
            }
        }
        Ok(vectors)
    }

    /// `/ready`'s device: `cpu (KERNELS, PRECISION)` for the native encoder.
    pub(super) fn describe(&self) -> String {
        match self {
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

/// Encodes one group of similar-length inputs on the candle encoder.
fn encode_group(
    encoder: &BertEncoder,
    device: &Device,
    items: &[Tokens],
    pooling: Pooling,
) -> Result<Vec<Vec<f32>>, PipelineError> {
    let batch = items.len();
    let len = items.iter().map(Tokens::len).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(batch * len);
    let mut types = Vec::with_capacity(batch * len);
    let mut mask = Vec::with_capacity(batch * len);
    for item in items {
        ids.extend_from_slice(item.ids);
        ids.extend(std::iter::repeat_n(0u32, len - item.len()));
        types.extend((0..len).map(|i| {
            if i < item.len() {
                item.token_type(i)
            } else {
                0
            }
        }));
        mask.extend(std::iter::repeat_n(1f32, item.len()));
        mask.extend(std::iter::repeat_n(0f32, len - item.len()));
    }
    let ids = Tensor::from_vec(ids, (batch, len), device)?;
    let types = Tensor::from_vec(types, (batch, len), device)?;
    let mask = Tensor::from_vec(mask, (batch, len), device)?;
    let hidden = encoder.forward(&ids, Some(&types), &mask)?;
    let mut pooled = pool(&hidden, &mask, pooling)?.to_vec2::<f32>()?;
    // An empty input pools to zeros, as on the native encoder.
    for (vector, item) in pooled.iter_mut().zip(items) {
        if item.is_empty() {
            vector.fill(0.0);
        }
    }
    Ok(pooled)
}

/// Cuts items sorted by length into groups whose padding stays small:
/// a group closes when adding the next item would make more than a quarter
/// of its padded tokens padding.
pub(super) fn length_groups<'a>(sorted: &'a [usize], lengths: &[usize]) -> Vec<&'a [usize]> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut real_tokens = 0usize;
    for (position, &index) in sorted.iter().enumerate() {
        let len = lengths[index].max(1);
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

#[cfg(test)]
mod tests {
    use super::length_groups;

    #[test]
    fn groups_keep_padding_under_a_quarter() {
        let lengths = [5, 5, 6, 6, 20, 21, 22, 60];
        let order: Vec<usize> = (0..lengths.len()).collect();
        let groups = length_groups(&order, &lengths);
        assert_eq!(groups, vec![&[0, 1, 2, 3][..], &[4, 5, 6][..], &[7][..]]);
        let same = [12; 32];
        let order: Vec<usize> = (0..32).collect();
        assert_eq!(
            length_groups(&order, &same).len(),
            1,
            "equal lengths stay one batch"
        );
    }
}
