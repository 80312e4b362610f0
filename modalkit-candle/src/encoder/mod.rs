//! A BERT encoder owned by the project, for sentence-transformers models.
//!
//! - [`cpu`]: the CPU encoder: packed weights, no padding, kernels compiled
//!   per instruction set and chosen at run time (`unsafe` only in the
//!   dispatch and the GEMM tile).
//! - [`bert`]: the same model on candle's ops, for CUDA and as the reference
//!   the CPU encoder is tested against.
//! - [`weights`]: safetensors read one tensor at a time into f32 buffers.

pub mod bert;
pub mod cpu;
pub mod weights;

pub use bert::{BertConfig, BertEncoder, mean_pool_normalized};
pub use cpu::CpuEncoder;
pub use weights::Weights;
