//! What the encoders take and how their token vectors become one vector
//! per input: [`Tokens`] (ids, and where a pair's second text starts) and
//! [`Pooling`] (sentence-transformers' `1_Pooling` modes).

use std::ops::Range;

/// One input of an encoder: its token ids and, for a pair (a
/// cross-encoder's query and text), where the second segment starts:
/// tokens from there on get token type 1, as BERT's tokenizer marks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens<'a> {
    /// Token ids, `[CLS]` and `[SEP]` included.
    pub ids: &'a [u32],
    /// Index of the first token of type 1; `ids.len()` for a single text.
    pub second_segment: usize,
}

impl<'a> Tokens<'a> {
    /// A single text: every token of type 0.
    pub fn single(ids: &'a [u32]) -> Self {
        Tokens {
            ids,
            second_segment: ids.len(),
        }
    }

    /// A pair whose second text starts at `second_segment`.
    pub fn pair(ids: &'a [u32], second_segment: usize) -> Self {
        Tokens {
            ids,
            second_segment: second_segment.min(ids.len()),
        }
    }

    /// The tokens' count.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The token type of position `index`.
    pub fn token_type(&self, index: usize) -> u32 {
        u32::from(index >= self.second_segment)
    }
}

impl<'a> From<&'a [u32]> for Tokens<'a> {
    fn from(ids: &'a [u32]) -> Self {
        Tokens::single(ids)
    }
}

/// How token vectors become one vector (sentence-transformers' pooling
/// modes; `Cls` is also what a sequence classifier's head reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// The mean of the tokens.
    #[default]
    Mean,
    /// The first token's vector (`[CLS]`).
    Cls,
    /// The largest value of each dimension over the tokens.
    Max,
}

impl Pooling {
    /// The name sentence-transformers gives it (`mean`, `cls`, `max`).
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
        }
    }

    /// Pools the rows `span` of `states` (`tokens × width`, row-major); an
    /// empty span pools to zeros.
    pub fn pool(self, states: &[f32], span: Range<usize>, width: usize) -> Vec<f32> {
        let mut pooled = vec![0f32; width];
        if span.is_empty() {
            return pooled;
        }
        let rows = states[span.start * width..span.end * width].chunks_exact(width);
        match self {
            Pooling::Cls => pooled.copy_from_slice(&states[span.start * width..][..width]),
            Pooling::Mean => {
                for row in rows {
                    pooled.iter_mut().zip(row).for_each(|(p, &v)| *p += v);
                }
                let count = span.len() as f32;
                pooled.iter_mut().for_each(|p| *p /= count);
            }
            Pooling::Max => {
                pooled.fill(f32::NEG_INFINITY);
                for row in rows {
                    pooled.iter_mut().zip(row).for_each(|(p, &v)| *p = p.max(v));
                }
            }
        }
        pooled
    }
}

/// Scales `vector` to unit length (sentence-transformers' `Normalize`:
/// a zero vector stays zero).
pub fn normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    vector.iter_mut().for_each(|v| *v /= norm);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_modes_over_a_span() {
        // Three tokens of width 2; the span skips the first row.
        let states = [9.0, 9.0, 1.0, -4.0, 3.0, 2.0, 5.0, 0.0];
        assert_eq!(Pooling::Mean.pool(&states, 1..3, 2), vec![2.0, -1.0]);
        assert_eq!(Pooling::Cls.pool(&states, 1..3, 2), vec![1.0, -4.0]);
        assert_eq!(Pooling::Max.pool(&states, 1..4, 2), vec![5.0, 2.0]);
        assert_eq!(Pooling::Max.pool(&states, 2..2, 2), vec![0.0, 0.0]);
    }

    #[test]
    fn token_types_start_at_the_second_segment() {
        let ids = [101, 7, 102, 8, 9, 102];
        let pair = Tokens::pair(&ids, 3);
        let types: Vec<u32> = (0..ids.len()).map(|i| pair.token_type(i)).collect();
        assert_eq!(types, vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(Tokens::single(&ids).token_type(5), 0);
        let mut v = [3.0, 4.0];
        normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
    }
}
