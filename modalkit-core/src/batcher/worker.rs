//! One worker thread: loads its own pipeline, then computes batches until the
//! intake closes. Splits failing batches to isolate bad items, and turns a
//! fatal device error into the batcher's fatal path.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::intake::{Next, Pending, Shared};
use super::{ItemTiming, StageTimes};
use crate::context::ModelContext;
use crate::error::{ItemError, StartupError};
use crate::pipeline::{ErrorKind, InferencePipeline, ItemResult, PipelineError};

type Reply<O> = oneshot::Sender<Result<O, ItemError>>;

/// A batch's results, one per input, and when its stages ran.
type StageOutput<O> = (Vec<ItemResult<O>>, StageTimes);

/// The worker's main loop.
pub(super) fn run<P: InferencePipeline>(
    shared: Arc<Shared<P>>,
    ctx: ModelContext,
    loaded: mpsc::Sender<Result<Arc<P>, StartupError>>,
) {
    let pipeline = match catch_unwind(|| P::load(&ctx)) {
        Ok(Ok(pipeline)) => pipeline,
        Ok(Err(err)) => {
            let _ = loaded.send(Err(StartupError::Load {
                model: shared.model.clone(),
                message: err.to_string(),
            }));
            return;
        }
        Err(panic) => {
            let _ = loaded.send(Err(StartupError::Load {
                model: shared.model.clone(),
                message: format!("load panicked: {}", panic_message(&panic)),
            }));
            return;
        }
    };
    let pipeline = Arc::new(pipeline);
    let _ = loaded.send(Ok(Arc::clone(&pipeline)));
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

/// One item's answer: where its result goes, and where its timing goes
/// (with how long it queued).
struct Answer<O> {
    reply: Reply<O>,
    timing: Option<(Arc<OnceLock<ItemTiming>>, Duration)>,
}

impl<O> Answer<O> {
    /// Records the item's timing (in `batch`, with these `stages`), then
    /// sends its result.
    fn send(self, batch: &BatchInfo, stages: Option<StageTimes>, result: Result<O, ItemError>) {
        if let Some((timing, queue)) = self.timing {
            let _ = timing.set(ItemTiming {
                queue,
                batch_size: batch.size,
                batch_started: batch.started,
                stages,
            });
        }
        let _ = self.reply.send(result);
    }
}

/// The batch being computed.
struct BatchInfo {
    started: Instant,
    size: usize,
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
    let mut answers = Vec::with_capacity(batch.len());
    for pending in batch {
        let queue = started.saturating_duration_since(pending.arrived);
        shared.metrics.queue_wait.record(queue.as_secs_f64());
        if let Some(on_start) = pending.on_start
            && !on_start()
        {
            // Withdrawn by its owner (a cancelled job): never computed.
            let _ = pending.reply.send(Err(ItemError::Cancelled));
            continue;
        }
        inputs.push(pending.input);
        answers.push(Some(Answer {
            reply: pending.reply,
            timing: pending.timing.map(|timing| (timing, queue)),
        }));
    }
    if inputs.is_empty() {
        return Ok(());
    }
    let batch = BatchInfo {
        started,
        size: inputs.len(),
    };
    shared.metrics.batch_size.record(batch.size as f64);
    let span = tracing::debug_span!("batch", model = %shared.model, size = batch.size);
    let _entered = span.enter();

    let outcome = compute_range(shared, pipeline, &batch, &inputs, &mut answers);
    if let Err(fatal) = &outcome {
        for answer in answers.iter_mut().filter_map(Option::take) {
            answer.send(
                &batch,
                None,
                Err(shared.unavailable(format!("device failed: {fatal}"))),
            );
        }
    }
    let elapsed = started.elapsed();
    shared.batch_computed(batch.size, elapsed);
    tracing::debug!(?elapsed, "batch done");
    outcome
}

/// Runs the pipeline on `inputs` and answers `answers` (same length). On a
/// whole-batch failure of more than one item, halves the range and retries
/// each half, so only the failing items get an error.
fn compute_range<P: InferencePipeline>(
    shared: &Shared<P>,
    pipeline: &P,
    batch: &BatchInfo,
    inputs: &[P::Input],
    answers: &mut [Option<Answer<P::Output>>],
) -> Result<(), String> {
    match run_stages(shared, pipeline, inputs) {
        Ok((results, stages)) => {
            if let Some(fatal) = results
                .iter()
                .find_map(|r| r.as_ref().err().filter(|e| e.is_fatal()))
            {
                return Err(fatal.to_string());
            }
            for (answer, result) in answers.iter_mut().zip(results) {
                if let Some(answer) = answer.take() {
                    let result = result.map_err(|err| item_error(&err, ItemError::Item));
                    answer.send(batch, Some(stages), result);
                }
            }
            Ok(())
        }
        Err(err) if err.is_fatal() => Err(err.to_string()),
        Err(err) if inputs.len() <= 1 => {
            if let Some(answer) = answers.first_mut().and_then(Option::take) {
                answer.send(batch, None, Err(item_error(&err, ItemError::Pipeline)));
            }
            Ok(())
        }
        Err(err) => {
            tracing::warn!(model = %shared.model, size = inputs.len(), %err, "batch failed; splitting it to isolate the failing items");
            let mid = inputs.len() / 2;
            let (left, right) = answers.split_at_mut(mid);
            compute_range(shared, pipeline, batch, &inputs[..mid], left)?;
            compute_range(shared, pipeline, batch, &inputs[mid..], right)
        }
    }
}

/// The error one item's caller gets: invalid input as such, anything else
/// as `otherwise` (an item failure, or a whole-batch failure isolated to it).
fn item_error(err: &PipelineError, otherwise: fn(String) -> ItemError) -> ItemError {
    match err.kind() {
        ErrorKind::InvalidInput => ItemError::InvalidInput(err.to_string()),
        _ => otherwise(err.to_string()),
    }
}

/// `preprocess -> predict -> postprocess`, timing each stage; a panic becomes
/// an error, and a postprocess that returns the wrong count fails the batch.
fn run_stages<P: InferencePipeline>(
    shared: &Shared<P>,
    pipeline: &P,
    inputs: &[P::Input],
) -> Result<StageOutput<P::Output>, PipelineError> {
    let metrics = &shared.metrics;
    let attempt = catch_unwind(AssertUnwindSafe(|| {
        let preprocess = Instant::now();
        let pre = pipeline.preprocess(inputs)?;
        let predict = Instant::now();
        metrics
            .preprocess
            .record((predict - preprocess).as_secs_f64());
        let raw = pipeline.predict(inputs, pre)?;
        let postprocess = Instant::now();
        metrics
            .predict
            .record((postprocess - predict).as_secs_f64());
        let results = pipeline.postprocess(inputs, raw);
        let finished = Instant::now();
        metrics
            .postprocess
            .record((finished - postprocess).as_secs_f64());
        let stages = StageTimes {
            preprocess,
            predict,
            postprocess,
            finished,
        };
        Ok::<_, PipelineError>((results, stages))
    }));
    let (results, stages) = match attempt {
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
    Ok((results, stages))
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
