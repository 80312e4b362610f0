//! The HTTP handlers, one module per concern; each is thin: parse, hand to
//! the batcher or store, shape the reply.

pub(crate) mod docs;
pub(crate) mod health;
pub(crate) mod jobs;
pub(crate) mod predict;
