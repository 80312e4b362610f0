//! The batcher's promises, each checked by a test that fails if it breaks:
//! batch formation, continuous batching, backpressure, deadlines and
//! cancellation, failure isolation, the fatal path, volume reloads and
//! results reaching the right caller under concurrency.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use garde::Validate;
use modalkit_core::batcher::BatcherState;
use modalkit_core::{
    Batcher, BatcherConfig, InferencePipeline, ItemError, ItemResult, ModelContext, PipelineError,
    StartupError, SubmitOptions,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Validate, JsonSchema)]
struct Job {
    #[garde(skip)]
    id: u64,
    #[garde(skip)]
    sleep_ms: u64,
    #[garde(skip)]
    poison: bool,
    #[garde(skip)]
    fatal: bool,
    #[garde(skip)]
    panic: bool,
    /// Its cost against `max_batch_cost` (0 counts as 1).
    #[garde(skip)]
    tokens: usize,
}

/// The id postprocess fails alone.
const UNLUCKY: u64 = 999_013;

fn job(id: u64) -> Job {
    Job {
        id,
        ..Job::default()
    }
}

#[derive(Debug, Serialize, JsonSchema)]
struct Done {
    id: u64,
    batch_size: usize,
}

/// What the test pipeline saw, per model name.
#[derive(Default)]
struct Log {
    batches: Mutex<Vec<BatchRecord>>,
    in_batch: AtomicUsize,
    reloads: AtomicUsize,
    overlaps: AtomicUsize,
    fail_reload: AtomicBool,
}

#[derive(Debug, Clone)]
struct BatchRecord {
    ids: Vec<u64>,
    started: Instant,
    ended: Instant,
}

fn logs() -> &'static Mutex<HashMap<String, Arc<Log>>> {
    static LOGS: OnceLock<Mutex<HashMap<String, Arc<Log>>>> = OnceLock::new();
    LOGS.get_or_init(Default::default)
}

fn log_for(model: &str) -> Arc<Log> {
    logs()
        .lock()
        .unwrap()
        .entry(model.to_owned())
        .or_default()
        .clone()
}

struct Recorder {
    log: Arc<Log>,
}

impl InferencePipeline for Recorder {
    type Input = Job;
    type Output = Done;
    type Preprocessed = Instant;
    type Predicted = Instant;

    fn cost(input: &Job) -> usize {
        input.tokens.max(1)
    }

    fn load(ctx: &ModelContext) -> Result<Self, PipelineError> {
        if ctx.model_name.starts_with("broken") {
            return Err(PipelineError::msg("weights missing"));
        }
        Ok(Recorder {
            log: log_for(&ctx.model_name),
        })
    }

    fn preprocess(&self, inputs: &[Job]) -> Result<Instant, PipelineError> {
        self.log.in_batch.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        if inputs.iter().any(|j| j.panic) {
            self.log.in_batch.fetch_sub(1, Ordering::SeqCst);
            panic!("test pipeline panicked");
        }
        if inputs.iter().any(|j| j.poison) {
            self.log.in_batch.fetch_sub(1, Ordering::SeqCst);
            return Err(PipelineError::msg("poison item in batch"));
        }
        Ok(started)
    }

    fn predict(&self, inputs: &[Job], started: Instant) -> Result<Instant, PipelineError> {
        let sleep = inputs.iter().map(|j| j.sleep_ms).max().unwrap_or(0);
        std::thread::sleep(Duration::from_millis(sleep));
        if inputs.iter().any(|j| j.fatal) {
            self.log.in_batch.fetch_sub(1, Ordering::SeqCst);
            return Err(PipelineError::msg(
                "CUDA error: an illegal memory access was encountered",
            ));
        }
        Ok(started)
    }

    fn postprocess(&self, inputs: &[Job], started: Instant) -> Vec<ItemResult<Done>> {
        self.log.batches.lock().unwrap().push(BatchRecord {
            ids: inputs.iter().map(|j| j.id).collect(),
            started,
            ended: Instant::now(),
        });
        self.log.in_batch.fetch_sub(1, Ordering::SeqCst);
        inputs
            .iter()
            .map(|j| {
                if j.id == UNLUCKY {
                    Err(PipelineError::msg("13 is unlucky"))
                } else {
                    Ok(Done {
                        id: j.id,
                        batch_size: inputs.len(),
                    })
                }
            })
            .collect()
    }

