//! Runnable modalkit-rs pipelines.
//!
//! - [`translate`]: modalkit's README example (no weights): uppercases text
//!   and reports a confidence. `cargo run -p modalkit-examples --bin translate`.
//! - [`noop`]: computes nothing; the HTTP benchmark's subject and a template.

pub mod noop;
pub mod translate;
