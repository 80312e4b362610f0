//! A running server's life after start-up: warming the models up, waiting
//! for a stop (a signal, the caller, or a failed device), draining, and
//! reloading volumes on SIGHUP.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use modalkit_core::batcher::BatcherState;
use modalkit_core::{Batcher, InferencePipeline};

use crate::aws::InputConsumer;
use crate::server::{EXIT_DEVICE_FAILED, Stopped};
use crate::state::AppState;

/// Runs the warm-up inputs through each model's batcher, then marks the
/// server ready. A failing warm-up item
/// is logged; a fatal one fails the model (and `/ready` says so).
pub(crate) async fn warm_up<P: InferencePipeline>(
    state: Arc<AppState<P>>,
    warmups: Vec<(String, Vec<P::Input>)>,
) {
    let started = Instant::now();
    for (name, inputs) in warmups {
        let Some(batcher) = state.models.get(&name) else {
            continue;
        };
        let count = inputs.len();
        let deadline = Instant::now() + state.limits.async_timeout;
        let mut tickets = Vec::with_capacity(count);
        for input in inputs {
            let options = modalkit_core::SubmitOptions {
                deadline: Some(deadline),
                on_start: None,
                timing: None,
            };
            match batcher.submit_waiting(input, options).await {
                Ok(ticket) => tickets.push(ticket),
                Err(err) => tracing::warn!(model = %name, %err, "a warm-up item was refused"),
            }
        }
        let mut failed = 0;
        for ticket in tickets {
            if let Err(err) = ticket.await {
                failed += 1;
                tracing::warn!(model = %name, %err, "a warm-up item failed");
            }
        }
        tracing::info!(model = %name, items = count, failed, elapsed = ?started.elapsed(), "warmed up");
    }
    state.warmed_up(started.elapsed().as_secs_f64());
}

pub(crate) async fn wait_for_stop<P: InferencePipeline>(
    state: &AppState<P>,
    shutdown: impl Future<Output = ()>,
) -> Stopped {
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<()>(1);
    for batcher in state.models.values() {
        let mut watcher = batcher.watch_state();
        let failed = failed_tx.clone();
        tokio::spawn(async move {
            if watcher
                .wait_for(|s| matches!(s, BatcherState::Failed(_)))
                .await
                .is_ok()
            {
                let _ = failed.try_send(());
            }
        });
    }
    drop(failed_tx);
    let fatal = async {
        if failed_rx.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = shutdown => { tracing::info!("shutdown requested"); Stopped::Clean }
        () = terminate_signal() => { tracing::info!("SIGTERM/SIGINT received: draining"); Stopped::Clean }
        () = fatal => { tracing::error!("a model's device failed: draining, then exiting with code {EXIT_DEVICE_FAILED}"); Stopped::DeviceFailed }
    }
}

/// The drain: stop intake, let queued work and async deliveries finish
/// within `grace`; past it, fail what is still queued (async jobs then send
/// their failure or dead-letter it) and stop retrying deliveries.
pub(crate) async fn drain<P: InferencePipeline>(
    state: &AppState<P>,
    consumer: Option<&InputConsumer>,
    grace: Duration,
) {
    let started = Instant::now();
    state.shutting_down.store(true, Ordering::SeqCst);
    for batcher in state.models.values() {
        batcher.close();
    }
    state.jobs.tasks().close();
    let deadline = tokio::time::Instant::now() + grace;
    let workers_done = join_batchers(state);
    if tokio::time::timeout_at(deadline, async {
        workers_done.await;
        state.jobs.tasks().wait().await;
        if let Some(consumer) = consumer {
            consumer.wait().await;
        }
    })
    .await
    .is_err()
    {
        let failed: usize = state
            .models
            .values()
            .map(|b| b.fail_queued("the server shut down before this item was computed"))
            .sum();
        tracing::warn!(
            failed_queued = failed,
            pending_jobs = state.jobs.tasks().len(),
            "grace period over"
        );
        state.jobs.delivery().give_up();
        state.jobs.tasks().wait().await;
        if let Some(consumer) = consumer {
            consumer.wait().await;
        }
    }
    tracing::info!(elapsed = ?started.elapsed(), "drained");
}

fn join_batchers<P: InferencePipeline>(state: &AppState<P>) -> impl Future<Output = ()> + use<P> {
    let batchers: Vec<Arc<Batcher<P>>> = state.models.values().cloned().collect();
    async move {
        let _ = tokio::task::spawn_blocking(move || batchers.iter().for_each(|b| b.join())).await;
    }
}

#[cfg(unix)]
async fn terminate_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        }
        _ => {
            tracing::error!("cannot listen for SIGTERM/SIGINT");
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(not(unix))]
async fn terminate_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(unix)]
pub(crate) async fn reload_on_sighup<P: InferencePipeline>(state: Arc<AppState<P>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP; volume reloads only on the timer");
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading volumes");
        for batcher in state.models.values() {
            batcher.request_reload();
        }
    }
}

#[cfg(not(unix))]
pub(crate) async fn reload_on_sighup<P: InferencePipeline>(_state: Arc<AppState<P>>) {}
