//! Runnable modalkit-rs pipelines.
//!
//! - [`translate`]: modalkit's README example (no weights): uppercases text
//!   and reports a confidence. `cargo run -p modalkit-examples --bin translate`.
//! - [`embeddings`]: sentence-transformers/all-MiniLM-L6-v2 on candle
//!   (`scripts/fetch-model.sh`, then `--bin embeddings`).
//! - [`noop`]: computes nothing; the HTTP benchmark's subject and a template.

pub mod embeddings;
pub mod noop;
pub mod translate;