    fn on_volume_reload(&self) -> Result<(), PipelineError> {
        if self.log.in_batch.load(Ordering::SeqCst) != 0 {
            self.log.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(2));
        if self.log.in_batch.load(Ordering::SeqCst) != 0 {
            self.log.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        self.log.reloads.fetch_add(1, Ordering::SeqCst);
        if self.log.fail_reload.load(Ordering::SeqCst) {
            return Err(PipelineError::msg("volume gone"));
        }
        Ok(())
    }
}

fn config(max_batch_size: usize, wait_ms: u64) -> BatcherConfig {
    BatcherConfig {
        max_batch_size,
        wait: Duration::from_millis(wait_ms),
        ..BatcherConfig::default()
    }
}

fn start(model: &str, config: BatcherConfig) -> (Batcher<Recorder>, Arc<Log>) {
    let log = log_for(model);
    let batcher = Batcher::<Recorder>::start(model, config, |i| {
        let mut ctx = ModelContext::for_test(model, serde_json::json!({}));
        ctx.worker_index = i;
        ctx
    })
    .unwrap();
    (batcher, log)
}

fn batches(log: &Log) -> Vec<BatchRecord> {
    log.batches.lock().unwrap().clone()
}

#[tokio::test]
async fn a_full_batch_leaves_at_once_without_waiting() {
    let (batcher, log) = start("full", config(4, 10_000));
    let t0 = Instant::now();
    let tickets: Vec<_> = (0..4).map(|i| batcher.submit(job(i)).unwrap()).collect();
    for ticket in tickets {
        assert_eq!(ticket.await.unwrap().batch_size, 4);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "waited {:?} for a full batch",
        t0.elapsed()
    );
    assert_eq!(batches(&log).len(), 1);
}

#[tokio::test]
async fn a_lone_item_waits_at_most_wait_ms() {
    let (batcher, log) = start("lone-wait", config(32, 150));
    let t0 = Instant::now();
    batcher.submit(job(1)).unwrap().await.unwrap();
    let started = batches(&log)[0].started - t0;
    assert!(
        started >= Duration::from_millis(140),
        "flushed early: {started:?}"
    );
    assert!(
        started < Duration::from_millis(600),
        "flushed late: {started:?}"
    );
}

#[tokio::test]
async fn wait_zero_on_an_idle_server_does_not_wait() {
    let (batcher, log) = start("idle-zero", config(32, 0));
    for i in 0..5 {
        let t0 = Instant::now();
        batcher.submit(job(i)).unwrap().await.unwrap();
        let started = batches(&log).last().unwrap().started - t0;
        assert!(
            started < Duration::from_millis(50),
            "a lone item waited {started:?} with wait_ms 0"
        );
    }
}

#[tokio::test]
async fn wait_is_measured_from_the_oldest_item_not_from_a_free_worker() {
    // The worker is busy for 400 ms; an item arriving meanwhile has waited
    // more than wait_ms (150) by the time the worker frees, so it must start
    // at once rather than wait another 150 ms.
    let (batcher, log) = start("oldest", config(32, 150));
    let busy = batcher
        .submit(Job {
            id: 1,
            sleep_ms: 400,
            ..Job::default()
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // the busy batch has started
    let late = batcher.submit(job(2)).unwrap();
    busy.await.unwrap();
    late.await.unwrap();
    let recorded = batches(&log);
    assert_eq!(recorded.len(), 2);
    let gap = recorded[1].started - recorded[0].ended;
    assert!(
        gap < Duration::from_millis(60),
        "the waiting item was made to wait again: {gap:?}"
    );
}

#[tokio::test]
async fn the_next_batch_forms_while_one_computes() {
    let (batcher, log) = start("continuous", config(8, 0));
    let first = batcher
        .submit(Job {
            id: 0,
            sleep_ms: 200,
            ..Job::default()
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let during: Vec<_> = (1..=8).map(|i| batcher.submit(job(i)).unwrap()).collect();
    first.await.unwrap();
    for ticket in during {
        assert_eq!(
            ticket.await.unwrap().batch_size,
            8,
            "items queued during compute form one batch"
        );
    }
    let recorded = batches(&log);
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[1].ids, (1..=8).collect::<Vec<_>>());
    let gap = recorded[1].started - recorded[0].ended;
    assert!(
        gap < Duration::from_millis(50),
        "worker idled {gap:?} between batches"
    );
}

#[tokio::test]
async fn a_token_budget_takes_the_oldest_then_the_cheapest_that_fit() {
    let config = BatcherConfig {
        max_batch_cost: Some(250),
        ..config(8, 0)
    };
    let (batcher, log) = start("tokens", config);
    // A slow first batch, so the rest queue before the next one forms.
    let first = batcher
        .submit(Job {
            id: 0,
            sleep_ms: 100,
            ..Job::default()
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let costs = [100, 100, 100, 10, 10, 400, 5];
    let tickets: Vec<_> = costs
        .iter()
        .enumerate()
        .map(|(i, &tokens)| {
            batcher
                .submit(Job {
                    id: i as u64 + 1,
                    tokens,
                    ..Job::default()
                })
                .unwrap()
        })
        .collect();
    first.await.unwrap();
    for ticket in tickets {
        ticket.await.unwrap();
    }
    let ids: Vec<Vec<u64>> = batches(&log).into_iter().map(|b| b.ids).collect();
    // The slow one; then the oldest (1, 100) and the cheapest that fit:
    // 5, 10, 10 and one more 100 (225; the third 100 would make 325), in
    // arrival order; then the oldest left (3) alone, as 400 would pass the
    // budget; then the 400, over the budget but the oldest.
    assert_eq!(ids, vec![vec![0], vec![1, 2, 4, 5, 7], vec![3], vec![6]]);
}

/// Eight clients that each resubmit as soon as their result arrives, on a
/// 30 ms pipeline: the mean batch size, leaving out the first and last three
/// batches.
async fn steady_clients_mean_batch(model: &str, adaptive_wait: Duration) -> f64 {
    let config = BatcherConfig {
        adaptive_wait,
        ..config(16, 0)
    };
    let (batcher, log) = start(model, config);
    let batcher = Arc::new(batcher);
    let clients: Vec<_> = (0..8u64)
        .map(|client| {
            let batcher = Arc::clone(&batcher);
            tokio::spawn(async move {
                for round in 0..12u64 {
                    // Clients come back at slightly different times, as
                    // over a network.
                    tokio::time::sleep(Duration::from_micros(100 * client)).await;
                    let item = Job {
                        id: client * 100 + round,
                        sleep_ms: 30,
                        ..Job::default()
                    };
                    batcher.submit(item).unwrap().await.unwrap();
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let sizes: Vec<usize> = batches(&log).iter().map(|b| b.ids.len()).collect();
    // The first batches form while clients start, the last while they stop.
    let steady = sizes
        .get(3..sizes.len().saturating_sub(3))
        .unwrap_or_else(|| panic!("too few batches: {sizes:?}"));
    steady.iter().sum::<usize>() as f64 / steady.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_aware_filling_keeps_batches_full_under_steady_clients() {
    let filled = steady_clients_mean_batch("fill-on", Duration::from_millis(3)).await;
    assert!(
        filled >= 7.0,
        "eight steady clients fill batches of ~8 (mean {filled:.2})"
    );
    // Without it, the first client back starts a batch alone.
    let ragged = steady_clients_mean_batch("fill-off", Duration::ZERO).await;
    assert!(
        ragged < filled,
        "filling helps: {ragged:.2} without, {filled:.2} with"
    );
}

#[tokio::test]
async fn load_aware_filling_never_holds_a_lone_client_back() {
    // A lone client's batches held one item: nothing to wait for, even
    // with a long fill wait allowed and a slow pipeline.
    let config = BatcherConfig {
        adaptive_wait: Duration::from_secs(5),
        ..config(16, 0)
    };
    let (batcher, log) = start("fill-lone", config);
    let started = Instant::now();
    for round in 0..5 {
        let item = Job {
            id: round,
            sleep_ms: 40,
            ..Job::default()
        };
        assert_eq!(batcher.submit(item).unwrap().await.unwrap().batch_size, 1);
    }
    assert_eq!(batches(&log).len(), 5);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no 5 s fill wait was taken: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_and_admitted_items_still_succeed() {
    let mut cfg = config(1, 0);
    cfg.max_queue_depth = 4;
    let (batcher, _log) = start("overload", cfg);
    let running = batcher
        .submit(Job {
            id: 0,
            sleep_ms: 300,
            ..Job::default()
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let queued: Vec<_> = (1..=4).map(|i| batcher.submit(job(i)).unwrap()).collect();
    let t0 = Instant::now();
    match batcher.submit(job(5)) {
        Err(ItemError::Overloaded { depth, .. }) => assert_eq!(depth, 4),
        other => panic!("expected overload, got {:?}", other.map(|_| ())),
    }
    assert!(
        t0.elapsed() < Duration::from_millis(20),
        "refusal was not immediate"
    );
    running.await.unwrap();
    for (i, ticket) in queued.into_iter().enumerate() {
        assert_eq!(ticket.await.unwrap().id, i as u64 + 1);
    }
}

#[tokio::test]
async fn submit_all_queues_a_request_together_or_not_at_all() {
    let mut cfg = config(8, 0);
    cfg.max_queue_depth = 6;
    let (batcher, log) = start("submit-all", cfg);
    // A worker busy with one item: five items submitted together wait, then
    // form one batch (wait 0 would otherwise take the first alone).
    let running = batcher
        .submit(Job {
            id: 0,
            sleep_ms: 100,
            ..Job::default()
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let together = batcher
        .submit_all((1..=5).map(|i| (job(i), SubmitOptions::default())))
        .unwrap();
    // Two more do not fit the depth of 6 beside those five: neither is queued.
    match batcher.submit_all((6..=7).map(|i| (job(i), SubmitOptions::default()))) {
        Err(ItemError::Overloaded { depth, .. }) => assert_eq!(depth, 6),
        other => panic!("expected overload, got {:?}", other.map(|t| t.len())),
    }
    assert_eq!(batcher.queue_depth(), 5, "all or none");
    running.await.unwrap();
    for (i, ticket) in together.into_iter().enumerate() {
        let done = ticket.await.unwrap();
        assert_eq!(done.id, i as u64 + 1, "tickets in order");
        assert_eq!(done.batch_size, 5, "one batch");
    }
    assert_eq!(batches(&log).len(), 2);
}

#[tokio::test]
async fn a_waiting_submit_gets_in_when_room_frees_and_gives_up_at_its_deadline() {
    let mut cfg = config(1, 0);
    cfg.max_queue_depth = 1;
    let (batcher, log) = start("waiting", cfg);
    let busy = Job {
        id: 0,
        sleep_ms: 200,
        ..Job::default()
    };
    let running = batcher.submit(busy).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let slow = |id| Job {
        id,
        sleep_ms: 200,
        ..Job::default()
    };
    let queued = batcher.submit(slow(1)).unwrap();
    assert!(matches!(
        batcher.submit(job(2)),
        Err(ItemError::Overloaded { .. })
    ));
    // Waits (no polling loop) until the worker takes item 1, then gets in.
    let t0 = Instant::now();
    let waited = batcher
        .submit_waiting(job(2), SubmitOptions::default())
        .await
        .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(100),
        "it waited for room"
    );
    // Item 1 computes, item 2 fills the queue: with no room before its
    // deadline, a waiting submit is refused as overloaded.
    let refused = batcher
        .submit_waiting(
            job(3),
            SubmitOptions {
                deadline: Some(Instant::now() + Duration::from_millis(30)),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(refused, Err(ItemError::Overloaded { .. })));
    running.await.unwrap();
    assert_eq!(queued.await.unwrap().id, 1);
    assert_eq!(waited.await.unwrap().id, 2);
    let seen: Vec<u64> = batches(&log).iter().flat_map(|b| b.ids.clone()).collect();
    assert_eq!(seen, vec![0, 1, 2]);
}

#[tokio::test]
async fn an_item_its_owner_withdraws_at_start_is_never_computed() {
    let (batcher, log) = start("withdrawn", config(8, 20));
    let withdrawn = batcher
        .submit_with(
            job(1),
            SubmitOptions {
                on_start: Some(Box::new(|| false)),
                ..Default::default()
            },
        )
        .unwrap();
    let kept = batcher
        .submit_with(
            job(2),
            SubmitOptions {
                on_start: Some(Box::new(|| true)),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(matches!(withdrawn.await, Err(ItemError::Cancelled)));
    assert_eq!(
        kept.await.unwrap().batch_size,
        1,
        "the batch holds only the kept item"
    );
    let seen: Vec<u64> = batches(&log).iter().flat_map(|b| b.ids.clone()).collect();
    assert_eq!(seen, vec![2]);
}

#[tokio::test]
async fn expired_and_cancelled_items_never_reach_the_pipeline() {
    let (batcher, log) = start("deadlines", config(32, 0));
    let busy = batcher
        .submit(Job {
            id: 1,
            sleep_ms: 300,
            ..Job::default()
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let expiring = batcher
        .submit_with(
            job(2),
            SubmitOptions {
                deadline: Some(Instant::now() + Duration::from_millis(50)),
                ..Default::default()
            },
        )
        .unwrap();
    let cancelled = batcher.submit(job(3)).unwrap();
    drop(cancelled); // the caller went away
    let kept = batcher.submit(job(4)).unwrap();
    busy.await.unwrap();
    match expiring.await {
        // The error carries the item's whole budget, from submit to deadline.
        Err(ItemError::DeadlineExceeded { budget }) => assert!(
            budget <= Duration::from_millis(50) && budget >= Duration::from_millis(45),
            "{budget:?}"
        ),
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    kept.await.unwrap();
    let seen: Vec<u64> = batches(&log).iter().flat_map(|b| b.ids.clone()).collect();
    assert_eq!(seen, vec![1, 4], "only live items reach the pipeline");
}

#[tokio::test]
async fn splitting_isolates_one_poison_item_in_a_batch_of_32() {
    let (batcher, log) = start("bisect", config(32, 5_000));
    let tickets: Vec<_> = (0..32)
        .map(|i| {
            batcher
                .submit(Job {
                    id: i,
                    poison: i == 21,
                    ..Job::default()
                })
                .unwrap()
        })
        .collect();
    let mut ok = 0;
    for (i, ticket) in tickets.into_iter().enumerate() {
        match ticket.await {
            Ok(done) => {
                assert_eq!(done.id, i as u64);
                ok += 1;
            }
            Err(ItemError::Pipeline(message)) => {
                assert_eq!(i, 21);
                assert!(message.contains("poison item in batch"), "{message}");
            }
            Err(other) => panic!("item {i}: unexpected {other}"),
        }
    }
    assert_eq!(ok, 31);
    assert!(batches(&log).len() >= 2, "the batch was split");
}

#[tokio::test]
async fn a_per_item_failure_and_a_panic_fail_only_their_items() {
    let (batcher, _log) = start("item-failures", config(8, 200));
    let a = batcher.submit(job(12)).unwrap();
    let b = batcher.submit(job(UNLUCKY)).unwrap();
    let c = batcher
        .submit(Job {
            id: 14,
            panic: true,
            ..Job::default()
        })
        .unwrap();
    assert_eq!(a.await.unwrap().id, 12);
    assert!(matches!(b.await, Err(ItemError::Item(m)) if m == "13 is unlucky"));
    assert!(matches!(c.await, Err(ItemError::Pipeline(m)) if m.contains("panicked")));
    assert_eq!(
        batcher.submit(job(15)).unwrap().await.unwrap().id,
        15,
        "the worker survived the panic"
    );
}

#[tokio::test]
async fn a_fatal_error_stops_intake_and_fails_the_queue() {
    let (batcher, log) = start("fatal", config(1, 0));
    let mut state = batcher.watch_state();
    let doomed = batcher
        .submit(Job {
            id: 1,
            fatal: true,
            sleep_ms: 100,
            ..Job::default()
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let queued: Vec<_> = (2..6).map(|i| batcher.submit(job(i)).unwrap()).collect();
    assert!(matches!(doomed.await, Err(ItemError::Unavailable { .. })));
    for ticket in queued {
        match ticket.await {
            Err(ItemError::Unavailable { reason, .. }) => {
                assert!(reason.contains("CUDA error"), "{reason}")
            }
            other => panic!("queued item: {:?}", other.map(|d| d.id)),
        }
    }
    state
        .wait_for(|s| matches!(s, BatcherState::Failed(_)))
        .await
        .unwrap();
    assert!(matches!(
        batcher.submit(job(9)),
        Err(ItemError::Unavailable { .. })
    ));
    assert!(
        batches(&log).is_empty(),
        "no queued item reached the pipeline after the fatal error"
    );
}

#[tokio::test]
async fn volume_reload_never_overlaps_a_batch_on_any_worker() {
    let mut cfg = config(4, 1);
    cfg.workers = 3;
    let (batcher, log) = start("reload", cfg);
    let batcher = Arc::new(batcher);
    let mut submitters = Vec::new();
    for s in 0..8u64 {
        let batcher = Arc::clone(&batcher);
        submitters.push(tokio::spawn(async move {
            for i in 0..40 {
                let id = s * 1000 + i;
                let done = batcher
                    .submit(Job {
                        id,
                        sleep_ms: 1,
                        ..Job::default()
                    })
                    .unwrap()
                    .await
                    .unwrap();
                assert_eq!(done.id, id);
            }
        }));
    }
    for _ in 0..20 {
        batcher.request_reload();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for s in submitters {
        s.await.unwrap();
    }
    assert!(
        log.reloads.load(Ordering::SeqCst) >= 3,
        "every worker reloaded"
    );
    assert_eq!(
        log.overlaps.load(Ordering::SeqCst),
        0,
        "a reload ran during a batch"
    );
}

#[tokio::test]
async fn the_reload_timer_fires_and_a_failing_reload_does_not_stop_serving() {
    let mut cfg = config(4, 0);
    cfg.reload_interval = Some(Duration::from_millis(40));
    let (batcher, log) = start("reload-timer", cfg);
    log.fail_reload.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        log.reloads.load(Ordering::SeqCst) >= 3,
        "timer reloads: {}",
        log.reloads.load(Ordering::SeqCst)
    );
    assert_eq!(batcher.submit(job(1)).unwrap().await.unwrap().id, 1);
}

#[tokio::test]
async fn close_drains_queued_work_then_refuses() {
    let (batcher, _log) = start("drain", config(2, 0));
    let tickets: Vec<_> = (0..6)
        .map(|i| {
            batcher
                .submit(Job {
                    id: i,
                    sleep_ms: 20,
                    ..Job::default()
                })
                .unwrap()
        })
        .collect();
    batcher.close();
    assert!(matches!(
        batcher.submit(job(99)),
        Err(ItemError::Unavailable { .. })
    ));
    assert_eq!(batcher.state(), BatcherState::Draining);
    for (i, ticket) in tickets.into_iter().enumerate() {
        assert_eq!(ticket.await.unwrap().id, i as u64);
    }
    tokio::task::spawn_blocking(move || batcher.join())
        .await
        .unwrap();
}

#[test]
fn a_failing_load_is_reported() {
    let result = Batcher::<Recorder>::start("broken-model", config(1, 0), |_| {
        ModelContext::for_test("broken-model", serde_json::json!({}))
    });
    match result {
        Err(StartupError::Load { model, message }) => {
            assert_eq!(model, "broken-model");
            assert!(message.contains("weights missing"));
        }
        other => panic!("expected a load error, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_reach_their_callers_under_many_concurrent_submitters() {
    use rand::Rng;
    let mut cfg = config(16, 1);
    cfg.workers = 2;
    cfg.max_queue_depth = 100_000;
    let (batcher, log) = start("stress", cfg);
    let batcher = Arc::new(batcher);
    let mut tasks = Vec::new();
    for submitter in 0..64u64 {
        let batcher = Arc::clone(&batcher);
        tasks.push(tokio::spawn(async move {
            let mut in_flight = Vec::new();
            for i in 0..100u64 {
                let id = submitter * 10_000 + i;
                in_flight.push((id, batcher.submit(job(id)).unwrap()));
                let pause = rand::rng().random_range(0..3u64);
                if pause == 0 {
                    tokio::task::yield_now().await;
                }
            }
            for (id, ticket) in in_flight {
                assert_eq!(
                    ticket.await.unwrap().id,
                    id,
                    "a result went to the wrong caller"
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let recorded = batches(&log);
    let total: usize = recorded.iter().map(|b| b.ids.len()).sum();
    assert_eq!(total, 6_400);
    assert!(
        recorded.iter().any(|b| b.ids.len() > 1),
        "items were batched"
    );
}

#[test]
fn cuda_texts_and_registered_classifiers_are_fatal_other_errors_are_not() {
    #[derive(Debug)]
    struct DeviceLost;
    impl std::fmt::Display for DeviceLost {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("device lost")
        }
    }
    impl std::error::Error for DeviceLost {}

    assert!(
        PipelineError::msg("CUDA error: out of memory").is_fatal(),
        "CUDA driver text is fatal"
    );
    assert!(PipelineError::fatal("explicit").is_fatal());
    assert!(!PipelineError::msg("shape mismatch in matmul").is_fatal());
    assert!(
        !PipelineError::from(DeviceLost).is_fatal(),
        "not registered yet"
    );
    modalkit_core::fatal::register_classifier(|err| err.is::<DeviceLost>());
    assert!(
        PipelineError::from(DeviceLost).is_fatal(),
        "registered by type"
    );
    assert!(
        !PipelineError::msg("device lost").is_fatal(),
        "by type, not text"
    );
}
