//! `EchoPipeline`: a pipeline whose behaviour each request controls, so tests
//! can make it slow, fail one item, fail a whole batch, panic, or raise a
//! CUDA-class fatal error.

use garde::Validate;
use modalkit_core::{InferencePipeline, ItemResult, ModelContext, PipelineError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the test asks of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Failure {
    /// Postprocess fails this item alone.
    Item,
    /// Postprocess says this item's input is invalid (422 when alone).
    Invalid,
    /// Predict fails any batch holding this item.
    Batch,
    /// Predict panics.
    Panic,
    /// Predict returns candle's `Error::Cuda` (fatal by type).
    Fatal,
    /// Predict returns an error whose text carries "CUDA error" (fatal by text).
    FatalText,
}

/// The test input.
#[derive(Debug, Clone, Deserialize, Validate, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EchoInput {
    /// Text to echo: 1 to 1,000 characters.
    #[garde(length(chars, min = 1, max = 1000))]
    pub text: String,
    /// How many times to repeat it (1..=10).
    #[serde(default)]
    #[garde(range(min = 1, max = 10))]
    pub repeat: Option<u32>,
    /// Sleep this long in predict (at most 10 s).
    #[serde(default)]
    #[garde(range(max = 10_000))]
    pub sleep_ms: u64,
    /// Make this item fail.
    #[serde(default)]
    #[garde(skip)]
    pub fail: Option<Failure>,
}

/// The test output.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct EchoOutput {
    /// The text, uppercased and repeated.
    pub echo: String,
    /// Size of the batch the item ran in.
    pub batch_size: usize,
    /// Which worker ran it.
    pub worker: usize,
}

/// The pipeline.
pub struct EchoPipeline {
    worker: usize,
}

impl InferencePipeline for EchoPipeline {
    type Input = EchoInput;
    type Output = EchoOutput;
    type Preprocessed = ();
    type Predicted = ();

    fn load(ctx: &ModelContext) -> Result<Self, PipelineError> {
        Ok(EchoPipeline {
            worker: ctx.worker_index,
        })
    }

    fn preprocess(&self, _inputs: &[EchoInput]) -> Result<(), PipelineError> {
        Ok(())
    }

    fn predict(&self, inputs: &[EchoInput], _: ()) -> Result<(), PipelineError> {
        let sleep = inputs.iter().map(|i| i.sleep_ms).max().unwrap_or(0);
        std::thread::sleep(std::time::Duration::from_millis(sleep));
        for input in inputs {
            match input.fail {
                Some(Failure::Batch) => {
                    return Err(PipelineError::msg("the batch held a bad item"));
                }
                Some(Failure::Panic) => panic!("echo pipeline asked to panic"),
                Some(Failure::Fatal) => {
                    return Err(PipelineError::msg(
                        "CUDA error: an illegal memory access was encountered",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// With `warmup_ms` in the model's entry: one full batch that sleeps
    /// that long before the server is ready.
    fn warmup_inputs(ctx: &ModelContext, max_batch_size: usize) -> Vec<EchoInput> {
        let warmup_ms = ctx
            .setting("warmup_ms")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if warmup_ms == 0 {
            return Vec::new();
        }
        (0..max_batch_size)
            .map(|i| EchoInput {
                text: format!("warm-up {i}"),
                repeat: None,
                sleep_ms: warmup_ms,
                fail: None,
            })
            .collect()
    }

    fn postprocess(&self, inputs: &[EchoInput], _: ()) -> Vec<ItemResult<EchoOutput>> {
        inputs
            .iter()
            .map(|input| {
                if input.fail == Some(Failure::Item) {
                    return Err(PipelineError::msg(format!(
                        "item '{}' was asked to fail",
                        input.text
                    )));
                }
                if input.fail == Some(Failure::Invalid) {
                    return Err(PipelineError::invalid_input(format!(
                        "item '{}' is not a valid input",
                        input.text
                    )));
                }
                Ok(EchoOutput {
                    echo: input
                        .text
                        .to_uppercase()
                        .repeat(input.repeat.unwrap_or(1) as usize),
                    batch_size: inputs.len(),
                    worker: self.worker,
                })
            })
            .collect()
    }
}
