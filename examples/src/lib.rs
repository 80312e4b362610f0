//! Runnable modalkit-rs pipelines.
//!
//! - [`translate`]: modalkit's README example (no weights): uppercases text
//!   and reports a confidence. `cargo run -p modalkit-examples --bin translate`.
//! - [`bert`]: the BERT family on the project's encoder: sentence
//!   embeddings (all-MiniLM-L6-v2 by default; `scripts/fetch-model.sh`),
//!   rerankers and classifiers, with TEI's and OpenAI's routes
//!   (`--bin embeddings`).
//! - [`noop`]: computes nothing; the HTTP benchmark's subject and a template.

pub mod bert;
pub mod llama;
pub mod noop;
pub mod translate;
