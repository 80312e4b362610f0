#![allow(missing_docs, clippy::expect_used)]
//! The batcher's own cost per item, with a pipeline that does nothing:
//! `cargo bench -p modalkit-rs-core --bench batcher`.
//!
//! Each case pushes N items through one batcher from S concurrent
//! submitters (each awaiting its item before submitting the next), with
//! `max_batch_size` B and `wait_ms` 0, and reports time per item.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use garde::Validate;
use modalkit_core::{
    Batcher, BatcherConfig, InferencePipeline, ItemResult, ModelContext, PipelineError,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Validate, JsonSchema)]
struct Item {
    #[garde(skip)]
    id: u64,
}

#[derive(Serialize, JsonSchema)]
struct Echo {
    id: u64,
}

struct Noop;

impl InferencePipeline for Noop {
    type Input = Item;
    type Output = Echo;
    type Preprocessed = ();
    type Predicted = ();

    fn load(_: &ModelContext) -> Result<Self, PipelineError> {
        Ok(Noop)
    }
    fn preprocess(&self, _: &[Item]) -> Result<(), PipelineError> {
        Ok(())
    }
    fn predict(&self, _: &[Item], _: ()) -> Result<(), PipelineError> {
        Ok(())
    }
    fn postprocess(&self, inputs: &[Item], _: ()) -> Vec<ItemResult<Echo>> {
        inputs.iter().map(|i| Ok(Echo { id: i.id })).collect()
    }
}

fn run_items(
    runtime: &tokio::runtime::Runtime,
    batcher: &Arc<Batcher<Noop>>,
    submitters: u64,
    items: u64,
) -> Duration {
    let per_submitter = items.div_ceil(submitters);
    runtime.block_on(async {
        let started = Instant::now();
        let tasks: Vec<_> = (0..submitters)
            .map(|s| {
                let batcher = Arc::clone(batcher);
                tokio::spawn(async move {
                    for i in 0..per_submitter {
                        let id = s * per_submitter + i;
                        let echo = batcher
                            .submit(Item { id })
                            .expect("admitted")
                            .await
                            .expect("computed");
                        assert_eq!(echo.id, id);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("submitter");
        }
        started.elapsed()
    })
}

fn batcher_overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("batcher_overhead_per_item");
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    for max_batch_size in [1usize, 32] {
        for submitters in [1u64, 64] {
            let config = BatcherConfig {
                max_batch_size,
                wait: Duration::ZERO,
                max_queue_depth: 100_000,
                ..BatcherConfig::default()
            };
            let batcher = Arc::new(
                Batcher::<Noop>::start("bench", config, |_| {
                    ModelContext::for_test("bench", serde_json::Value::Null)
                })
                .expect("batcher starts"),
            );
            let items = 2_048u64;
            group.throughput(Throughput::Elements(items));
            let id = BenchmarkId::new(
                format!("batch{max_batch_size}"),
                format!("{submitters}_submitters"),
            );
            group.bench_with_input(id, &submitters, |b, &submitters| {
                b.iter_custom(|iterations| {
                    (0..iterations)
                        .map(|_| run_items(&runtime, &batcher, submitters, items))
                        .sum()
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, batcher_overhead);
criterion_main!(benches);
