//! The echo pipeline behind the real CLI, for tests that need a separate
//! process (signals, exit codes). Results go to an in-memory queue; when
//! `MODALKIT_TEST_QUEUE_DUMP` is set, the queue's contents are written there
//! as JSON after the server stops, so a test can check nothing was lost.

use std::process::ExitCode;
use std::sync::Arc;

use modalkit_queue::{InMemoryQueue, QueueBackend};
use modalkit_server::ServerOptions;
use modalkit_tests::pipeline::EchoPipeline;

fn main() -> ExitCode {
    let queue = Arc::new(InMemoryQueue::new(1_000_000));
    let options = ServerOptions {
        queue_backend: Some(Arc::clone(&queue) as Arc<dyn QueueBackend>),
        ..Default::default()
    };
    let code = modalkit_server::cli::run_with::<EchoPipeline>(options);
    if let Ok(path) = std::env::var("MODALKIT_TEST_QUEUE_DUMP") {
        let snapshot = serde_json::to_string(&queue.snapshot()).unwrap_or_default();
        if let Err(err) = std::fs::write(&path, snapshot) {
            eprintln!("cannot write the queue dump {path}: {err}");
            return ExitCode::from(70);
        }
    }
    code
}
