//! Core's errors, one type per layer: a [`StartupError`] stops a server
//! before it serves (a bad config file, a model entry, a device, a model
//! that failed to load); an [`ItemError`] is one item's answer while it
//! serves (overloaded, past its deadline, failed in the pipeline). The
//! server maps each to an exit or an HTTP status in one place.

use std::fmt;
use std::time::Duration;

/// Why a server cannot start serving.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartupError {
    /// The merged configuration is invalid; each problem names its field path.
    #[error("invalid configuration:\n{0}")]
    Config(ConfigProblems),

    /// A model's entry in `model_settings.model_entries` does not fit the type
    /// the pipeline asked for.
    #[error("model '{model}': model_settings.model_entries.{model}{path}: {message}")]
    ModelEntry {
        /// The model whose entry is wrong.
        model: String,
        /// Path inside the entry (`.field`), empty for the entry itself.
        path: String,
        /// What is wrong with it.
        message: String,
    },

    /// The configured device cannot be used.
    #[error("device '{requested}' cannot be used: {reason}")]
    Device {
        /// What the config asked for.
        requested: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// A pipeline failed to load.
    #[error("model '{model}' failed to load: {message}")]
    Load {
        /// The model that failed.
        model: String,
        /// The pipeline's error.
        message: String,
    },
}

impl StartupError {
    /// A configuration error of a single problem.
    pub fn config(problem: impl Into<String>) -> Self {
        StartupError::Config(ConfigProblems(vec![problem.into()]))
    }
}

/// Why one item got no output.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ItemError {
    /// The model's intake queue is full; the caller should retry later.
    #[error("model '{model}' is overloaded: {depth} items already queued")]
    Overloaded {
        /// The model whose queue is full.
        model: String,
        /// The queue's depth limit.
        depth: usize,
    },

    /// The model takes no more work: shutting down, or its device failed.
    #[error("model '{model}' is unavailable: {reason}")]
    Unavailable {
        /// The model.
        model: String,
        /// Why it takes no work.
        reason: String,
    },

    /// The item's deadline passed before it was computed.
    #[error("deadline exceeded before the item was computed")]
    DeadlineExceeded {
        /// The time the item was given, from its submission to its deadline.
        budget: Duration,
    },

    /// Preprocess or predict failed for this item (after the batch was split
    /// to isolate it), or the pipeline panicked.
    #[error("pipeline failed: {0}")]
    Pipeline(String),

    /// Postprocess reported that this one item failed.
    #[error("{0}")]
    Item(String),

    /// The pipeline said this item's input is invalid
    /// ([`crate::ErrorKind::InvalidInput`]); the message is the pipeline's.
    #[error("{0}")]
    InvalidInput(String),

    /// The item was withdrawn before its batch started (its job was
    /// cancelled); it was never computed.
    #[error("cancelled before it was computed")]
    Cancelled,
}

/// The list of problems found in a configuration, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblems(pub Vec<String>);

impl fmt::Display for ConfigProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  - {problem}")?;
        }
        Ok(())
    }
}
