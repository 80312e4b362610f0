//! `GET /info` (what the model is and the server's limits, in TEI's
//! fields) and `POST /tokenize` (`inputs`, `add_special_tokens`,
//! `prompt_name` → each input's tokens with byte offsets). Both ask the
//! loaded pipeline directly: neither waits in the batch queue.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, Request, State};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Inputs, ModelKind, ModelQuery, TeiError, TeiModel, Token, Wanted, parse};
use crate::state::AppState;

pub(super) async fn info<P: TeiModel>(
    State(state): State<Arc<AppState<P>>>,
    Query(query): Query<ModelQuery>,
) -> Result<Json<Value>, TeiError> {
    let (name, batcher) = super::pick(&state, query.model_name.as_deref(), Wanted::Any)?;
    let pipeline = batcher.pipeline();
    let labels = |labels: &[String]| {
        let id2label: Map<String, Value> = labels
            .iter()
            .enumerate()
            .map(|(i, label)| (i.to_string(), Value::from(label.as_str())))
            .collect();
        let label2id: Map<String, Value> = labels
            .iter()
            .enumerate()
            .map(|(i, label)| (label.clone(), Value::from(i)))
            .collect();
        json!({"id2label": id2label, "label2id": label2id})
    };
    let model_type = match pipeline.kind() {
        ModelKind::Embedding { pooling } => json!({"embedding": {"pooling": pooling}}),
        ModelKind::Reranker { label } => json!({"reranker": labels(std::slice::from_ref(label))}),
        ModelKind::Classifier { labels: names } => json!({"classifier": labels(names)}),
    };
    let config = batcher.config();
    let max_input_length = pipeline.max_input_length();
    Ok(Json(json!({
        "model_id": pipeline.model_id(),
        "model_sha": null,
        "model_dtype": pipeline.model_dtype(),
        "served_model_name": name,
        "model_type": model_type,
        "max_concurrent_requests": config.max_queue_depth,
        "max_input_length": max_input_length,
        "max_batch_tokens": config
            .max_batch_cost
            .unwrap_or(max_input_length * config.max_batch_size),
        "max_batch_requests": config.max_batch_size,
        "max_client_batch_size": state.limits.max_batch_request_items,
        "auto_truncate": true,
        "tokenization_workers": config.workers,
        "version": env!("CARGO_PKG_VERSION"),
        "sha": null,
        "docker_label": null,
    })))
}

#[derive(Deserialize)]
struct TokenizeRequest {
    inputs: Inputs,
    #[serde(default = "yes")]
    add_special_tokens: bool,
    #[serde(default)]
    prompt_name: Option<String>,
}

fn yes() -> bool {
    true
}

pub(super) async fn tokenize<P: TeiModel>(
    State(state): State<Arc<AppState<P>>>,
    Query(query): Query<ModelQuery>,
    request: Request,
) -> Result<Json<Vec<Vec<Token>>>, TeiError> {
    let (_, batcher) = super::pick(&state, query.model_name.as_deref(), Wanted::Any)?;
    let request: TokenizeRequest = parse(request).await?;
    let texts = request.inputs.texts()?;
    super::check_count(&state, texts.len(), "inputs")?;
    let pipeline = batcher.pipeline();
    texts
        .iter()
        .map(|text| {
            pipeline
                .tokenize(
                    text,
                    request.add_special_tokens,
                    request.prompt_name.as_deref(),
                )
                .map_err(TeiError::validation)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Json)
}
