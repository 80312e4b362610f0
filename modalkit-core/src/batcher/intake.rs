//! The intake queue shared by submitters and workers: a bounded deque under a
//! mutex, a condition variable that wakes workers, and the batch-forming rule.
//!
//! A batch starts when `max_batch_size` items are queued, or when the oldest
//! has waited `wait`; then, with load-aware filling, not before the clients
//! of the batch that just finished had their chance to come back: until as
//! many items are queued as were queued when it finished plus its size, or
//! its fill wait is over (`adaptive_wait`, at most an eighth of its compute
//! time, from its end). Under steady load those clients resubmit within a
//! fraction of a millisecond; starting at once takes the first of them alone
//! and leaves the rest for the next batch, and batches stay ragged. A lone
//! client is its own last batch: its next item meets the target at once, so
//! nothing waits at low load.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use metrics::{Gauge, Histogram};
use tokio::sync::{oneshot, watch};

use super::{BatcherConfig, BatcherState, ItemTiming};
use crate::error::ItemError;
use crate::pipeline::InferencePipeline;

/// How long a worker that just finished a batch spins for the next item
/// before it sleeps.
const SPIN: Duration = Duration::from_micros(50);

/// One queued item.
pub(super) struct Pending<P: InferencePipeline> {
    pub input: P::Input,
    /// [`InferencePipeline::cost`] of `input`, counted against
    /// `max_batch_cost`.
    pub cost: usize,
    pub arrived: Instant,
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<P::Output, ItemError>>,
    pub on_start: Option<Box<dyn FnOnce() -> bool + Send>>,
    pub timing: Option<Arc<OnceLock<ItemTiming>>>,
}

/// An item [`Shared::push`] did not take, handed back with the reason.
pub(super) struct Refused<P: InferencePipeline> {
    pub error: ItemError,
    pub pending: Pending<P>,
}

impl<P: InferencePipeline> Pending<P> {
    fn cancelled(&self) -> bool {
        self.reply.is_closed()
    }
}

/// What a worker is handed next.
pub(super) enum Next<P: InferencePipeline> {
    /// A batch to compute.
    Batch(Vec<Pending<P>>),
    /// Run `on_volume_reload`, then ask again.
    Reload,
    /// Intake is closed and the queue empty, or the device failed: exit.
    Exit,
}

struct Queue<P: InferencePipeline> {
    items: VecDeque<Pending<P>>,
    open: bool,
    failed: Option<String>,
    reload_generation: u64,
    /// Load-aware filling after the last batch, until the next one starts.
    fill: Option<Fill>,
}

/// What the next batch waits for: `target` items, until `until`.
#[derive(Debug, Clone, Copy)]
struct Fill {
    target: usize,
    until: Instant,
}

/// The batcher's shared state.
pub(super) struct Shared<P: InferencePipeline> {
    pub model: String,
    pub config: BatcherConfig,
    queue: Mutex<Queue<P>>,
    work_ready: Condvar,
    /// Workers blocked on `work_ready` (a push signals it only when one is).
    sleeping: AtomicUsize,
    /// Items queued, readable without the lock (a worker spins on it).
    queued: AtomicUsize,
    /// Batches hold it shared, volume reloads exclusively: a reload never
    /// overlaps a batch on any worker.
    pub compute_gate: RwLock<()>,
    state: watch::Sender<BatcherState>,
    pub metrics: BatchMetrics,
    /// Woken whenever items leave the queue, for submitters waiting for room.
    pub room: tokio::sync::Notify,
}

/// Metric handles, registered once per model.
pub(super) struct BatchMetrics {
    pub queue_depth: Gauge,
    pub batch_size: Histogram,
    pub queue_wait: Histogram,
    pub preprocess: Histogram,
    pub predict: Histogram,
    pub postprocess: Histogram,
    pub dropped_cancelled: metrics::Counter,
    pub dropped_expired: metrics::Counter,
}

