//! The head of `BertForSequenceClassification` (cross-encoders and
//! classifiers): BERT's pooler (a dense layer and tanh on the `[CLS]`
//! vector), then one linear layer to a logit per label. It runs on the CPU
//! for either encoder: a few thousand products per input.

use super::weights::Weights;

/// Pooler and classifier weights.
#[derive(Debug, Clone)]
pub struct ClassifierHead {
    hidden: usize,
    labels: usize,
    /// `hidden × hidden`, row per output.
    pooler_weight: Vec<f32>,
    pooler_bias: Vec<f32>,
    /// `labels × hidden`, row per label.
    classifier_weight: Vec<f32>,
    classifier_bias: Vec<f32>,
}

impl ClassifierHead {
    /// Takes `pooler.dense.*` and `classifier.*` out of `weights`.
    pub fn load(weights: &mut Weights, hidden: usize, labels: usize) -> Result<Self, String> {
        if labels == 0 {
            return Err("a classifier needs at least one label".to_owned());
        }
        Ok(ClassifierHead {
            hidden,
            labels,
            pooler_weight: weights.values("pooler.dense.weight", &[hidden, hidden])?,
            pooler_bias: weights.values("pooler.dense.bias", &[hidden])?,
            classifier_weight: weights.values("classifier.weight", &[labels, hidden])?,
            classifier_bias: weights.values("classifier.bias", &[labels])?,
        })
    }

    /// How many logits [`ClassifierHead::logits`] returns.
    pub fn labels(&self) -> usize {
        self.labels
    }

    /// The logits for one input's `[CLS]` vector (the encoder's last hidden
    /// state at position 0).
    pub fn logits(&self, cls: &[f32]) -> Vec<f32> {
        let pooled: Vec<f32> = affine(&self.pooler_weight, &self.pooler_bias, cls, self.hidden)
            .into_iter()
            .map(f32::tanh)
            .collect();
        affine(
            &self.classifier_weight,
            &self.classifier_bias,
            &pooled,
            self.hidden,
        )
    }
}

/// `weight · x + bias` for a row-major `weight` of rows `width` long,
/// summed in f64 (the head is tiny; its sums need not round like a GEMM's).
fn affine(weight: &[f32], bias: &[f32], x: &[f32], width: usize) -> Vec<f32> {
    weight
        .chunks_exact(width)
        .zip(bias)
        .map(|(row, &b)| {
            let dot: f64 = row.iter().zip(x).map(|(&w, &v)| f64::from(w * v)).sum();
            (dot + f64::from(b)) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooler_then_classifier() {
        let head = ClassifierHead {
            hidden: 2,
            labels: 2,
            pooler_weight: vec![1.0, 0.0, 0.0, 2.0],
            pooler_bias: vec![0.0, -1.0],
            classifier_weight: vec![1.0, 1.0, 2.0, -1.0],
            classifier_bias: vec![0.5, 0.0],
        };
        let logits = head.logits(&[0.5, 1.0]);
        let (a, b) = (0.5f32.tanh(), 1.0f32.tanh());
        assert!((logits[0] - (a + b + 0.5)).abs() < 1e-6, "{logits:?}");
        assert!((logits[1] - (2.0 * a - b)).abs() < 1e-6, "{logits:?}");
    }
}
