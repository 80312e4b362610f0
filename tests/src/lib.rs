//! Shared pieces of the end-to-end tests: a controllable test pipeline, and
//! helpers that start real servers (in this process on port 0, or as a
//! separate process) and talk to them with a real HTTP client.

pub mod fault_proxy;
pub mod model;
pub mod moto;
pub mod oracle;
pub mod pipeline;
pub mod support;
