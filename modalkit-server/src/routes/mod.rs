//! The HTTP handlers, one module per concern; each is thin: parse, hand to
//! the batcher or store, shape the reply.

pub mod docs;
pub mod health;
pub mod jobs;
pub mod predict;
