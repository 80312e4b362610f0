//! The dynamic batcher: one per model.
//!
//! Callers [`submit`](Batcher::submit) items into a bounded intake queue and
//! await a [`Ticket`]. Worker threads (one pipeline instance each) take
//! batches of at most `max_batch_size` items: a batch leaves as soon as it is
//! full, or once `wait` has passed since its oldest item arrived. While one
//! batch computes the next one forms. Items whose caller went away or whose
//! deadline passed are dropped before compute; a failing batch is split to
//! isolate the bad items; a fatal device error stops intake and fails what
//! is queued. Pipeline code only ever runs on the workers' own threads.

mod intake;
mod ticket;
mod worker;

use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::context::ModelContext;
use crate::error::{ItemError, StartupError};
use crate::pipeline::InferencePipeline;
use crate::settings::{BatchConfig, ServerConfig, Settings};
use intake::Pending;
pub use ticket::Ticket;

/// How a [`Batcher`] forms batches and how much it queues.
#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// Most items in one batch.
    pub max_batch_size: usize,
    /// Most summed [`InferencePipeline::cost`] in one batch (its first item
    /// is always taken); `None`: no bound but `max_batch_size`.
    pub max_batch_cost: Option<usize>,
    /// Longest an item waits for its batch to fill, from its arrival.
    pub wait: Duration,
    /// Load-aware filling: after a batch, the next one waits for that
    /// batch's clients to come back, at most this long from its end (and at
    /// most an eighth of its compute time); zero turns it off. See
    /// `intake.rs`.
    pub adaptive_wait: Duration,
    /// Most items queued; past it [`Batcher::submit`] fails with
    /// [`ItemError::Overloaded`].
    pub max_queue_depth: usize,
    /// Worker threads, each with its own pipeline instance.
    pub workers: usize,
    /// Deadline of an item submitted without one.
    pub default_timeout: Duration,
    /// Run `on_volume_reload` this often; `None`: only on request.
    pub reload_interval: Option<Duration>,
}

impl BatcherConfig {
    /// The configuration `settings` ask for.
    pub fn from_settings(settings: &Settings) -> Self {
        let app = &settings.app_settings;
        let reload = app
            .deployment_config
            .volume_reload_interval_seconds
            .filter(|secs| *secs > 0)
            .map(|secs| Duration::from_secs(secs.unsigned_abs()));
        Self::from_sections(&app.batch_config, &app.server_config, reload)
    }

    fn from_sections(
        batch: &BatchConfig,
        server: &ServerConfig,
        reload_interval: Option<Duration>,
    ) -> Self {
        BatcherConfig {
            max_batch_size: batch.max_batch_size,
            max_batch_cost: batch.max_batch_tokens,
            wait: Duration::from_millis(batch.wait_ms),
            adaptive_wait: Duration::from_secs_f64(batch.adaptive_wait_ms / 1000.0),
            max_queue_depth: server.max_queue_depth,
            workers: server.workers,
            default_timeout: Duration::from_secs_f64(server.request_timeout_seconds),
            reload_interval,
        }
    }
}

/// What a server whose yaml has no `batch_config` or `server_config` runs:
/// the settings' defaults.
impl Default for BatcherConfig {
    fn default() -> Self {
        Self::from_sections(&BatchConfig::default(), &ServerConfig::default(), None)
    }
}

/// Per-item options for [`Batcher::submit_with`].
#[derive(Default)]
pub struct SubmitOptions {
    /// When the item stops being worth computing; default: now + the
    /// config's `default_timeout`.
    pub deadline: Option<Instant>,
    /// Called (on the worker thread) when the item's batch starts, before
    /// any pipeline code sees it. Returning `false` withdraws the item: it
    /// is never computed and its ticket resolves to [`ItemError::Cancelled`].
    pub on_start: Option<Box<dyn FnOnce() -> bool + Send>>,
    /// Filled in just before the item is answered: how long it queued, how
    /// big its batch was and when each stage ran (for the reply's timing
    /// headers and trace spans). Not filled for an item that never reached
    /// a batch (withdrawn, expired, refused).
    pub timing: Option<Arc<OnceLock<ItemTiming>>>,
}

/// How an item was batched and computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemTiming {
    /// From submit to its batch's start.
    pub queue: Duration,
    /// Items in its batch.
    pub batch_size: usize,
    /// When its batch started (so it was submitted at `batch_started - queue`).
    pub batch_started: Instant,
    /// When the stages that produced its result ran; `None` when they did
    /// not all run (a stage failed, or the device did).
    pub stages: Option<StageTimes>,
}

