//! `POST /embed`: `{"inputs": text | [texts], "normalize", "truncate",
//! "truncation_direction", "prompt_name", "dimensions"}` to one vector per
//! text, always nested (`[[...]]`), as TEI answers.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, Request, State};
use serde::Deserialize;

use super::{Inputs, ModelQuery, TeiError, TeiModel, TextOptions, Wanted, parse};
use crate::state::AppState;

#[derive(Deserialize)]
struct EmbedRequest {
    inputs: Inputs,
    #[serde(default = "yes")]
    normalize: bool,
    #[serde(flatten)]
    truncation: super::Truncation,
    #[serde(default)]
    prompt_name: Option<String>,
    #[serde(default)]
    dimensions: Option<usize>,
}

fn yes() -> bool {
    true
}

pub(super) async fn embed<P: TeiModel>(
    State(state): State<Arc<AppState<P>>>,
    Query(query): Query<ModelQuery>,
    request: Request,
) -> Result<Json<Vec<Vec<f32>>>, TeiError> {
    let (_, batcher) = super::pick(&state, query.model_name.as_deref(), Wanted::Embedding)?;
    let request: EmbedRequest = parse(request).await?;
    let truncate = request.truncation.truncate()?;
    let texts = request.inputs.texts()?;
    super::check_count(&state, texts.len(), "inputs")?;
    if texts.iter().any(String::is_empty) {
        return Err(TeiError::empty(
            "Input validation error: `inputs` cannot be empty",
        ));
    }
    if request.dimensions == Some(0) {
        return Err(TeiError::validation(
            "Input validation error: `dimensions` should be positive",
        ));
    }
    // Shortened vectors are normalized after the cut, as TEI does.
    let options = TextOptions {
        normalize: Some(request.normalize && request.dimensions.is_none()),
        truncate,
        prompt_name: request.prompt_name,
    };
    let inputs = texts
        .into_iter()
        .map(|text| P::text_input(text, options.clone()))
        .collect();
    let outputs = super::submit_all(&state, batcher, inputs, "inputs").await?;
    let mut vectors = Vec::with_capacity(outputs.len());
    for output in &outputs {
        let vector = P::embedding(output)
            .ok_or_else(|| TeiError::backend("the model returned no embedding"))?;
        vectors.push(match request.dimensions {
            None => vector.to_vec(),
            Some(dimensions) => shorten(vector, dimensions, request.normalize)?,
        });
    }
    Ok(Json(vectors))
}

/// The first `dimensions` values, normalized if asked.
fn shorten(vector: &[f32], dimensions: usize, normalize: bool) -> Result<Vec<f32>, TeiError> {
    if dimensions > vector.len() {
        return Err(TeiError::validation(format!(
            "Input validation error: `dimensions` should be smaller than the maximum embedding dimension ({})",
            vector.len()
        )));
    }
    let mut short = vector[..dimensions].to_vec();
    if normalize {
        let norm = short.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        short.iter_mut().for_each(|x| *x /= norm);
    }
    Ok(short)
}
