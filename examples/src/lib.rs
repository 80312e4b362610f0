//! Runnable modalkit-rs pipelines.
//!
//! - [`translate`]: modalkit's README example (no weights): uppercases text
//!   and reports a confidence. `cargo run -p modalkit-examples --bin translate`.

pub mod translate;
