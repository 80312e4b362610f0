//! `GET /jobs/{job_id}` and `POST /jobs/{job_id}/cancel`: an async job's
//! record, from whichever container answers.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use modalkit_core::InferencePipeline;
use uuid::Uuid;

use crate::async_jobs::record::JobRecord;
use crate::error::ApiError;
use crate::state::AppState;

/// The job's record; 400 for a malformed id, 404 for an unknown or expired
/// one.
pub(crate) async fn get_job<P: InferencePipeline>(
    State(state): State<Arc<AppState<P>>>,
    Path(job_id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    let id = parse_id(&job_id)?;
    state
        .jobs
        .get(id)
        .await?
        .map(Json)
        .ok_or(ApiError::JobNotFound(job_id))
}

/// Cancels a queued job; 409 with its state if it is running or ended.
pub(crate) async fn cancel_job<P: InferencePipeline>(
    State(state): State<Arc<AppState<P>>>,
    Path(job_id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    let id = parse_id(&job_id)?;
    Ok(Json(state.jobs.cancel(id).await?))
}

fn parse_id(job_id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(job_id).map_err(|_| ApiError::InvalidJobId(job_id.chars().take(64).collect()))
}
