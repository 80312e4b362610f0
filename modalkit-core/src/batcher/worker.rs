//! One worker thread: loads its own pipeline, then computes batches until the
//! intake closes. Splits failing batches to isolate bad items, and turns a
//! fatal device error into the batcher's fatal path.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::ItemTiming;
use super::intake::{Next, Pending, Shared};
use crate::context::ModelContext;
use crate::error::{Error, Result};
use crate::pipeline::{ErrorKind, InferencePipeline, ItemResult, PipelineError};

type Reply<O> = oneshot::Sender<Result<O>>;

/// The worker's main loop.
pub(super) fn run<P: InferencePipeline>(
    shared: Arc<Shared<P>>,
    ctx: ModelContext,
    loaded: mpsc::Sender<Result<String>>,
) {
    let pipeline = match catch_unwind(|| P::load(&ctx)) {
        Ok(Ok(pipeline)) => pipeline,
        Ok(Err(err)) => {
            let _ = loaded.send(Err(Error::Load {
                model: shared.model.clone(),
                message: err.to_string(),
            }));
            return;
        }
        Err(panic) => {
            let _ = loaded.send(Err(Error::Load {
                model: shared.model.clone(),
                message: format!("load panicked: {}", panic_message(&panic)),
            }));
            return;
        }
    };
    let _ = loaded.send(Ok(pipeline.device()));
    drop(loaded);

    let mut seen_reload = 0;
    loop {
        match shared.next(&mut seen_reload) {
            Next::Exit => return,
            Next::Reload => reload(&shared, &pipeline),
            Next::Batch(batch) => {
                let _shared_gate = shared
                    .compute_gate
                    .read()
                    .unwrap_or_else(|p| p.into_inner());
                if let Err(fatal) = compute_batch(&shared, &pipeline, batch) {
                    shared.fail(&fatal);
                    return;
                }
            }
        }
    }
}

fn reload<P: InferencePipeline>(shared: &Shared<P>, pipeline: &P) {
    let _exclusive = shared
        .compute_gate
        .write()
        .unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    match catch_unwind(AssertUnwindSafe(|| pipeline.on_volume_reload())) {
        Ok(Ok(())) => {
            tracing::info!(model = %shared.model, elapsed = ?started.elapsed(), "volume reloaded")
        }
        Ok(Err(err)) => {
            tracing::error!(model = %shared.model, %err, "on_volume_reload failed; serving goes on")
        }
        Err(panic) => {
            tracing::error!(model = %shared.model, panic = panic_message(&panic), "on_volume_reload panicked; serving goes on")
        }
    }
}

/// Computes one batch and answers every item. Returns the fatal error's text
/// if the device failed (the unanswered items are then failed as unavailable).
fn compute_batch<P: InferencePipeline>(
    shared: &Shared<P>,
    pipeline: &P,
    batch: Vec<Pending<P>>,
) -> Result<(), String> {
    let started = Instant::now();
    let mut inputs = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let mut timings = Vec::new();
    for pending in batch {
        shared.metrics.queue_wait.record(
            started
                .saturating_duration_since(pending.arrived)
                .as_secs_f64(),
        );
        if let Some(on_start) = pending.on_start
            && !on_start()
        {
            // Withdrawn by its owner (a cancelled job): never computed.
            let _ = pending.reply.send(Err(Error::Cancelled));
            continue;
        }
        if let Some(timing) = pending.timing {
            timings.push((timing, started.saturating_duration_since(pending.arrived)));
        }
        inputs.push(pending.input);
        replies.push(Some(pending.reply));
    }
    if inputs.is_empty() {
        return Ok(());
    }
    let size = inputs.len();
    for (timing, queue) in timings {
        let _ = timing.set(ItemTiming {
            queue,
            batch_size: size,
        });
    }
    shared.metrics.batch_size.record(size as f64);
    let span = tracing::debug_span!("batch", model = %shared.model, size);
    let _entered = span.enter();

    let outcome = compute_range(shared, pipeline, &inputs, &mut replies);
    if let Err(fatal) = &outcome {
        for reply in replies.iter_mut().filter_map(Option::take) {
            let _ = reply.send(Err(shared.unavailable(format!("device failed: {fatal}"))));
        }
    }
    tracing::debug!(elapsed = ?started.elapsed(), "batch done");
    outcome
}

