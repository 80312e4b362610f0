use modalkit::prelude::*;

/// A request: the text to classify.
#[modalkit::input]
#[serde(deny_unknown_fields)]
struct Review {
    /// 1 to 5,000 characters.
    #[garde(length(chars, min = 1, max = 5000))]
    text: String,
}

/// A result; its fields are flattened into modalkit's output.
#[modalkit::output]
struct Sentiment {
    label: String,
    score: f32,
}

/// This model's entry in `model_settings.model_entries`.
#[modalkit::entry]
struct Entry {
    threshold: f32,
}

struct SentimentModel {
    threshold: f32,
}

impl InferencePipeline for SentimentModel {
    type Input = Review;
    type Output = Sentiment;
    type Preprocessed = Vec<usize>; // e.g. token ids
    type Predicted = Vec<f32>; // e.g. logits

    fn load(ctx: &ModelContext) -> Result<Self, PipelineError> {
        let entry: Entry = ctx.entry()?; // read once per worker: load weights here
        Ok(SentimentModel { threshold: entry.threshold })
    }

    fn preprocess(&self, inputs: &[Review]) -> Result<Vec<usize>, PipelineError> {
        Ok(inputs.iter().map(|r| r.text.chars().count()).collect())
    }

    fn predict(&self, _: &[Review], lengths: Vec<usize>) -> Result<Vec<f32>, PipelineError> {
        Ok(lengths.iter().map(|n| (*n as f32 / 100.0).min(1.0)).collect())
    }

    fn postprocess(&self, inputs: &[Review], scores: Vec<f32>) -> Vec<ItemResult<Sentiment>> {
        inputs
            .iter()
            .zip(scores)
            .map(|(review, score)| {
                if review.text.trim().is_empty() {
                    // 422 for /predict_sync; this item alone fails in a batch.
                    return Err(PipelineError::invalid_input("the review is only whitespace"));
                }
                let label = if score >= self.threshold { "positive" } else { "negative" };
                Ok(Sentiment { label: label.into(), score })
            })
            .collect()
    }
}

/// The process's allocator: mimalloc is faster than glibc's for a server's
/// many small allocations. A binary chooses it; the library does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    modalkit::run::<SentimentModel>()
}
