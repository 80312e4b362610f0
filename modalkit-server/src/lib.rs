//! The modalkit-rs HTTP server: modalkit's endpoints on axum.
//!
//! A binary serves its pipeline with one line:
//!
//! ```no_run
//! # use modalkit_core::InferencePipeline;
//! # fn demo<MyPipeline: InferencePipeline>() -> std::process::ExitCode {
//! modalkit_server::cli::run::<MyPipeline>()
//! # }
//! ```
//!
//! which gives `serve`, `check` and `openapi` subcommands over
//! `modalkit.yaml`. Embedders use [`Server`] directly.

pub mod async_jobs;
pub mod auth;
pub mod cli;
pub mod error;
pub mod extract;
mod features;
pub mod openai;
pub mod openapi;
pub mod request_scope;
pub mod router;
pub mod routes;
pub mod server;
#[cfg(feature = "sqs")]
pub mod ssm;
pub mod state;
pub mod telemetry;
pub mod traces;

pub use error::ApiError;
pub use server::{EXIT_DEVICE_FAILED, Server, ServerError, ServerOptions, Stopped};
