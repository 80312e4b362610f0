//! The modalkit-rs HTTP server: modalkit's endpoints on axum.
//!
//! A binary serves its pipeline with one line:
//!
//! ```no_run
//! # use modalkit_core::InferencePipeline;
//! # fn demo<MyPipeline: InferencePipeline>() -> std::process::ExitCode {
//! modalkit_server::run::<MyPipeline>()
//! # }
//! ```
//!
//! which gives `serve`, `check` and `openapi` subcommands over
//! `modalkit.yaml`. Embedders build a [`Server`] directly. Everything else
//! (handlers, jobs, auth, traces) is private: the public items are the ones
//! a pipeline crate, a custom binary or a custom job store needs.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(unreachable_pub)]

mod async_jobs;
mod auth;
mod aws;
mod cli;
mod connections;
mod error;
mod extract;
mod features;
pub mod generate;
mod lifecycle;
pub mod openai;
mod openapi;
mod request_scope;
mod router;
mod routes;
mod server;
mod startup;
mod state;
pub mod tei;
mod telemetry;
mod traces;

pub use cli::{EXIT_STARTUP_FAILED, run, run_with, run_with_routes};
pub use server::{EXIT_DEVICE_FAILED, Server, ServerError, ServerOptions, Stopped};
pub use state::AppState;

/// Where async jobs are recorded: the [`JobStore`](job_store::JobStore)
/// trait a store of your own implements (pass it in
/// [`ServerOptions::job_store`]), the records it keeps, and the two stores
/// that come with the server.
pub mod job_store {
    pub use crate::async_jobs::record::{JobEnd, JobRecord, JobStatus};
    #[cfg(feature = "dynamodb")]
    pub use crate::async_jobs::store::DynamoJobStore;
    pub use crate::async_jobs::store::{
        JobStore, KeyClaim, MemoryJobStore, StoreError, Transition,
    };
}
