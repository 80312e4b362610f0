//! Choosing the next token from a row of logits: greedy at temperature 0,
//! else softmax at the temperature, cut to the smallest set of tokens whose
//! probability reaches `top_p`, and drawn with the sequence's own seeded
//! generator (the same seed gives the same text).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A sequence's sampler.
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    rng: StdRng,
}

impl Sampler {
    /// A sampler at `temperature` (0: greedy) and `top_p`, seeded by
    /// `seed` or at random.
    pub fn new(temperature: f32, top_p: f32, seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Sampler {
            temperature,
            top_p,
            rng,
        }
    }

    /// The chosen token of `logits`.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut weights: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(id, &l)| (id as u32, ((l - max) / self.temperature).exp()))
            .collect();
        let total: f32 = weights.iter().map(|w| w.1).sum();
        if self.top_p < 1.0 {
            // Stable: among equal weights the lower id comes first.
            weights.sort_by(|a, b| b.1.total_cmp(&a.1));
            let mut mass = 0.0;
            let keep = weights
                .iter()
                .position(|w| {
                    mass += w.1 / total;
                    mass >= self.top_p
                })
                .map_or(weights.len(), |i| i + 1);
            weights.truncate(keep);
        }
        let kept: f32 = weights.iter().map(|w| w.1).sum();
        let mut target = self.rng.random::<f32>() * kept;
        for &(id, weight) in &weights {
            if target < weight {
                return id;
            }
            target -= weight;
        }
        weights.last().map_or_else(|| argmax(logits), |w| w.0)
    }
}

/// The index of the largest value (the first of equals), as torch's argmax.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_largest() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        assert_eq!(Sampler::new(0.0, 1.0, None).pick(&[0.0, 1.0, 0.5]), 1);
    }

    #[test]
    fn a_seed_repeats_and_top_p_cuts_the_tail() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = Sampler::new(1.0, 1.0, Some(seed));
            (0..20).map(|_| s.pick(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        // With a tiny top_p only the most likely token (the first of the
        // 6s at index 6) remains.
        let mut narrow = Sampler::new(1.0, 0.01, Some(1));
        assert!((0..20).all(|_| narrow.pick(&logits) == 6));
    }
}
