//! candle for modalkit-rs.
//!
//! `modalkit-core` knows nothing of candle; a pipeline that computes with
//! candle uses this crate for:
//! - [`device`]: the `device` setting (`cpu`, `cuda`, `cuda:N`, `auto`)
//!   resolved to a candle [`Device`](candle_core::Device), with a clear
//!   start-up error when a GPU is asked for but not usable;
//! - [`fatal`]: candle's `Error::Cuda` classified as a fatal device error, so
//!   the batcher stops intake and the server exits for the platform to
//!   replace the container;
//! - [`encoder`]: an owned BERT encoder (sentence-transformers models): CPU
//!   kernels chosen per instruction set, candle's ops on other devices.
//!
//! Build with the `cuda` feature for GPUs (`scripts/build-cuda.sh` builds it
//! on a machine without one).

pub mod device;
pub mod encoder;
pub mod fatal;

pub use device::{describe, resolve};
