//! `/predict_sync`, `/predict_batch` and `/predict_async`: parse and validate
//! the body, hand items to the model's batcher, shape modalkit's replies.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{FromRequest, RawQuery, Request, State};
use axum::http::StatusCode;
use modalkit_core::wire::{AsyncInput, AsyncOutput, InferenceOutput, Meta};
use modalkit_core::{Batcher, Error, InferencePipeline, SubmitOptions, Ticket};
use modalkit_queue::{Delivery, ItemOutcome, deliver_outcome};
use serde_json::Value;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{JsonBody, parse_value, resolve_model, validate};
use crate::jobs::{JobState, JobStore};
use crate::state::AppState;

type Output<P> = InferenceOutput<<P as InferencePipeline>::Output>;

fn batcher_for<'a, P: InferencePipeline>(
    state: &'a AppState<P>,
    query: Option<&str>,
) -> Result<&'a Arc<Batcher<P>>, ApiError> {
    let model = resolve_model(query, &state.model_names)?;
    state
        .batcher(model)
        .ok_or_else(|| ApiError::UnknownModel(model.to_owned(), state.model_names.clone()))
}

/// One message in, one `InferenceOutput` out.
pub async fn predict_sync<P: InferencePipeline>(
    State(state): State<Arc<AppState<P>>>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Json<Output<P>>, ApiError> {
    let batcher = batcher_for(&state, query.as_deref())?;
    let body = JsonBody::from_request(request, &()).await?;
    let input: P::Input = body.parse()?;
    validate(&input, "")?;
    let deadline = Instant::now() + state.limits.request_timeout;
    let ticket = batcher.submit_with(input, with_deadline(deadline))?;
    let timeout = state.limits.request_timeout.as_secs_f64();
    let result = tokio::time::timeout_at(deadline.into(), ticket)
        .await
        .map_err(|_| ApiError::DeadlineExceeded(timeout))?;
    match result {
        Ok(output) => Ok(Json(InferenceOutput::success(output, Meta::new()))),
        Err(Error::Item(message)) => Ok(Json(InferenceOutput::failure(message, Meta::new()))),
        Err(Error::DeadlineExceeded) => Err(ApiError::DeadlineExceeded(timeout)),
        Err(other) => Err(other.into()),
    }
}

/// An array of messages in, one `InferenceOutput` per message out, in order.
/// Items enter the batcher one by one, so they mix with other traffic.
pub async fn predict_batch<P: InferencePipeline>(
    State(state): State<Arc<AppState<P>>>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Json<Vec<Output<P>>>, ApiError> {
    let batcher = batcher_for(&state, query.as_deref())?;
    let body = JsonBody::from_request(request, &()).await?;
    let Value::Array(messages) = body.value()? else {
        return Err(ApiError::InvalidBody {
            path: String::new(),
            message: "expected a JSON array of messages".to_owned(),
        });
    };
    let limit = state.limits.max_batch_request_items;
    if messages.len() > limit {
        return Err(ApiError::TooManyItems {
            got: messages.len(),
            limit,
        });
    }
    let mut inputs = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let prefix = format!("[{i}]");
        let input: P::Input = parse_value(message, &prefix)?;
        validate(&input, &prefix)?;
        inputs.push(input);
    }
    let deadline = Instant::now() + state.limits.request_timeout;
    // If the queue cannot take them all, the whole request is refused and
    // the tickets already issued are dropped, cancelling their items.
    let tickets: Vec<Ticket<P::Output>> = inputs
        .into_iter()
        .map(|input| batcher.submit_with(input, with_deadline(deadline)))
        .collect::<Result<_, _>>()?;
    let timeout = state.limits.request_timeout.as_secs_f64();
    let collect = async {
        let mut outputs = Vec::with_capacity(tickets.len());
        for ticket in tickets {
            outputs.push(match ticket.await {
                Ok(output) => InferenceOutput::success(output, Meta::new()),
                Err(
                    Error::Item(message) | Error::Pipeline(message) | Error::InvalidInput(message),
                ) => InferenceOutput::failure(message, Meta::new()),
                Err(Error::DeadlineExceeded) => return Err(ApiError::DeadlineExceeded(timeout)),
                Err(other) => return Err(other.into()),
            });
        }
        Ok(outputs)
    };
    let outputs = tokio::time::timeout_at(deadline.into(), collect)
        .await
        .map_err(|_| ApiError::DeadlineExceeded(timeout))??;
    Ok(Json(outputs))
}

/// Queues a message and answers `{job_id}` at once; the result goes to the
/// named queues and the job store.
pub async fn predict_async<P: InferencePipeline>(
    State(state): State<Arc<AppState<P>>>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<(StatusCode, Json<AsyncOutput>), ApiError> {
    let batcher = batcher_for(&state, query.as_deref())?;
    let body = JsonBody::from_request(request, &()).await?;
    let envelope: AsyncInput<Value> = body.parse()?;
    let input: P::Input = parse_value(&envelope.message, "message")?;
    validate(&input, "message")?;

    let job_id = state.jobs.create(batcher.model()).ok_or_else(|| {
        ApiError::Overloaded("the job store is full of unfinished jobs".to_owned())
    })?;
    let jobs = Arc::clone(&state.jobs);
    let options = SubmitOptions {
        deadline: Some(Instant::now() + state.limits.async_timeout),
        on_start: Some(Box::new(move || jobs.set(job_id, JobState::Running))),
    };
    let ticket = match batcher.submit_with(input, options) {
        Ok(ticket) => ticket,
        Err(err) => {
            state.jobs.remove(job_id);
            return Err(err.into());
        }
    };
    let job = AsyncJob {
        id: job_id,
        jobs: Arc::clone(&state.jobs),
        delivery: Arc::clone(&state.delivery),
        envelope,
    };
    state.async_jobs.spawn(job.finish(ticket));
    Ok((
        StatusCode::ACCEPTED,
        Json(AsyncOutput {
            job_id: job_id.to_string(),
        }),
    ))
}

fn with_deadline(deadline: Instant) -> SubmitOptions {
    SubmitOptions {
        deadline: Some(deadline),
        on_start: None,
    }
}

/// An accepted async job: awaits its result, delivers it, records it.
pub struct AsyncJob {
    /// The job's id.
    pub id: Uuid,
    /// Where its state is recorded.
    pub jobs: Arc<JobStore>,
    /// Where its result is sent.
    pub delivery: Arc<Delivery>,
    /// The request: message, queues, meta.
    pub envelope: AsyncInput<Value>,
}

impl AsyncJob {
    /// Waits for the item, delivers success or failure to the named queue
    /// (if any), then records the final state.
    pub async fn finish<O: serde::Serialize>(self, ticket: Ticket<O>) {
        let result = ticket.await;
        let state = match deliver_outcome(&self.delivery, self.envelope, result).await {
            ItemOutcome::Succeeded(output) => JobState::Succeeded { output },
            ItemOutcome::Failed(error) => JobState::Failed { error },
        };
        self.jobs.set(self.id, state);
    }
}
