//! The BERT forward's row operations on CPU: embedding lookup + layer norm,
//! residual + layer norm, attention per head, GELU, mean pooling. Written as
//! plain loops LLVM vectorizes; sums run in 16 lanes (float addition is not
//! reassociated by the compiler, so a plain `sum()` would stay scalar).

use std::ops::Range;

use rayon::prelude::*;

use super::Threads;
use super::isa::madd;
use super::words::WordTable;
use crate::encoder::input::Tokens;
use crate::multiversion;

/// Lanes of the partial sums (one AVX-512 vector).
const LANES: usize = 16;
/// Rows handed to one rayon task by the row-wise operations.
const ROWS_PER_TASK: usize = 32;

/// `exp(x)` for x in about [-87, 88]: 2^n · p(r) with n = round(x / ln 2),
/// built from bit operations so it vectorizes (no libm call per element).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    fast_exp_with::<false>(x)
}

/// [`fast_exp`] with its steps fused into multiply-adds when `FMA` (in
/// kernels compiled with FMA).
#[inline(always)]
pub fn fast_exp_with<const FMA: bool>(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest with the 1.5 · 2^23 trick; the integer sits in the low bits.
    let shifted = madd::<FMA>(x, std::f32::consts::LOG2_E, 12_582_912.0);
    let n = shifted - 12_582_912.0;
    // ln 2 split in two (Cody-Waite) so r stays exact for large |n|.
    let r = madd::<FMA>(n, 2.121_944_4e-4, madd::<FMA>(n, -0.693_359_4, x));
    let mut p = 0.001_388_889;
    for coefficient in [0.008_333_334, 0.041_666_668, 0.166_666_67, 0.5, 1.0, 1.0] {
        p = madd::<FMA>(p, r, coefficient);
    }
    let exponent = shifted
        .to_bits()
        .wrapping_sub(0x4B40_0000)
        .wrapping_add(127)
        << 23;
    p * f32::from_bits(exponent)
}

/// Exact GELU, `0.5 x (1 + erf(x / √2))`, with erf from Abramowitz & Stegun
/// 7.1.26 (|error| ≤ 1.5e-7).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    gelu_with::<false>(x)
}

/// [`gelu`] with its polynomials as fused multiply-adds when `FMA`: the
/// GEMM tiles apply it to every output of the intermediate layer, where
/// separate multiplies and adds doubled its dependency chain (GELU made
/// that product about a third slower on AVX2).
#[inline(always)]
pub fn gelu_with<const FMA: bool>(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let t = 1.0 / madd::<FMA>(0.327_591_1, a, 1.0);
    let mut poly = 1.061_405_4;
    for coefficient in [-1.453_152_1, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
        poly = madd::<FMA>(poly, t, coefficient);
    }
    poly *= t;
    // exp(-80) keeps poly · exp normal: erf is already ±1 in f32 there, and
    // subnormal arithmetic would be a hundred times slower.
    let erf_abs = madd::<FMA>(-poly, fast_exp_with::<FMA>((-a * a).max(-80.0)), 1.0);
    let half = 0.5 * x;
    madd::<FMA>(half, erf_abs.copysign(z), half)
}

#[inline(always)]
fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (chunks, rest) = values.as_chunks::<LANES>();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[inline(always)]
fn lane_max(values: &[f32]) -> f32 {
    let mut lanes = [f32::MIN; LANES];
    let (chunks, rest) = values.as_chunks::<LANES>();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v);
        }
    }
    rest.iter().chain(&lanes).fold(f32::MIN, |m, &v| m.max(v))
}

/// Layer norm of one row in place.
#[inline(always)]
fn normalize<const FMA: bool>(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let width = row.len() as f32;
    let mean = lane_sum(row) / width;
    let mut lanes = [0f32; LANES];
    let (chunks, rest) = row.as_chunks_mut::<LANES>();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *v -= mean;
            *lane = madd::<FMA>(*v, *v, *lane);
        }
    }
    let mut squares = lanes.iter().sum::<f32>();
    for v in rest {
        *v -= mean;
        squares += *v * *v;
    }
    let inv_std = 1.0 / (squares / width + eps).sqrt();
    for ((v, &g), &b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = madd::<FMA>(*v * inv_std, g, b);
    }
}