impl BatchMetrics {
    fn new(model: &str) -> Self {
        let stage = |name: &'static str| metrics::histogram!("modalkit_stage_duration_seconds", "model" => model.to_owned(), "stage" => name);
        BatchMetrics {
            queue_depth: metrics::gauge!("modalkit_queue_depth", "model" => model.to_owned()),
            batch_size: metrics::histogram!("modalkit_batch_size", "model" => model.to_owned()),
            queue_wait: metrics::histogram!("modalkit_queue_wait_seconds", "model" => model.to_owned()),
            preprocess: stage("preprocess"),
            predict: stage("predict"),
            postprocess: stage("postprocess"),
            dropped_cancelled: metrics::counter!("modalkit_items_dropped_total", "model" => model.to_owned(), "reason" => "cancelled"),
            dropped_expired: metrics::counter!("modalkit_items_dropped_total", "model" => model.to_owned(), "reason" => "deadline"),
        }
    }
}

impl<P: InferencePipeline> Shared<P> {
    pub fn new(model: &str, config: BatcherConfig, state: watch::Sender<BatcherState>) -> Self {
        Shared {
            model: model.to_owned(),
            queue: Mutex::new(Queue {
                items: VecDeque::with_capacity(config.max_queue_depth.min(4096)),
                open: true,
                failed: None,
                reload_generation: 0,
                fill: None,
            }),
            config,
            work_ready: Condvar::new(),
            sleeping: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            compute_gate: RwLock::new(()),
            state,
            metrics: BatchMetrics::new(model),
            room: tokio::sync::Notify::new(),
        }
    }

    /// Records that a batch of `size` items finished after computing for
    /// `elapsed`: the next batch may wait for its clients to come back (see
    /// the module docs); the wait is at most an eighth of `elapsed`, so fast
    /// pipelines barely wait.
    pub fn batch_computed(&self, size: usize, elapsed: Duration) {
        let wait = self.config.adaptive_wait.min(elapsed / 8);
        if wait.is_zero() {
            return;
        }
        let max = self.config.max_batch_size.max(1);
        let mut queue = self.lock();
        queue.fill = Some(Fill {
            target: (queue.items.len() + size).min(max),
            until: Instant::now() + wait,
        });
    }

