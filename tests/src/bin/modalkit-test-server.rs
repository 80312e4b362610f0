//! The echo pipeline behind the real CLI, for tests that need a separate
//! process (signals, exit codes, several consumers). With
//! `MODALKIT_TEST_QUEUE_DUMP` set, results go to an in-memory queue whose
//! contents are written there as JSON after the server stops, so a test can
//! check nothing was lost; otherwise the config's backend is used.

use std::process::ExitCode;
use std::sync::Arc;

use modalkit_queue::{InMemoryQueue, QueueBackend};
use modalkit_server::ServerOptions;
use modalkit_tests::pipeline::EchoPipeline;

/// mimalloc, as the example binaries.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let dump = std::env::var("MODALKIT_TEST_QUEUE_DUMP").ok();
    let queue = Arc::new(InMemoryQueue::new(1_000_000));
    let options = ServerOptions {
        queue_backend: dump
            .as_ref()
            .map(|_| Arc::clone(&queue) as Arc<dyn QueueBackend>),
        ..Default::default()
    };
    let code = modalkit_server::run_with::<EchoPipeline>(options);
    if let Some(path) = dump {
        let snapshot = serde_json::to_string(&queue.snapshot()).unwrap_or_default();
        if let Err(err) = std::fs::write(&path, snapshot) {
            eprintln!("cannot write the queue dump {path}: {err}");
            return ExitCode::from(70);
        }
    }
    code
}
