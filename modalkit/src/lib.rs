//! modalkit-rs: serve a model the way modalkit does, from Rust.
//!
//! Implement [`InferencePipeline`] for your model, write a `modalkit.yaml`,
//! and call [`run`] from `main`: you get a server with dynamic batching,
//! `/predict_sync`, `/predict_batch` and `/predict_async`, results delivered
//! to queues, health, metrics and OpenAPI docs. This crate is the one
//! dependency a pipeline crate needs: it re-exports the contract
//! ([`modalkit_core`]), the server ([`server`]), the queues ([`queue`]) and the
//! crates the derive macros expand to ([`serde`], [`schemars`], [`garde`]).
//!
//! Features: `sqs` (SQS queues, durable async jobs through an SQS input
//! queue, the API key from SSM), `dynamodb` (implies `sqs`: the job store
//! shared by every container), `webhooks` (results POSTed to URLs, signed),
//! `candle` (device selection, candle's CUDA errors as fatal, the BERT
//! encoder: [`candle`]), `cuda` (`candle` built for NVIDIA GPUs), `otel`
//! (OpenTelemetry traces over OTLP/HTTP), and `mimalloc` (default: the
//! process allocates with mimalloc; glibc's malloc and free took a fifth of
//! a no-op server's CPU time. Turn default features off to set your own
//! `#[global_allocator]`). It pulls in neither candle nor the AWS SDK unless
//! asked.
//!
//! `cargo run -p modalkit -- new my-model` writes a new project (pipeline,
//! `modalkit.yaml`, Dockerfile, Modal app); see [`scaffold`].

pub mod scaffold;

/// The process's allocator with the `mimalloc` feature (on by default).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub use modalkit_core::{
    Batcher, BatcherConfig, Error, ErrorKind, InferencePipeline, ItemResult, ModelContext,
    PipelineError, Settings, SubmitOptions, Ticket,
};
pub use modalkit_core::{batcher, context, device, fatal, pipeline, settings, wire};
pub use modalkit_server::{
    ApiError, EXIT_DEVICE_FAILED, Server, ServerError, ServerOptions, Stopped,
};

/// The HTTP server: router, handlers, jobs, auth, OpenAPI, CLI.
pub mod server {
    pub use modalkit_server::*;
}

/// Result delivery: the `QueueBackend` trait, in-memory and SQS backends.
pub mod queue {
    pub use modalkit_queue::*;
}

#[cfg(feature = "candle")]
pub use modalkit_candle as candle;

pub use modalkit_macros::{entry, input, output};

pub use garde;
pub use schemars;
pub use serde;
pub use serde_json;

/// The command line of a server binary for pipeline `P`: `serve` (default),
/// `check` and `openapi`, over `modalkit.yaml` and `MODALKIT_` variables.
///
/// ```no_run
/// # fn demo<MyModel: modalkit::InferencePipeline>() -> std::process::ExitCode {
/// modalkit::run::<MyModel>()
/// # }
/// ```
pub fn run<P: InferencePipeline>() -> std::process::ExitCode {
    modalkit_server::cli::run::<P>()
}

/// The contract in one `use modalkit::prelude::*;`.
pub mod prelude {
    pub use garde::Validate as _;
    pub use modalkit_core::{
        ErrorKind, InferencePipeline, ItemResult, ModelContext, PipelineError,
    };
}