    /// Until when load-aware filling holds the next batch back (`now`: not).
    fn fill_until(queue: &Queue<P>, now: Instant) -> Instant {
        match queue.fill {
            Some(fill) if queue.items.len() < fill.target => fill.until.max(now),
            _ => now,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue<P>> {
        // A panic never happens while the lock is held (pipeline code runs
        // outside it), but stay serving even if one did.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Why the queue cannot take `count` more items now, if it cannot.
    fn refusal(&self, queue: &Queue<P>, count: usize) -> Option<ItemError> {
        if let Some(reason) = &queue.failed {
            Some(self.unavailable(format!("device failed: {reason}")))
        } else if !queue.open {
            Some(self.unavailable("shutting down".to_owned()))
        } else if queue.items.len() + count > self.config.max_queue_depth {
            Some(ItemError::Overloaded {
                model: self.model.clone(),
                depth: self.config.max_queue_depth,
            })
        } else {
            None
        }
    }

    /// Adds an item, or refuses it at once and hands it back.
    // The refused item comes back by value so a waiting submitter can retry
    // it without cloning or re-parsing; boxing it would allocate per refusal.
    #[allow(clippy::result_large_err)]
    pub fn push(&self, pending: Pending<P>) -> Result<(), Refused<P>> {
        let mut queue = self.lock();
        if let Some(error) = self.refusal(&queue, 1) {
            return Err(Refused { error, pending });
        }
        queue.items.push_back(pending);
        self.queued_more(queue);
        Ok(())
    }

    /// Adds all of `items` under one lock, or none: a request's items reach
    /// the workers together, so they share a batch where they fit.
    pub fn push_all(&self, items: Vec<Pending<P>>) -> Result<(), ItemError> {
        let mut queue = self.lock();
        if let Some(error) = self.refusal(&queue, items.len()) {
            return Err(error);
        }
        queue.items.extend(items);
        self.queued_more(queue);
        Ok(())
    }

    /// After a push: publishes the depth and wakes a sleeping worker.
    fn queued_more(&self, queue: MutexGuard<'_, Queue<P>>) {
        self.set_depth(&queue);
        drop(queue);
        // A worker that went to sleep did so holding the lock, so it is
        // counted by now; a spinning one sees `queued`.
        if self.sleeping.load(Ordering::Acquire) > 0 {
            self.work_ready.notify_one();
        }
    }

    pub fn depth(&self) -> usize {
        self.lock().items.len()
    }

    pub fn request_reload(&self) {
        self.lock().reload_generation += 1;
        self.work_ready.notify_all();
    }

    pub fn close(&self) {
        let mut queue = self.lock();
        if queue.open {
            queue.open = false;
            if queue.failed.is_none() {
                self.state.send_replace(BatcherState::Draining);
            }
        }
        drop(queue);
        self.work_ready.notify_all();
    }

    /// The fatal path: close intake, fail everything queued, tell watchers.
    pub fn fail(&self, reason: &str) {
        let drained: Vec<Pending<P>> = {
            let mut queue = self.lock();
            queue.open = false;
            queue.failed.get_or_insert_with(|| reason.to_owned());
            let drained = queue.items.drain(..).collect();
            self.set_depth(&queue);
            drained
        };
        self.room.notify_waiters();
        tracing::error!(model = %self.model, reason, failed_items = drained.len(), "fatal device error: intake stopped");
        for pending in drained {
            let _ = pending
                .reply
                .send(Err(self.unavailable(format!("device failed: {reason}"))));
        }
        self.state
            .send_replace(BatcherState::Failed(reason.to_owned()));
        self.work_ready.notify_all();
    }

    pub fn fail_queued(&self, reason: &str) -> usize {
        let drained: Vec<Pending<P>> = {
            let mut queue = self.lock();
            let drained = queue.items.drain(..).collect();
            self.set_depth(&queue);
            drained
        };
        self.room.notify_waiters();
        let count = drained.len();
        for pending in drained {
            let _ = pending.reply.send(Err(self.unavailable(reason.to_owned())));
        }
        count
    }

    pub fn unavailable(&self, reason: String) -> ItemError {
        ItemError::Unavailable {
            model: self.model.clone(),
            reason,
        }
    }

    /// The queue's depth, for spinning workers and the gauge.
    fn set_depth(&self, queue: &Queue<P>) {
        self.queued.store(queue.items.len(), Ordering::Release);
    }

    /// Sets the queue-depth gauge to the depth now. Called when metrics are
    /// read, not on every push and take: a labelled gauge's update showed
    /// in the no-op server's profile on both the async and worker threads.
    pub fn publish_depth(&self) {
        let depth = self.queued.load(Ordering::Acquire);
        self.metrics.queue_depth.set(depth as f64);
    }

    /// Waits on `work_ready` (at most `timeout`), counted in `sleeping` so
    /// pushes signal only when someone sleeps.
    fn sleep<'a>(
        &self,
        queue: MutexGuard<'a, Queue<P>>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, Queue<P>> {
        self.sleeping.fetch_add(1, Ordering::AcqRel);
        let queue = match timeout {
            None => self
                .work_ready
                .wait(queue)
                .unwrap_or_else(|p| p.into_inner()),
            Some(timeout) => self
                .work_ready
                .wait_timeout(queue, timeout)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0),
        };
        self.sleeping.fetch_sub(1, Ordering::AcqRel);
        queue
    }

    /// Polls (without the lock) until an item is queued or `SPIN` passed:
    /// a worker that just answered a batch usually gets the next request of
    /// the same clients within tens of microseconds, and waking a sleeping
    /// thread costs about as much as a no-op pipeline's whole request. Each
    /// poll yields the CPU, so under load the async threads that parse the
    /// requests run first.
    fn spin_for_work(&self) {
        let started = Instant::now();
        while self.queued.load(Ordering::Acquire) == 0 {
            if started.elapsed() >= SPIN {
                return;
            }
            std::thread::yield_now();
        }
    }

    /// Blocks until there is something for this worker to do.
    pub fn next(&self, seen_reload: &mut u64) -> Next<P> {
        let max = self.config.max_batch_size.max(1);
        let mut may_spin = true;
        let mut queue = self.lock();
        loop {
            if queue.failed.is_some() {
                return Next::Exit;
            }
            if queue.reload_generation != *seen_reload {
                *seen_reload = queue.reload_generation;
                return Next::Reload;
            }
            self.drop_dead_front(&mut queue);
            let Some(oldest) = queue.items.front() else {
                if !queue.open {
                    return Next::Exit;
                }
                if may_spin {
                    may_spin = false;
                    drop(queue);
                    self.spin_for_work();
                    queue = self.lock();
                } else {
                    queue = self.sleep(queue, None);
                }
                continue;
            };
            let now = Instant::now();
            let flush_at = (oldest.arrived + self.config.wait).max(Self::fill_until(&queue, now));
            if queue.items.len() >= max
                || self.budget_reached(&queue)
                || now >= flush_at
                || !queue.open
            {
                let batch = self.take_batch(&mut queue, max, now);
                self.set_depth(&queue);
                self.room.notify_waiters();
                if batch.is_empty() {
                    continue;
                }
                queue.fill = None;
                return Next::Batch(batch);
            }
            queue = self.sleep(queue, Some(flush_at - now));
        }
    }

    /// Removes cancelled and expired items at the front, so the oldest live
    /// item sets the flush time.
    fn drop_dead_front(&self, queue: &mut Queue<P>) {
        let now = Instant::now();
        while let Some(front) = queue.items.front() {
            if !(front.cancelled() || front.deadline <= now) {
                break;
            }
            if let Some(dead) = queue.items.pop_front() {
                self.discard(dead, now);
                self.set_depth(queue);
                self.room.notify_waiters();
            }
        }
    }

    /// Whether the queued items already fill a batch's cost budget.
    fn budget_reached(&self, queue: &Queue<P>) -> bool {
        let Some(budget) = self.config.max_batch_cost else {
            return false;
        };
        let mut cost = 0usize;
        queue.items.iter().any(|item| {
            cost = cost.saturating_add(item.cost);
            cost >= budget
        })
    }

    /// Takes up to `max` live items, discarding dead ones at the front.
    /// Without a cost budget, in arrival order. With one (`max_batch_cost`),
    /// the oldest item first (so every item gets its turn), then the
    /// cheapest queued items while the summed cost stays within the budget,
    /// so a short request joins the next batch rather than waiting behind
    /// every long one queued before it; the batch keeps arrival order.
    fn take_batch(&self, queue: &mut Queue<P>, max: usize, now: Instant) -> Vec<Pending<P>> {
        let mut batch = Vec::with_capacity(max.min(queue.items.len()));
        let Some(budget) = self.config.max_batch_cost else {
            while batch.len() < max {
                let Some(item) = self.pop_live_front(queue, now) else {
                    break;
                };
                batch.push(item);
            }
            return batch;
        };
        let Some(oldest) = self.pop_live_front(queue, now) else {
            return batch;
        };
        let mut cost = oldest.cost;
        batch.push(oldest);
        // Only the `max - 1` cheapest can join: selected in linear time
        // under the lock, not by sorting the whole queue.
        let room = max.saturating_sub(1);
        let mut by_cost: Vec<(usize, usize)> = queue
            .items
            .iter()
            .enumerate()
            .filter(|(_, item)| !(item.cancelled() || item.deadline <= now))
            .map(|(index, item)| (item.cost, index))
            .collect();
        if by_cost.len() > room {
            if room > 0 {
                by_cost.select_nth_unstable(room - 1);
            }
            by_cost.truncate(room);
        }
        by_cost.sort_unstable();
        let mut chosen: Vec<usize> = Vec::with_capacity(by_cost.len());
        for (item_cost, index) in by_cost {
            if cost.saturating_add(item_cost) > budget {
                break;
            }
            cost = cost.saturating_add(item_cost);
            chosen.push(index);
        }
        // Removed from the back first, so the other indices stay valid;
        // then put back in arrival order.
        chosen.sort_unstable();
        let mut taken: Vec<Pending<P>> = chosen
            .iter()
            .rev()
            .filter_map(|&index| queue.items.remove(index))
            .collect();
        taken.reverse();
        batch.extend(taken);
        batch
    }

    /// The oldest live item, discarding dead ones before it.
    fn pop_live_front(&self, queue: &mut Queue<P>, now: Instant) -> Option<Pending<P>> {
        while let Some(item) = queue.items.pop_front() {
            if item.cancelled() || item.deadline <= now {
                self.discard(item, now);
            } else {
                return Some(item);
            }
        }
        None
    }

    fn discard(&self, item: Pending<P>, now: Instant) {
        if item.cancelled() {
            self.metrics.dropped_cancelled.increment(1);
        } else {
            debug_assert!(item.deadline <= now);
            self.metrics.dropped_expired.increment(1);
            let _ = item.reply.send(Err(ItemError::DeadlineExceeded {
                budget: item.deadline.saturating_duration_since(item.arrived),
            }));
        }
    }
}
