//! Reranking: TEI's `POST /rerank` (`query`, `texts`, `raw_scores`,
//! `return_text`, `truncate` → `[{index, text?, score}]`, best first) and
//! the Cohere/Jina shape on `POST /v1/rerank` and `/v2/rerank` (`query`,
//! `documents`, `top_n`, `return_documents` → `{id, model, results:
//! [{index, relevance_score, document?}], usage, meta}`). Every (query,
//! text) pair is one batcher item.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, Request, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ModelQuery, TeiError, TeiModel, Wanted, parse};
use crate::state::AppState;

#[derive(Deserialize)]
struct RerankRequest {
    query: String,
    texts: Vec<String>,
    #[serde(flatten)]
    truncation: super::Truncation,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
}

#[derive(Serialize)]
pub(super) struct Rank {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    score: f32,
}

/// The logistic function: a cross-encoder's logit to a 0..1 relevance.
pub(super) fn sigmoid(logit: f32) -> f32 {
    1.0 / (1.0 + (-logit).exp())
}

/// Scores every text against `query`: (index, logit, tokens), best first.
async fn score_all<P: TeiModel>(
    state: &AppState<P>,
    model: Option<&str>,
    query: &str,
    texts: &[String],
    truncate: Option<bool>,
    field: &str,
) -> Result<(String, Vec<(usize, f32)>, usize), TeiError> {
    let (name, batcher) = super::pick(state, model, Wanted::Reranker)?;
    super::check_count(state, texts.len(), field)?;
    let inputs = texts
        .iter()
        .map(|text| P::pair_input(query.to_owned(), text.clone(), truncate))
        .collect();
    let outputs = super::submit_all(state, batcher, inputs, field).await?;
    let mut scored = Vec::with_capacity(outputs.len());
    let mut tokens = 0;
    for (index, output) in outputs.iter().enumerate() {
        let logit = *P::logits(output)
            .first()
            .ok_or_else(|| TeiError::backend("the model returned no score"))?;
        if logit.is_nan() {
            return Err(TeiError::backend("score is NaN"));
        }
        tokens += P::token_count(output);
        scored.push((index, logit));
    }
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok((name.to_owned(), scored, tokens))
}

pub(super) async fn rerank<P: TeiModel>(
    State(state): State<Arc<AppState<P>>>,
    Query(query): Query<ModelQuery>,
    request: Request,
) -> Result<Json<Vec<Rank>>, TeiError> {
    let request: RerankRequest = parse(request).await?;
    let truncate = request.truncation.truncate()?;
    let (_, scored, _) = score_all(
        &state,
        query.model_name.as_deref(),
        &request.query,
        &request.texts,
        truncate,
        "texts",
    )
    .await?;
    let ranks = scored
        .into_iter()
        .map(|(index, logit)| Rank {
            index,
            text: request.return_text.then(|| request.texts[index].clone()),
            score: if request.raw_scores {
                logit
            } else {
                sigmoid(logit)
            },
        })
        .collect();
    Ok(Json(ranks))
}

/// A document: a string, or Cohere's and Jina's `{"text": ...}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Document {
    Text(String),
    Object { text: String },
}

#[derive(Deserialize)]
struct CohereRequest {
    #[serde(default)]
    model: Option<String>,
    query: String,
    documents: Vec<Document>,
    #[serde(default)]
    top_n: Option<usize>,
    #[serde(default)]
    return_documents: bool,
}

pub(super) async fn rerank_cohere<P: TeiModel>(
    State(state): State<Arc<AppState<P>>>,
    Query(query): Query<ModelQuery>,
    request: Request,
) -> Result<Json<Value>, TeiError> {
    let request: CohereRequest = parse(request).await?;
    if request.top_n == Some(0) {
        return Err(TeiError::validation("top_n must be at least 1"));
    }
    let texts: Vec<String> = request
        .documents
        .into_iter()
        .map(|document| match document {
            Document::Text(text) | Document::Object { text } => text,
        })
        .collect();
    // The body's `model` picks a served reranker by name; any other name
    // (clients must send one) means the server's reranker.
    let named = request
        .model
        .as_deref()
        .filter(|name| state.batcher(name).is_some());
    let (model, scored, tokens) = score_all(
        &state,
        query.model_name.as_deref().or(named),
        &request.query,
        &texts,
        None,
        "documents",
    )
    .await?;
    let results: Vec<Value> = scored
        .into_iter()
        .take(request.top_n.unwrap_or(usize::MAX))
        .map(|(index, logit)| {
            let mut result = json!({"index": index, "relevance_score": sigmoid(logit)});
            if request.return_documents {
                result["document"] = json!({"text": texts[index]});
            }
            result
        })
        .collect();
    Ok(Json(json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "model": model,
        "results": results,
        "usage": {"total_tokens": tokens},
        "meta": {
            "api_version": {"version": "2"},
            "billed_units": {"search_units": 1},
        },
    })))
}