/// Parameters of a layer norm.
pub struct LayerNorm {
    /// Scale.
    pub gamma: Vec<f32>,
    /// Shift.
    pub beta: Vec<f32>,
    /// Added to the variance.
    pub eps: f32,
}

/// `x = layer_norm(x + residual)`, row by row (rows of `norm.gamma.len()`).
pub fn add_residual_norm(x: &mut [f32], residual: &[f32], norm: &LayerNorm, threads: Threads) {
    if threads == Threads::One {
        add_residual_norm_rows(x, residual, norm);
        return;
    }
    let width = norm.gamma.len();
    x.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(residual.par_chunks(width * ROWS_PER_TASK))
        .for_each(|(x, residual)| add_residual_norm_rows(x, residual, norm));
}

multiversion! {
    fn add_residual_norm_rows<const FMA: bool>(x: &mut [f32], residual: &[f32], norm: &LayerNorm) {
        let width = norm.gamma.len();
        for (row, residual) in x.chunks_exact_mut(width).zip(residual.chunks_exact(width)) {
            for (v, &r) in row.iter_mut().zip(residual) {
                *v += r;
            }
            normalize::<FMA>(row, &norm.gamma, &norm.beta, norm.eps);
        }
    }
}

/// The embedding tables of the model.
pub struct EmbeddingTables {
    /// `vocabulary × hidden`, read from the model file as needed.
    pub words: WordTable,
    /// `max_positions × hidden`, with the token-type-0 row already added.
    pub positions: Vec<f32>,
    /// Token type 1's row minus type 0's (added to a pair's second text);
    /// `None` for a model with one token type.
    pub second_type: Option<Vec<f32>>,
    /// The layer norm after the sum.
    pub norm: LayerNorm,
}

/// Writes `layer_norm(word + position + type)` for every token of every
/// sequence into `out` (`tokens × hidden`, sequences one after another).
/// Token ids must be inside the vocabulary and sequences inside the
/// position table (the caller checks).
pub fn embed_tokens(
    tables: &EmbeddingTables,
    sequences: &[Tokens],
    out: &mut [f32],
    threads: Threads,
) -> Result<(), String> {
    let hidden = tables.norm.gamma.len();
    tables.words.gather(
        sequences
            .iter()
            .flat_map(|tokens| tokens.ids.iter().copied()),
        out,
    )?;
    let positions: Vec<TokenPlace> = sequences
        .iter()
        .flat_map(|tokens| {
            (0..tokens.len()).map(|position| TokenPlace {
                position,
                second: tokens.token_type(position) == 1,
            })
        })
        .collect();
    if threads == Threads::One {
        add_position_norm_rows(tables, &positions, out);
    } else {
        out.par_chunks_mut(hidden * ROWS_PER_TASK)
            .zip(positions.par_chunks(ROWS_PER_TASK))
            .for_each(|(rows, positions)| add_position_norm_rows(tables, positions, rows));
    }
    Ok(())
}

/// A token's position in its sequence, and whether it is of type 1.
#[derive(Debug, Clone, Copy)]
struct TokenPlace {
    position: usize,
    second: bool,
}

multiversion! {
    fn add_position_norm_rows<const FMA: bool>(
        tables: &EmbeddingTables,
        places: &[TokenPlace],
        rows: &mut [f32],
    ) {
        let hidden = tables.norm.gamma.len();
        for (row, place) in rows.chunks_exact_mut(hidden).zip(places) {
            let position = &tables.positions[place.position * hidden..][..hidden];
            for (v, &p) in row.iter_mut().zip(position) {
                *v += p;
            }
            if let (true, Some(second)) = (place.second, &tables.second_type) {
                for (v, &t) in row.iter_mut().zip(second) {
                    *v += t;
                }
            }
            normalize::<FMA>(row, &tables.norm.gamma, &tables.norm.beta, tables.norm.eps);
        }
    }
}

/// The shape of the attention inputs.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// Heads per layer.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

