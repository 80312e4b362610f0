//! `/predict_sync`, `/predict_batch` and `/predict_async`: parse and validate
//! the body, hand items to the model's batcher, shape modalkit's replies.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Json;
use axum::extract::{FromRequest, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use modalkit_core::wire::{AsyncInput, AsyncOutput, InferenceOutput, Meta};
use modalkit_core::{Batcher, InferencePipeline, ItemError, ItemTiming, SubmitOptions, Ticket};
use serde_json::Value;

use crate::async_jobs::{IdempotencyKey, parse_message};
use crate::error::ApiError;
use crate::extract::{JsonBody, parse_value, resolve_model, validate};
use crate::state::AppState;
use crate::traces::{request_span, request_traceparent};

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

/// One message in, one `InferenceOutput` out, with timing headers:
/// `x-queue-time` (ms from arrival to its batch's start),
/// `x-inference-time` (ms of compute, from its batch's start to its result),
/// `x-total-time` (ms in the handler, body parsing included) and
/// `x-batch-size`.
pub(crate) async fn predict_sync<P: InferencePipeline>(
    State(state): State<Arc<AppState<P>>>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let batcher = batcher_for(&state, query.as_deref())?;
    let trace = request_span(&request);
    let body = JsonBody::from_request(request, &()).await?;
    let input: P::Input = body.parse()?;
    validate(&input, "")?;
    let deadline = Instant::now() + state.limits.request_timeout;
    let timing = Arc::new(OnceLock::new());
    let mut options = with_deadline(deadline);
    options.timing = Some(Arc::clone(&timing));
    let submitted = Instant::now();
    let ticket = batcher.submit_with(input, options)?;
    let timeout = state.limits.request_timeout.as_secs_f64();
    let result = tokio::time::timeout_at(deadline.into(), ticket)
        .await
        .map_err(|_| ApiError::DeadlineExceeded(timeout))?;
    if let Some(timing) = timing.get() {
        trace.record_item(timing, None);
    }
    let output = match result {
        Ok(output) => InferenceOutput::success(output, Meta::new()),
        Err(ItemError::Item(message)) => InferenceOutput::failure(message, Meta::new()),
        Err(other) => return Err(other.into()),
    };
    let mut response = Json(output).into_response();
    add_timing_headers(response.headers_mut(), arrived, submitted, timing.get());
    Ok(response)
}

/// Adds a reply's timing headers (TEI's `x-queue-time` and
/// `x-inference-time`, plus the total and the batch size), straight into
/// its header map.
fn add_timing_headers(
    headers: &mut HeaderMap,
    arrived: Instant,
    submitted: Instant,
    timing: Option<&ItemTiming>,
) {
    let total = arrived.elapsed();
    let in_batcher = submitted.elapsed();
    // Names as constants: a `&str` name is parsed on every insert.
    headers.insert(TOTAL_TIME, millis(total));
    if let Some(timing) = timing {
        headers.insert(QUEUE_TIME, millis(timing.queue));
        headers.insert(
            INFERENCE_TIME,
            millis(in_batcher.saturating_sub(timing.queue)),
        );
        headers.insert(BATCH_SIZE, HeaderValue::from(timing.batch_size));
    }
}

const TOTAL_TIME: HeaderName = HeaderName::from_static("x-total-time");
const QUEUE_TIME: HeaderName = HeaderName::from_static("x-queue-time");
const INFERENCE_TIME: HeaderName = HeaderName::from_static("x-inference-time");
const BATCH_SIZE: HeaderName = HeaderName::from_static("x-batch-size");

/// Milliseconds with three decimals, from integer microseconds, written
/// digit by digit (`format!` and float formatting showed in the no-op
/// server's profile).
fn millis(duration: std::time::Duration) -> HeaderValue {
    let mut micros = duration.as_micros();
    // u128 has at most 39 digits, plus the point.
    let mut text = [0u8; 40];
    let mut start = text.len();
    let mut digits = 0;
    while digits < 4 || micros > 0 {
        if digits == 3 {
            start -= 1;
            text[start] = b'.';
        }
        start -= 1;
        text[start] = b'0' + (micros % 10) as u8;
        micros /= 10;
        digits += 1;
    }
    HeaderValue::from_bytes(&text[start..]).unwrap_or(HeaderValue::from_static("0.000"))
}

/// An array of messages in, one `InferenceOutput` per message out, in order.
/// Items enter the batcher one by one, so they mix with other traffic.
pub(crate) async fn predict_batch<P: InferencePipeline>(
    State(state): State<Arc<AppState<P>>>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Json<Vec<Output<P>>>, ApiError> {
    let batcher = batcher_for(&state, query.as_deref())?;
    let trace = request_span(&request);
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
    // Timings are collected only for a traced request's stage spans.
    let timings = trace.timing_cells(inputs.len());
    // If the queue cannot take them all, the whole request is refused and
    // the tickets already issued are dropped, cancelling their items.
    let tickets: Vec<Ticket<P::Output>> = inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| {
            let mut options = with_deadline(deadline);
            options.timing = timings.get(i).cloned();
            batcher.submit_with(input, options)
        })
        .collect::<Result<_, _>>()?;
    let timeout = state.limits.request_timeout.as_secs_f64();
    let collect = async {
        let mut outputs = Vec::with_capacity(tickets.len());
        for ticket in tickets {
            outputs.push(match ticket.await {
                Ok(output) => InferenceOutput::success(output, Meta::new()),
                Err(
                    ItemError::Item(message)
                    | ItemError::Pipeline(message)
                    | ItemError::InvalidInput(message),
                ) => InferenceOutput::failure(message, Meta::new()),
                Err(other) => return Err(ApiError::from(other)),
            });
        }
        Ok(outputs)
    };
    let outputs = tokio::time::timeout_at(deadline.into(), collect)
        .await
        .map_err(|_| ApiError::DeadlineExceeded(timeout))??;
    trace.record_items(&timings);
    Ok(Json(outputs))
}

/// Accepts a message as an async job and answers `{job_id}`: at once in
/// embedded mode, after SQS acknowledged it in durable mode. The result
/// goes to the named queues and the job store.
pub(crate) async fn predict_async<P: InferencePipeline>(
    State(state): State<Arc<AppState<P>>>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<(StatusCode, Json<AsyncOutput>), ApiError> {
    let model = resolve_model(query.as_deref(), &state.model_names)?.to_owned();
    if state.batcher(&model).is_none() {
        return Err(ApiError::UnknownModel(model, state.model_names.clone()));
    }
    let key_header = request
        .headers()
        .get(IDEMPOTENCY_KEY)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let traceparent = request_traceparent(&request);
    let body = JsonBody::from_request(request, &()).await?;
    let envelope: AsyncInput<Value> = body.parse()?;
    let input = parse_message::<P>(&envelope.message)?;
    let idempotency = match key_header {
        Some(key) => Some(IdempotencyKey::new(&key, &model, &envelope)?),
        None => None,
    };
    let job_id = state
        .jobs
        .accept(&model, envelope, input, idempotency, traceparent)
        .await?;
    // 200, as modalkit answers.
    Ok((
        StatusCode::OK,
        Json(AsyncOutput {
            job_id: job_id.to_string(),
        }),
    ))
}

/// The header that makes `/predict_async` idempotent.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn with_deadline(deadline: Instant) -> SubmitOptions {
    SubmitOptions {
        deadline: Some(deadline),
        on_start: None,
        timing: None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn millis_have_three_decimals() {
        for (duration, text) in [
            (Duration::from_micros(1_234_567), "1234.567"),
            (Duration::from_micros(42), "0.042"),
            (Duration::from_micros(1_000), "1.000"),
            (Duration::from_nanos(999), "0.000"),
            (Duration::MAX, "18446744073709551615999.999"),
        ] {
            assert_eq!(super::millis(duration), text, "{duration:?}");
        }
    }
}