/// When `preprocess`, `predict` and `postprocess` ran for one batch: each
/// stage runs from its start to the next one's (`postprocess` to `finished`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageTimes {
    /// `preprocess` started.
    pub preprocess: Instant,
    /// `predict` started (`preprocess` ended).
    pub predict: Instant,
    /// `postprocess` started (`predict` ended).
    pub postprocess: Instant,
    /// `postprocess` ended.
    pub finished: Instant,
}

/// The batcher's state as seen from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatcherState {
    /// Taking work.
    Serving,
    /// Intake closed by [`Batcher::close`]; queued work still completes.
    Draining,
    /// A fatal device error stopped it; the message says which.
    Failed(String),
}

/// The dynamic batcher for one model. See the module docs.
pub struct Batcher<P: InferencePipeline> {
    model: String,
    shared: Arc<intake::Shared<P>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    reload_timer: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    state: watch::Receiver<BatcherState>,
    device: String,
    pipeline: Arc<P>,
}

impl<P: InferencePipeline> Batcher<P> {
    /// Loads one pipeline per worker (each on its own thread, with the
    /// context `context_for(worker_index)` returns) and starts serving.
    /// Blocks until every worker has loaded; fails if any load fails.
    pub fn start(
        model: &str,
        config: BatcherConfig,
        context_for: impl Fn(usize) -> ModelContext,
    ) -> Result<Self, StartupError> {
        let (state_tx, state_rx) = watch::channel(BatcherState::Serving);
        let shared = Arc::new(intake::Shared::new(model, config.clone(), state_tx));
        let (loaded_tx, loaded_rx) = mpsc::channel::<Result<Arc<P>, StartupError>>();
        let mut workers = Vec::new();
        for index in 0..config.workers.max(1) {
            let ctx = context_for(index);
            let shared = Arc::clone(&shared);
            let loaded = loaded_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("modalkit-{model}-{index}"))
                .spawn(move || worker::run::<P>(shared, ctx, loaded))
                .map_err(|err| StartupError::Load {
                    model: model.to_owned(),
                    message: format!("cannot start worker thread: {err}"),
                })?;
            workers.push(handle);
        }
        drop(loaded_tx);
        let mut failure = None;
        let mut first = None;
        for _ in 0..workers.len() {
            match loaded_rx.recv() {
                Ok(Ok(pipeline)) => first = first.or(Some(pipeline)),
                Ok(Err(err)) => failure = failure.or(Some(err)),
                Err(_) => {
                    failure = failure.or(Some(StartupError::Load {
                        model: model.to_owned(),
                        message: "a worker thread died while loading".to_owned(),
                    }))
                }
            }
        }
        let pipeline = match (failure, first) {
            (None, Some(pipeline)) => pipeline,
            (failure, _) => {
                shared.close();
                for worker in workers {
                    let _ = worker.join();
                }
                return Err(failure.unwrap_or_else(|| StartupError::Load {
                    model: model.to_owned(),
                    message: "no worker loaded".to_owned(),
                }));
            }
        };
        let batcher = Batcher {
            model: model.to_owned(),
            shared,
            workers: Mutex::new(workers),
            reload_timer: Mutex::new(None),
            state: state_rx,
            device: pipeline.device(),
            pipeline,
        };
        if let Some(interval) = config.reload_interval {
            batcher.start_reload_timer(interval);
        }
        Ok(batcher)
    }

    /// The model this batcher serves.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The device the pipelines loaded on (as they report it).
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The first worker's pipeline, for what a route needs outside a
    /// batch and must not queue for: a tokenizer's answer, a model's
    /// description. It is the instance a worker computes with, so only its
    /// `&self` methods are reachable, concurrently with batches (and with
    /// `on_volume_reload`).
    pub fn pipeline(&self) -> &P {
        &self.pipeline
    }

    /// The batcher's configuration.
    pub fn config(&self) -> &BatcherConfig {
        &self.shared.config
    }

    /// Queues one item with the default deadline. Fails at once with
    /// [`ItemError::Overloaded`] when the queue is full and
    /// [`ItemError::Unavailable`] when intake is closed.
    pub fn submit(&self, input: P::Input) -> Result<Ticket<P::Output>, ItemError> {
        self.submit_with(input, SubmitOptions::default())
    }

    /// Queues one item with options. Dropping the returned ticket cancels
    /// the item if it has not started.
    pub fn submit_with(
        &self,
        input: P::Input,
        options: SubmitOptions,
    ) -> Result<Ticket<P::Output>, ItemError> {
        let (pending, ticket) = self.pending(input, options, Instant::now());
        self.shared.push(pending).map_err(|refused| refused.error)?;
        Ok(ticket)
    }

    /// Queues several items at once, all or none (refused as one when the
    /// queue has no room for all of them): a request's items reach the
    /// workers together, so they start in the same batch where they fit.
    /// The tickets come back in order.
    pub fn submit_all(
        &self,
        items: impl IntoIterator<Item = (P::Input, SubmitOptions)>,
    ) -> Result<Vec<Ticket<P::Output>>, ItemError> {
        let now = Instant::now();
        let (pending, tickets): (Vec<_>, Vec<_>) = items
            .into_iter()
            .map(|(input, options)| self.pending(input, options, now))
            .unzip();
        self.shared.push_all(pending)?;
        Ok(tickets)
    }

    /// An item to queue, and the ticket its result will reach.
    fn pending(
        &self,
        input: P::Input,
        options: SubmitOptions,
        now: Instant,
    ) -> (Pending<P>, Ticket<P::Output>) {
        let (reply, receiver) = oneshot::channel();
        let pending = Pending {
            cost: P::cost(&input),
            input,
            arrived: now,
            deadline: options
                .deadline
                .unwrap_or(now + self.shared.config.default_timeout),
            reply,
            on_start: options.on_start,
            timing: options.timing,
        };
        (pending, Ticket::new(receiver, self.model.clone()))
    }

    /// Queues one item, waiting for room while the queue is full (until the
    /// item's deadline). Fails at once with [`ItemError::Unavailable`] when
    /// intake is closed, and with [`ItemError::Overloaded`] if the deadline
    /// passes before there is room. The input is parsed once by the caller
    /// and never cloned: a refused push hands it back for the next try.
    pub async fn submit_waiting(
        &self,
        input: P::Input,
        options: SubmitOptions,
    ) -> Result<Ticket<P::Output>, ItemError> {
        let (mut pending, ticket) = self.pending(input, options, Instant::now());
        let deadline = pending.deadline;
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.shared.push(pending) {
                Ok(()) => return Ok(ticket),
                Err(refused) if matches!(refused.error, ItemError::Overloaded { .. }) => {
                    pending = refused.pending;
                }
                Err(refused) => return Err(refused.error),
            }
            tokio::select! {
                () = &mut room => {}
                () = tokio::time::sleep_until(deadline.into()) => {
                    return Err(ItemError::Overloaded {
                        model: self.model.clone(),
                        depth: self.shared.config.max_queue_depth,
                    });
                }
            }
            pending.arrived = Instant::now();
        }
    }

    /// Items waiting in the queue now.
    pub fn queue_depth(&self) -> usize {
        self.shared.depth()
    }

    /// Sets the `modalkit_queue_depth` gauge to the depth now; the server
    /// calls it for every model before it renders `/metrics`.
    pub fn publish_queue_depth(&self) {
        self.shared.publish_depth();
    }

    /// The current state.
    pub fn state(&self) -> BatcherState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change (for readiness and the fatal
    /// exit).
    pub fn watch_state(&self) -> watch::Receiver<BatcherState> {
        self.state.clone()
    }

    /// Asks every worker to run `on_volume_reload` between batches.
    pub fn request_reload(&self) {
        self.shared.request_reload();
    }

    /// Stops intake. Queued items are still computed; workers exit when the
    /// queue is empty.
    pub fn close(&self) {
        self.shared.close();
        if let Some((stop, handle)) = self.lock_timer().take() {
            drop(stop);
            let _ = handle.join();
        }
    }

    /// Fails every queued (not yet started) item with
    /// [`ItemError::Unavailable`] carrying `reason`; used when a shutdown's grace
    /// period ends. Returns how many were failed.
    pub fn fail_queued(&self, reason: &str) -> usize {
        self.shared.fail_queued(reason)
    }

    /// Waits for every worker thread to exit (call [`close`](Self::close)
    /// first). Blocking.
    pub fn join(&self) {
        let handles: Vec<_> = match self.workers.lock() {
            Ok(mut workers) => workers.drain(..).collect(),
            Err(poisoned) => poisoned.into_inner().drain(..).collect(),
        };
        for handle in handles {
            let _ = handle.join();
        }
    }

    fn lock_timer(&self) -> std::sync::MutexGuard<'_, Option<(mpsc::Sender<()>, JoinHandle<()>)>> {
        match self.reload_timer.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn start_reload_timer(&self, interval: Duration) {
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name(format!("modalkit-{}-reload", self.model))
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(interval) {
                    shared.request_reload();
                }
            });
        match spawned {
            Ok(handle) => *self.lock_timer() = Some((stop_tx, handle)),
            Err(err) => {
                tracing::error!(model = %self.model, %err, "cannot start the volume reload timer")
            }
        }
    }
}

impl<P: InferencePipeline> Drop for Batcher<P> {
    fn drop(&mut self) {
        self.close();
    }
}

/// Keeps the compiler honest that a batcher can be shared across tasks.
#[allow(dead_code)]
fn assert_send_sync<P: InferencePipeline>() {
    fn is<T: Send + Sync>() {}
    is::<Batcher<P>>();
}