/// Self-attention of every sequence on its own tokens (no padding exists):
/// `qkv` is `tokens × 3·hidden` (queries pre-scaled by 1/√head_dim), the
/// result `tokens × hidden` goes to `out`. Tasks take whole sequences (all
/// heads while the sequence's rows are in cache); with fewer sequences than
/// threads they take heads instead.
pub fn attention(
    qkv: &[f32],
    spans: &[Range<usize>],
    shape: AttentionShape,
    out: &mut [f32],
    threads: Threads,
) {
    let hidden = shape.heads * shape.head_dim;
    if threads == Threads::One || spans.len() >= rayon::current_num_threads() {
        let mut rest = &mut out[..];
        let mut pieces = Vec::with_capacity(spans.len());
        for span in spans {
            let (rows, tail) = rest.split_at_mut(span.len() * hidden);
            pieces.push((span.clone(), rows));
            rest = tail;
        }
        let one_sequence = |(span, rows): (Range<usize>, &mut [f32])| {
            let spans = std::slice::from_ref(&span);
            for head in 0..shape.heads {
                let target = HeadOutput {
                    rows: &mut *rows,
                    first_token: span.start,
                    stride: hidden,
                    column: head * shape.head_dim,
                };
                attention_head(qkv, spans, shape, head, target);
            }
        };
        if threads == Threads::One {
            pieces.into_iter().for_each(one_sequence);
        } else {
            pieces.into_par_iter().for_each(one_sequence);
        }
        return;
    }
    let tokens = qkv.len() / (3 * hidden);
    // Head-major scratch ([head][token][head_dim]) so each task owns a slice.
    let mut by_head = vec![0f32; tokens * hidden];
    by_head
        .par_chunks_mut(tokens * shape.head_dim)
        .enumerate()
        .for_each(|(head, rows)| {
            let target = HeadOutput {
                rows,
                first_token: 0,
                stride: shape.head_dim,
                column: 0,
            };
            attention_head(qkv, spans, shape, head, target);
        });
    for (head, head_out) in by_head.chunks_exact(tokens * shape.head_dim).enumerate() {
        for (out_row, values) in out
            .chunks_exact_mut(hidden)
            .zip(head_out.chunks_exact(shape.head_dim))
        {
            out_row[head * shape.head_dim..(head + 1) * shape.head_dim].copy_from_slice(values);
        }
    }
}

/// Where one head's context vectors go: token `t`'s at
/// `rows[(t - first_token) * stride + column..][..head_dim]`.
struct HeadOutput<'a> {
    rows: &'a mut [f32],
    first_token: usize,
    stride: usize,
    column: usize,
}

multiversion! {
    fn attention_head<const FMA: bool>(
        qkv: &[f32],
        spans: &[Range<usize>],
        shape: AttentionShape,
        head: usize,
        target: HeadOutput,
    ) {
        let head_dim = shape.head_dim;
        let hidden = shape.heads * head_dim;
        let stride = 3 * hidden;
        let column = head * head_dim;
        let mut keys_t = Vec::new();
        let mut scores = Vec::new();
        for span in spans {
            let len = span.len();
            // Keys transposed ([dim][token], tokens padded with zero keys to
            // whole vectors) so each query's scores are whole-vector FMAs.
            let padded = len.next_multiple_of(LANES);
            keys_t.clear();
            keys_t.resize(head_dim * padded, 0f32);
            for (j, token) in span.clone().enumerate() {
                let key = &qkv[token * stride + hidden + column..][..head_dim];
                for (d, &k) in key.iter().enumerate() {
                    keys_t[d * padded + j] = k;
                }
            }
            scores.clear();
            scores.resize(padded, 0f32);
            for token in span.clone() {
                let query = &qkv[token * stride + column..][..head_dim];
                let (score_blocks, _) = scores.as_chunks_mut::<LANES>();
                for (block, score_block) in score_blocks.iter_mut().enumerate() {
                    // A local accumulator: LLVM vectorizes it (not a slice it
                    // cannot prove unaliased).
                    let mut acc = [0f32; LANES];
                    for (&q, keys) in query.iter().zip(keys_t.chunks_exact(padded)) {
                        let Some(key_block) = keys[block * LANES..].first_chunk::<LANES>() else {
                            continue;
                        };
                        for (a, &k) in acc.iter_mut().zip(key_block) {
                            *a = madd::<FMA>(q, k, *a);
                        }
                    }
                    *score_block = acc;
                }
                // Only the real tokens take part in the softmax.
                let valid = &mut scores[..len];
                let max = lane_max(valid);
                for s in valid.iter_mut() {
                    *s = fast_exp_with::<FMA>(*s - max);
                }
                let inv_sum = 1.0 / lane_sum(valid);
                let at = (token - target.first_token) * target.stride + target.column;
                let context = &mut target.rows[at..at + head_dim];
                weighted_sum::<FMA>(valid, inv_sum, |j| {
                    let other = span.start + j;
                    &qkv[other * stride + 2 * hidden + column..][..head_dim]
                }, context);
            }
        }
    }
}

