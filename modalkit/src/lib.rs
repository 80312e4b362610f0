//! modalkit-rs: serve a model the way modalkit does, from Rust.
//!
//! Implement [`InferencePipeline`] for your model, write a `modalkit.yaml`,
//! and call [`run`] from `main`: you get a server with dynamic batching,
//! `/predict_sync`, `/predict_batch` and `/predict_async`, results delivered
//! to queues, health, metrics and OpenAPI docs.
//!
//! ```no_run
//! use modalkit::prelude::*;
//!
//! #[modalkit::input]
//! struct Text {
//!     #[garde(length(min = 1))]
//!     text: String,
//! }
//!
//! #[modalkit::output]
//! struct Length {
//!     chars: usize,
//! }
//!
//! struct Counter;
//!
//! impl InferencePipeline for Counter {
//!     type Input = Text;
//!     type Preprocessed = Vec<usize>;
//!     type Predicted = Vec<usize>;
//!     type Output = Length;
//!
//!     fn load(_: &ModelContext) -> Result<Self, PipelineError> {
//!         Ok(Counter)
//!     }
//!     fn preprocess(&self, inputs: &[Text]) -> Result<Vec<usize>, PipelineError> {
//!         Ok(inputs.iter().map(|input| input.text.chars().count()).collect())
//!     }
//!     fn predict(&self, _: &[Text], counts: Vec<usize>) -> Result<Vec<usize>, PipelineError> {
//!         Ok(counts)
//!     }
//!     fn postprocess(&self, _: &[Text], counts: Vec<usize>) -> Vec<ItemResult<Length>> {
//!         counts.into_iter().map(|chars| Ok(Length { chars })).collect()
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     modalkit::run::<Counter>()
//! }
//! ```
//!
//! This crate is the one dependency a pipeline crate needs. Its public items
//! are what a pipeline, a custom binary or a custom backend uses; the
//! handlers, jobs and batcher behind them are private, so they can change
//! without breaking you.
//!
//! Features (all off by default, so a pipeline crate pulls in neither candle
//! nor the AWS SDK unless it asks):
//! - `sqs`: SQS result queues, durable async jobs through an SQS input
//!   queue, the API key from SSM;
//! - `dynamodb` (implies `sqs`): the job store shared by every container;
//! - `webhooks`: results POSTed to URLs, signed;
//! - `candle`: device selection, candle's CUDA errors as fatal, the BERT
//!   encoder ([`candle`]);
//! - `cuda`: `candle` built for NVIDIA GPUs;
//! - `otel`: OpenTelemetry traces over OTLP/HTTP.
//!
//! The allocator is the binary's choice: the examples and the project
//! `modalkit new` writes set mimalloc as `#[global_allocator]`.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use modalkit_core::{
    ErrorKind, InferencePipeline, ItemResult, ModelContext, PipelineError, StartupError,
};
pub use modalkit_macros::{entry, input, output};
pub use modalkit_server::{
    AppState, EXIT_DEVICE_FAILED, EXIT_STARTUP_FAILED, Server, ServerError, ServerOptions, Stopped,
    job_store, openai, run, run_with, run_with_routes, tei,
};

/// Settings: `modalkit.yaml` and `MODALKIT_` variables, merged and checked,
/// for a binary that builds its [`Server`] itself.
pub mod settings {
    pub use modalkit_core::settings::{
        AppSettings, AuthConfig, BatchConfig, BuildConfig, CloudBucketMount, ConfigSources,
        DeploymentConfig, JobStoreKind, ModelSettings, Mount, MountKind, QueueConfig, ServerConfig,
        Settings,
    };
}
pub use settings::Settings;

/// Generative pipelines: the contract and engine
/// ([`GenerativePipeline`](generate::GenerativePipeline), [`Engine`](generate::Engine)),
/// and their streaming and OpenAI routes ([`run`](generate::run)).
pub mod generate {
    pub use modalkit_core::generate::{
        Engine, EngineConfig, FinishReason, Generated, GenerativePipeline, StreamEvent, Token,
        TokenStream, WholeGeneration,
    };
    pub use modalkit_server::generate::{
        ChatMessage, CompletionRequest, Prompt, TextGenerator, routes, run,
    };
}

/// The `device` setting of a model entry, for a pipeline that picks its own
/// device (with `candle`, [`candle::resolve`] does it for candle).
pub mod device {
    pub use modalkit_core::device::DeviceRequest;
}

/// Where async results go: the [`QueueBackend`](queue::QueueBackend) trait a
/// backend of your own implements, the registry that selects backends by
/// name, and the backends that come with the crate.
pub mod queue {
    pub use modalkit_queue::{
        BackendRegistry, InMemoryQueue, Labels, QueueBackend, QueueError, WebhookRefusal,
    };
    #[cfg(feature = "sqs")]
    pub use modalkit_queue::{SqsOptions, SqsQueue};
}

#[cfg(feature = "candle")]
pub use modalkit_candle as candle;

#[doc(no_inline)]
pub use garde;
#[doc(no_inline)]
pub use schemars;
#[doc(no_inline)]
pub use serde;
#[doc(no_inline)]
pub use serde_json;

/// The contract in one `use modalkit::prelude::*;`.
pub mod prelude {
    pub use garde::Validate as _;
    pub use modalkit_core::{
        ErrorKind, InferencePipeline, ItemResult, ModelContext, PipelineError,
    };
}
