//! The contract a model author implements: load once per worker, then
//! `preprocess -> predict -> postprocess` on each batch.

use std::error::Error as StdError;
use std::fmt;

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::ModelContext;

/// One item's outcome from [`InferencePipeline::postprocess`].
pub type ItemResult<T> = Result<T, PipelineError>;

/// A model served by modalkit-rs.
///
/// The batcher builds one instance per worker thread with [`load`](Self::load)
/// and calls the three stages on each batch, on that thread: the methods are
/// synchronous because model compute is blocking work. `postprocess` returns
/// one result per input, in order; one item may fail alone. If `preprocess` or
/// `predict` fails for a whole batch, the batcher splits the batch to find the
/// failing items and the others still succeed.
///
/// # Example
///
/// A pipeline that uppercases text and refuses the word "poison" alone:
///
/// ```
/// use garde::Validate;
/// use modalkit_core::{InferencePipeline, ItemResult, ModelContext, PipelineError};
/// use schemars::JsonSchema;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize, Validate, JsonSchema)]
/// struct Text {
///     #[garde(length(min = 1))]
///     text: String,
/// }
///
/// #[derive(Debug, Serialize, JsonSchema)]
/// struct Upper {
///     text: String,
/// }
///
/// struct Shout {
///     suffix: String,
/// }
///
/// impl InferencePipeline for Shout {
///     type Input = Text;
///     type Output = Upper;
///     type Preprocessed = Vec<String>;
///     type Predicted = Vec<String>;
///
///     fn load(ctx: &ModelContext) -> Result<Self, PipelineError> {
///         #[derive(Deserialize)]
///         struct Entry { suffix: String }
///         let entry: Entry = ctx.entry()?;
///         Ok(Shout { suffix: entry.suffix })
///     }
///
///     fn preprocess(&self, inputs: &[Text]) -> Result<Vec<String>, PipelineError> {
///         Ok(inputs.iter().map(|i| i.text.trim().to_owned()).collect())
///     }
///
///     fn predict(&self, _: &[Text], pre: Vec<String>) -> Result<Vec<String>, PipelineError> {
///         Ok(pre.into_iter().map(|t| t.to_uppercase() + &self.suffix).collect())
///     }
///
///     fn postprocess(&self, _: &[Text], raw: Vec<String>) -> Vec<ItemResult<Upper>> {
///         raw.into_iter()
///             .map(|text| {
///                 if text.starts_with("POISON") {
///                     Err(PipelineError::msg("poison is not allowed"))
///                 } else {
///                     Ok(Upper { text })
///                 }
///             })
///             .collect()
///     }
/// }
///
/// let ctx = ModelContext::for_test("shout", serde_json::json!({"suffix": "!"}));
/// let shout = Shout::load(&ctx).unwrap();
/// let inputs = vec![Text { text: "hello".into() }, Text { text: "poison".into() }];
/// inputs.iter().try_for_each(|i| i.validate()).unwrap();
/// let pre = shout.preprocess(&inputs).unwrap();
/// let raw = shout.predict(&inputs, pre).unwrap();
/// let out = shout.postprocess(&inputs, raw);
/// assert_eq!(out[0].as_ref().unwrap().text, "HELLO!");
/// assert_eq!(out[1].as_ref().unwrap_err().to_string(), "poison is not allowed");
/// ```
pub trait InferencePipeline: Send + Sync + Sized + 'static {
    /// One request's message: deserialized from JSON, validated with garde.
    type Input: DeserializeOwned + garde::Validate<Context: Default> + JsonSchema + Send + 'static;
    /// One item's result: its fields are flattened into `InferenceOutput`.
    type Output: Serialize + JsonSchema + Send + 'static;
    /// What `preprocess` hands to `predict` for a batch.
    type Preprocessed;
    /// What `predict` hands to `postprocess` for a batch.
    type Predicted;

    /// Builds the pipeline for one worker (weights, tokenizer, device).
    fn load(ctx: &ModelContext) -> Result<Self, PipelineError>;

    /// Turns a batch of inputs into model-ready data.
    fn preprocess(&self, inputs: &[Self::Input]) -> Result<Self::Preprocessed, PipelineError>;

    /// Runs the model on a preprocessed batch.
    fn predict(
        &self,
        inputs: &[Self::Input],
        preprocessed: Self::Preprocessed,
    ) -> Result<Self::Predicted, PipelineError>;

    /// Turns the model's raw output into one result per input, in order.
    fn postprocess(
        &self,
        inputs: &[Self::Input],
        predicted: Self::Predicted,
    ) -> Vec<ItemResult<Self::Output>>;

    /// An item's share of a batch's work, counted against
    /// `batch_config.max_batch_tokens`: its tokens for a text model (an
    /// estimate serves: it only bounds batches), 1 by default. Called once
    /// per item at submit, on the caller's thread: keep it cheap.
    fn cost(input: &Self::Input) -> usize {
        let _ = input;
        1
    }

    /// The device this instance computes on (`cpu`, `cuda:0`), shown by
    /// `/ready`. Default: `cpu`.
    fn device(&self) -> String {
        "cpu".to_owned()
    }

    /// Called when the model volume was reloaded; never runs concurrently
    /// with a batch. Its error is logged and serving goes on.
    fn on_volume_reload(&self) -> Result<(), PipelineError> {
        Ok(())
    }

    /// Inputs to run through the model once it is loaded, before `/ready`
    /// turns 200, so the first real request does not pay for lazy
    /// initialisation (kernels compiled, caches and allocator warmed). The
    /// usual answer is `max_batch_size` copies of a typical input: one full
    /// batch. Default: none (ready as soon as loaded).
    fn warmup_inputs(ctx: &ModelContext, max_batch_size: usize) -> Vec<Self::Input> {
        let _ = (ctx, max_batch_size);
        Vec::new()
    }
}