/// Runs the pipeline on `inputs` and answers `replies` (same length). On a
/// whole-batch failure of more than one item, halves the range and retries
/// each half, so only the failing items get an error.
fn compute_range<P: InferencePipeline>(
    shared: &Shared<P>,
    pipeline: &P,
    inputs: &[P::Input],
    replies: &mut [Option<Reply<P::Output>>],
) -> Result<(), String> {
    match run_stages(shared, pipeline, inputs) {
        Ok(results) => {
            if let Some(fatal) = results
                .iter()
                .find_map(|r| r.as_ref().err().filter(|e| e.is_fatal()))
            {
                return Err(fatal.to_string());
            }
            for (reply, result) in replies.iter_mut().zip(results) {
                if let Some(reply) = reply.take() {
                    let _ = reply.send(result.map_err(|err| item_error(&err, Error::Item)));
                }
            }
            Ok(())
        }
        Err(err) if err.is_fatal() => Err(err.to_string()),
        Err(err) if inputs.len() <= 1 => {
            if let Some(reply) = replies.first_mut().and_then(Option::take) {
                let _ = reply.send(Err(item_error(&err, Error::Pipeline)));
            }
            Ok(())
        }
        Err(err) => {
            tracing::warn!(model = %shared.model, size = inputs.len(), %err, "batch failed; splitting it to isolate the failing items");
            let mid = inputs.len() / 2;
            let (left_replies, right_replies) = replies.split_at_mut(mid);
            compute_range(shared, pipeline, &inputs[..mid], left_replies)?;
            compute_range(shared, pipeline, &inputs[mid..], right_replies)
        }
    }
}

/// The error one item's caller gets: invalid input as such, anything else
/// as `otherwise` (an item failure, or a whole-batch failure isolated to it).
fn item_error(err: &PipelineError, otherwise: fn(String) -> Error) -> Error {
    match err.kind() {
        ErrorKind::InvalidInput => Error::InvalidInput(err.to_string()),
        _ => otherwise(err.to_string()),
    }
}

/// `preprocess -> predict -> postprocess`, timing each stage; a panic becomes
/// an error, and a postprocess that returns the wrong count fails the batch.
fn run_stages<P: InferencePipeline>(
    shared: &Shared<P>,
    pipeline: &P,
    inputs: &[P::Input],
) -> Result<Vec<ItemResult<P::Output>>, PipelineError> {
    let metrics = &shared.metrics;
    let attempt = catch_unwind(AssertUnwindSafe(|| {
        let t0 = Instant::now();
        let pre = pipeline.preprocess(inputs)?;
        let t1 = Instant::now();
        metrics.preprocess.record((t1 - t0).as_secs_f64());
        let raw = pipeline.predict(inputs, pre)?;
        let t2 = Instant::now();
        metrics.predict.record((t2 - t1).as_secs_f64());
        let results = pipeline.postprocess(inputs, raw);
        metrics.postprocess.record(t2.elapsed().as_secs_f64());
        Ok::<_, PipelineError>(results)
    }));
    let results = match attempt {
        Ok(result) => result?,
        Err(panic) => {
            return Err(PipelineError::msg(format!(
                "pipeline panicked: {}",
                panic_message(&panic)
            )));
        }
    };
    if results.len() != inputs.len() {
        return Err(PipelineError::msg(format!(
            "postprocess returned {} results for {} inputs",
            results.len(),
            inputs.len()
        )));
    }
    Ok(results)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
