//! The smallest pipeline: echoes a number back. It measures what the
//! framework itself costs (the HTTP benchmark serves it) and is a template
//! to start from.

use modalkit::prelude::*;

/// Input: any number.
#[modalkit::input]
#[derive(Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct NoopInput {
    /// Echoed back.
    pub value: i64,
}

/// Output: the same number.
#[modalkit::output]
#[derive(Debug, Clone)]
pub struct NoopOutput {
    /// The input's value.
    pub value: i64,
}

/// A pipeline that computes nothing.
pub struct Noop;

impl InferencePipeline for Noop {
    type Input = NoopInput;
    type Output = NoopOutput;
    type Preprocessed = ();
    type Predicted = ();

    fn load(_ctx: &ModelContext) -> Result<Self, PipelineError> {
        Ok(Noop)
    }

    fn preprocess(&self, _inputs: &[NoopInput]) -> Result<(), PipelineError> {
        Ok(())
    }

    fn predict(&self, _inputs: &[NoopInput], _: ()) -> Result<(), PipelineError> {
        Ok(())
    }

    fn postprocess(&self, inputs: &[NoopInput], _: ()) -> Vec<ItemResult<NoopOutput>> {
        inputs
            .iter()
            .map(|i| Ok(NoopOutput { value: i.value }))
            .collect()
    }
}