/// `out = scale · Σ_j weights[j] · rows(j)`, in whole vectors where the
/// width allows, accumulated in registers.
#[inline(always)]
fn weighted_sum<'a, const FMA: bool>(
    weights: &[f32],
    scale: f32,
    rows: impl Fn(usize) -> &'a [f32],
    out: &mut [f32],
) {
    let (blocks, rest) = out.as_chunks_mut::<LANES>();
    for (index, block) in blocks.iter_mut().enumerate() {
        let mut acc = [0f32; LANES];
        for (j, &w) in weights.iter().enumerate() {
            let Some(values) = rows(j)[index * LANES..].first_chunk::<LANES>() else {
                continue;
            };
            for (a, &v) in acc.iter_mut().zip(values) {
                *a = madd::<FMA>(w, v, *a);
            }
        }
        for (o, a) in block.iter_mut().zip(acc) {
            *o = a * scale;
        }
    }
    let done = blocks.len() * LANES;
    for (offset, o) in rest.iter_mut().enumerate() {
        *o = scale
            * weights
                .iter()
                .enumerate()
                .map(|(j, &w)| w * rows(j)[done + offset])
                .sum::<f32>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Taylor series (exact to 1e-15 for |x| ≤ 3) and its
    /// asymptotic form beyond.
    fn erf_reference(x: f64) -> f64 {
        if x.abs() > 3.0 {
            return x.signum() * (1.0 - (-x * x).exp() / (x.abs() * std::f64::consts::PI.sqrt()));
        }
        let mut sum = 0.0;
        let mut term = x;
        for n in 0..60 {
            sum += term / (2 * n + 1) as f64;
            term *= -x * x / (n + 1) as f64;
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    }

    #[test]
    fn fast_exp_is_accurate() {
        for i in -800..=800 {
            let x = i as f32 / 10.0;
            let relative = ((fast_exp(x) as f64) - (x as f64).exp()).abs() / (x as f64).exp();
            assert!(relative < 4e-7, "exp({x}): relative error {relative}");
        }
        // Near the bottom of f32's normal range only the absolute error matters.
        for i in -870..-800 {
            let x = i as f32 / 10.0;
            assert!(
                ((fast_exp(x) as f64) - (x as f64).exp()).abs() < 1e-40,
                "exp({x})"
            );
        }
    }

    #[test]
    fn gelu_matches_exact_gelu() {
        // Down to -30: where exp(-x²/2) would be subnormal, GELU stays 0.
        for i in -3000..=1000 {
            let x = i as f64 / 100.0;
            let exact = 0.5 * x * (1.0 + erf_reference(x / std::f64::consts::SQRT_2));
            for (fused, value) in [(false, gelu(x as f32)), (true, gelu_with::<true>(x as f32))] {
                let error = (value as f64 - exact).abs();
                assert!(
                    error < 1e-6 * (1.0 + x.abs()),
                    "gelu({x}), fused {fused}: error {error}"
                );
            }
        }
    }

    #[test]
    fn layer_norm_matches_its_definition() {
        let width = 40; // two whole vectors and a remainder
        let row: Vec<f32> = (0..width)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let residual: Vec<f32> = (0..width).map(|i| (i as f32).sin()).collect();
        let norm = LayerNorm {
            gamma: (0..width).map(|i| 1.0 + i as f32 * 0.01).collect(),
            beta: (0..width).map(|i| i as f32 * -0.02).collect(),
            eps: 1e-12,
        };
        let mut x = row.clone();
        add_residual_norm(&mut x, &residual, &norm, Threads::One);
        let sum: Vec<f64> = row
            .iter()
            .zip(&residual)
            .map(|(a, b)| (a + b) as f64)
            .collect();
        let mean = sum.iter().sum::<f64>() / width as f64;
        let var = sum.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
        for (i, (&got, v)) in x.iter().zip(&sum).enumerate() {
            let want =
                (v - mean) / (var + 1e-12).sqrt() * norm.gamma[i] as f64 + norm.beta[i] as f64;
            assert!(
                (got as f64 - want).abs() < 1e-5,
                "column {i}: {got} vs {want}"
            );
        }
    }
}
