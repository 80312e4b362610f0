//! `POST /predict`: classification, as TEI answers it. `inputs` is a text,
//! a pair `["a", "b"]`, or a batch `[["a"], ["b", "c"]]`; each input gets
//! every label with its score, best first (softmax over the labels, or the
//! sigmoid for a one-label model; the logits with `raw_scores`); a batch
//! gets a list per input.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, Request, State};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rerank::sigmoid;
use super::{ModelKind, ModelQuery, TeiError, TeiModel, Wanted, parse};
use crate::state::AppState;

#[derive(Deserialize)]
struct PredictRequest {
    inputs: Value,
    #[serde(flatten)]
    truncation: super::Truncation,
    #[serde(default)]
    raw_scores: bool,
}

#[derive(Serialize)]
struct LabelScore {
    score: f32,
    label: String,
}

/// One input: a text, or a pair.
type Text = (String, Option<String>);

/// `inputs`' texts, and whether it was a batch.
fn texts(inputs: Value) -> Result<(Vec<Text>, bool), TeiError> {
    let shape = "`inputs` must be a string, a pair [string, string], or a list of [string] and [string, string]";
    let one = |value: Value| -> Result<Text, TeiError> {
        match value {
            Value::String(text) => Ok((text, None)),
            Value::Array(parts) => match <[Value; 1]>::try_from(parts) {
                Ok([Value::String(text)]) => Ok((text, None)),
                Ok(_) => Err(TeiError::validation(shape)),
                Err(parts) => match <[Value; 2]>::try_from(parts) {
                    Ok([Value::String(a), Value::String(b)]) => Ok((a, Some(b))),
                    _ => Err(TeiError::validation(shape)),
                },
            },
            _ => Err(TeiError::validation(shape)),
        }
    };
    match inputs {
        Value::String(text) => Ok((vec![(text, None)], false)),
        Value::Array(items) if items.len() == 2 && items.iter().all(Value::is_string) => {
            Ok((vec![one(Value::Array(items))?], false))
        }
        Value::Array(items) if items.iter().all(Value::is_array) => {
            Ok((items.into_iter().map(one).collect::<Result<_, _>>()?, true))
        }
        _ => Err(TeiError::validation(shape)),
    }
}

pub(super) async fn predict<P: TeiModel>(
    State(state): State<Arc<AppState<P>>>,
    Query(query): Query<ModelQuery>,
    request: Request,
) -> Result<Json<Value>, TeiError> {
    let (_, batcher) = super::pick(&state, query.model_name.as_deref(), Wanted::Classifier)?;
    let labels = match batcher.pipeline().kind() {
        ModelKind::Classifier { labels } => labels.as_slice(),
        ModelKind::Reranker { label } => std::slice::from_ref(label),
        ModelKind::Embedding { .. } => {
            return Err(TeiError::backend("Model is not a classifier model"));
        }
    };
    let request: PredictRequest = parse(request).await?;
    let truncate = request.truncation.truncate()?;
    let (texts, batch) = texts(request.inputs)?;
    super::check_count(&state, texts.len(), "inputs")?;
    let inputs = texts
        .into_iter()
        .map(|(first, second)| match second {
            Some(second) => P::pair_input(first, second, truncate),
            None => P::text_input(
                first,
                super::TextOptions {
                    truncate,
                    ..Default::default()
                },
            ),
        })
        .collect();
    let outputs = super::submit_all(&state, batcher, inputs, "inputs").await?;
    let mut answers = Vec::with_capacity(outputs.len());
    for output in &outputs {
        let logits = P::logits(output);
        if logits.len() != labels.len() {
            return Err(TeiError::backend(format!(
                "the model returned {} scores for {} labels",
                logits.len(),
                labels.len()
            )));
        }
        answers.push(scores(logits, labels, request.raw_scores));
    }
    let body = if batch {
        serde_json::to_value(answers)
    } else {
        serde_json::to_value(answers.into_iter().next().unwrap_or_default())
    };
    body.map(Json)
        .map_err(|err| TeiError::backend(err.to_string()))
}

/// Every label with its score, best first.
fn scores(logits: &[f32], labels: &[String], raw: bool) -> Vec<LabelScore> {
    let values: Vec<f32> = if raw {
        logits.to_vec()
    } else if logits.len() == 1 {
        vec![sigmoid(logits[0])]
    } else {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        exps.iter().map(|e| e / sum).collect()
    };
    let mut scored: Vec<LabelScore> = values
        .into_iter()
        .zip(labels)
        .map(|(score, label)| LabelScore {
            score,
            label: label.clone(),
        })
        .collect();
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    scored
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inputs_shapes() {
        let (one, batch) = texts(json!("a")).ok().unwrap_or_default();
        assert_eq!((one, batch), (vec![("a".to_owned(), None)], false));
        let (pair, batch) = texts(json!(["a", "b"])).ok().unwrap_or_default();
        assert_eq!(
            (pair, batch),
            (vec![("a".to_owned(), Some("b".to_owned()))], false)
        );
        let (many, batch) = texts(json!([["a"], ["b", "c"]])).ok().unwrap_or_default();
        assert_eq!(many.len(), 2);
        assert!(batch);
        assert!(texts(json!(["a", "b", "c"])).is_err());
        assert!(texts(json!([["a", "b", "c"]])).is_err());
        assert!(texts(json!(3)).is_err());
    }

    #[test]
    fn softmax_sorted_and_sigmoid_for_one_label() {
        let labels = vec!["neg".to_owned(), "pos".to_owned()];
        let scored = scores(&[0.0, 2.0f32.ln()], &labels, false);
        assert_eq!(scored[0].label, "pos");
        assert!((scored[0].score - 2.0 / 3.0).abs() < 1e-6);
        let one = scores(&[0.0], &labels[..1], false);
        assert!((one[0].score - 0.5).abs() < 1e-6);
        assert_eq!(scores(&[-3.0], &labels[..1], true)[0].score, -3.0);
    }
}
