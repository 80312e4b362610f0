//! The modalkit-rs contract and engine.
//!
//! A model author implements [`InferencePipeline`]; the framework loads it per
//! worker from a [`ModelContext`], batches requests through a [`Batcher`] and
//! speaks modalkit's wire types ([`wire`]). Settings come from `modalkit.yaml`
//! and `MODALKIT_` environment variables ([`settings`]).
//!
//! This crate knows nothing of HTTP or queues: the server and queue crates
//! build on it.

pub mod batcher;
pub mod context;
pub mod device;
pub mod error;
pub mod fatal;
pub mod generate;
pub mod pipeline;
pub mod settings;
pub mod wire;

pub use batcher::{Batcher, BatcherConfig, ItemTiming, StageTimes, SubmitOptions, Ticket};
pub use context::ModelContext;
pub use error::{ConfigProblems, ItemError, StartupError};
pub use generate::{GenerativePipeline, WholeGeneration};
pub use pipeline::{ErrorKind, InferencePipeline, ItemResult, PipelineError};
pub use settings::Settings;
