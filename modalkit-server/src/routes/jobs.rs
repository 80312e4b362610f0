//! `GET /jobs/{job_id}`: an async job's state and result.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use modalkit_core::InferencePipeline;
use uuid::Uuid;

use crate::error::ApiError;
use crate::jobs::JobView;
use crate::state::AppState;

/// The job's view, 400 for a malformed id, 404 for an unknown or expired one.
pub async fn get_job<P: InferencePipeline>(
    State(state): State<Arc<AppState<P>>>,
    Path(job_id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = Uuid::parse_str(&job_id).map_err(|_| ApiError::InvalidJobId(truncate(&job_id)))?;
    state
        .jobs
        .get(id)
        .map(Json)
        .ok_or(ApiError::JobNotFound(job_id))
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}
