//! A generative pipeline behind the batcher's routes: each item of a batch
//! is submitted to the model's [`Engine`] (so it steps beside the streamed
//! sequences) and answered with its whole text once it ends.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Serialize;

use super::{Engine, EngineConfig, FinishReason, GenerativePipeline, StreamEvent, TokenStream};
use crate::context::ModelContext;
use crate::error::ItemError;
use crate::pipeline::{InferencePipeline, ItemResult, PipelineError};

/// The whole result of one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[non_exhaustive]
pub struct Generated {
    /// Every token's text, in order.
    pub text: String,
    /// Tokens generated.
    pub tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// [`InferencePipeline`] for a generative pipeline `G`: what the server
/// loads for a generative model. It owns the model's engine (one per
/// worker: keep a generative model at `workers: 1`, the engine batches).
pub struct WholeGeneration<G: GenerativePipeline> {
    engine: Engine<G>,
}

impl<G: GenerativePipeline> WholeGeneration<G> {
    /// The model's engine, for the streaming routes.
    pub fn engine(&self) -> &Engine<G> {
        &self.engine
    }
}

/// Reads a stream to its end.
fn collect(mut stream: TokenStream) -> Result<Generated, PipelineError> {
    let mut text = String::new();
    let mut tokens = 0;
    while let Some(event) = stream.blocking_next() {
        match event {
            StreamEvent::Token(token) => {
                text.push_str(&token.text);
                tokens += 1;
                if let Some(finish_reason) = token.finish {
                    return Ok(Generated {
                        text,
                        tokens,
                        finish_reason,
                    });
                }
            }
            StreamEvent::Failed(err) => return Err(into_pipeline_error(err)),
        }
    }
    Err(PipelineError::msg("the generation engine stopped"))
}

fn into_pipeline_error(err: ItemError) -> PipelineError {
    match err {
        ItemError::InvalidInput(message) => PipelineError::invalid_input(message),
        other => PipelineError::msg(other),
    }
}

impl<G: GenerativePipeline> InferencePipeline for WholeGeneration<G> {
    type Input = G::Input;
    type Output = Generated;
    type Preprocessed = Vec<Result<TokenStream, ItemError>>;
    type Predicted = Vec<Result<Generated, PipelineError>>;

    fn load(ctx: &ModelContext) -> Result<Self, PipelineError> {
        let config = EngineConfig::from_entry(&ctx.entry).map_err(|err| {
            PipelineError::msg(format!(
                "model_settings.model_entries.{}: {err}",
                ctx.model_name
            ))
        })?;
        let pipeline = Arc::new(G::load(ctx)?);
        let engine = Engine::start(&ctx.model_name, config, pipeline)?;
        Ok(WholeGeneration { engine })
    }

    /// Submits every item at once, so they run together in the engine.
    fn preprocess(&self, inputs: &[G::Input]) -> Result<Self::Preprocessed, PipelineError> {
        Ok(inputs
            .iter()
            .map(|input| self.engine.submit(input, None))
            .collect())
    }

    fn predict(
        &self,
        _: &[G::Input],
        streams: Self::Preprocessed,
    ) -> Result<Self::Predicted, PipelineError> {
        Ok(streams
            .into_iter()
            .map(|stream| stream.map_err(into_pipeline_error).and_then(collect))
            .collect())
    }

    fn postprocess(
        &self,
        _: &[G::Input],
        predicted: Self::Predicted,
    ) -> Vec<ItemResult<Generated>> {
        predicted
    }

    fn device(&self) -> String {
        self.engine.pipeline().device()
    }

    fn warmup_inputs(ctx: &ModelContext, _max_batch_size: usize) -> Vec<G::Input> {
        G::warmup_inputs(ctx)
    }
}
