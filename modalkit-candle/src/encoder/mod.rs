//! A BERT encoder owned by the project, for sentence-transformers models.
//!
//! - [`cpu`]: the CPU encoder: packed weights, no padding, kernels compiled
//!   per instruction set and chosen at run time (`unsafe` only in the
//!   dispatch and the GEMM tile).
//! - [`bert`]: the same model on candle's ops, for CUDA and as the reference
//!   the CPU encoder is tested against.
//! - [`weights`]: safetensors read one tensor at a time into f32 buffers.
//! - [`input`]: what both take ([`Tokens`]) and how they pool ([`Pooling`]).
//! - [`head`]: the sequence-classification head (cross-encoders,
//!   classifiers) on the `[CLS]` vector.

pub mod bert;
pub mod cpu;
pub mod head;
pub mod input;
pub mod weights;

pub use bert::{BertConfig, BertEncoder, pool};
pub use cpu::CpuEncoder;
pub use head::ClassifierHead;
pub use input::{Pooling, Tokens, normalize};
pub use weights::Weights;