/// What kind of failure a [`PipelineError`] is; the server maps each kind to
/// one reply (see `docs/http-api.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input is bad in a way only the pipeline can tell (an image that
    /// does not decode, a text the tokenizer refuses): `/predict_sync`
    /// answers 422 with the pipeline's message; in a batch or an async job
    /// the item gets an error output with that message.
    InvalidInput,
    /// The pipeline failed on this item: an error output for an item that
    /// failed alone in `postprocess`, 500 for a failure of `preprocess` or
    /// `predict` isolated to this item.
    Internal,
    /// The device cannot be trusted any more: intake stops, queued work
    /// fails, and the server exits so the platform replaces the container.
    Fatal,
}

/// An error from pipeline code.
///
/// Any `std::error::Error` converts into it with `?` (kind
/// [`ErrorKind::Internal`]); [`PipelineError::msg`] makes one from text,
/// [`PipelineError::invalid_input`] marks the input as the cause, and
/// [`PipelineError::fatal`] marks an error after which the device cannot be
/// trusted. Errors whose chain carries a CUDA driver error are fatal too (see
/// [`crate::fatal`]).
///
/// ```
/// use modalkit_core::{ErrorKind, PipelineError};
/// let bad = PipelineError::invalid_input("the image is not a PNG");
/// assert_eq!(bad.kind(), ErrorKind::InvalidInput);
/// let io: PipelineError = std::io::Error::other("disk full").into();
/// assert_eq!(io.kind(), ErrorKind::Internal);
/// let cuda = PipelineError::msg("CUDA error: out of memory");
/// assert_eq!(cuda.kind(), ErrorKind::Fatal);
/// ```
pub struct PipelineError {
    source: Box<dyn StdError + Send + Sync + 'static>,
    kind: ErrorKind,
}

#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Message {}

impl PipelineError {
    /// An internal error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self::with_kind(ErrorKind::Internal, message)
    }

    /// The input is invalid; `message` is shown to the client.
    pub fn invalid_input(message: impl fmt::Display) -> Self {
        Self::with_kind(ErrorKind::InvalidInput, message)
    }

    /// A fatal device error with this message: intake stops and the process
    /// exits after draining.
    pub fn fatal(message: impl fmt::Display) -> Self {
        Self::with_kind(ErrorKind::Fatal, message)
    }

    /// An error of `kind` with this message.
    pub fn with_kind(kind: ErrorKind, message: impl fmt::Display) -> Self {
        PipelineError {
            source: Box::new(Message(message.to_string())),
            kind,
        }
    }

    /// This error with its kind replaced (a fatal classification still wins).
    pub fn into_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// The kind: as made, except that an error classified fatal by
    /// [`crate::fatal::is_fatal_device_error`] is always
    /// [`ErrorKind::Fatal`].
    pub fn kind(&self) -> ErrorKind {
        if self.kind == ErrorKind::Fatal
            || crate::fatal::is_fatal_device_error(self.source.as_ref())
        {
            ErrorKind::Fatal
        } else {
            self.kind
        }
    }

    /// Whether this error takes the fatal path.
    pub fn is_fatal(&self) -> bool {
        self.kind() == ErrorKind::Fatal
    }

    /// The underlying error.
    pub fn source_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        self.source.as_ref()
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for PipelineError {
    fn from(error: E) -> Self {
        PipelineError {
            source: Box::new(error),
            kind: ErrorKind::Internal,
        }
    }
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        let mut cause = self.source.source();
        while let Some(inner) = cause {
            write!(f, ": {inner}")?;
            cause = inner.source();
        }
        Ok(())
    }
}

impl fmt::Debug for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineError")
            .field("message", &self.to_string())
            .field("kind", &self.kind())
            .finish()
    }
}
