//! modalkit's README example pipeline: "translates" text by uppercasing it,
//! with a confidence. No weights, so it starts instantly; it shows every part
//! of the contract (entry settings, the three stages, a per-item failure).

use modalkit::prelude::*;

/// A request: the text and, optionally, a target language.
#[modalkit::input]
#[derive(Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct TranslationInput {
    /// Text to translate: 1 to 10,000 characters.
    #[garde(length(chars, min = 1, max = 10_000))]
    pub text: String,
    /// Target language code (`fr`, `de`, ...): 2 to 8 letters or digits;
    /// default: the model entry's.
    #[serde(default)]
    #[garde(length(chars, min = 2, max = 8), alphanumeric)]
    pub language: Option<String>,
}

/// A result.
#[modalkit::output]
#[derive(Debug, Clone)]
pub struct TranslationOutput {
    /// The translation.
    pub translated_text: String,
    /// Language it is in.
    pub language: String,
    /// How sure the model is (0..1).
    pub confidence: f64,
}

/// The model entry's settings.
#[modalkit::entry]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
struct TranslatorEntry {
    #[serde(default = "default_language")]
    target_language: String,
}

fn default_language() -> String {
    "en".to_owned()
}

/// The pipeline.
pub struct Translator {
    default_language: String,
}

impl InferencePipeline for Translator {
    type Input = TranslationInput;
    type Output = TranslationOutput;
    type Preprocessed = Vec<String>;
    type Predicted = Vec<(String, f64)>;

    fn load(ctx: &ModelContext) -> Result<Self, PipelineError> {
        let entry: TranslatorEntry = ctx.entry()?;
        Ok(Translator {
            default_language: entry.target_language,
        })
    }

    fn preprocess(&self, inputs: &[TranslationInput]) -> Result<Vec<String>, PipelineError> {
        Ok(inputs.iter().map(|i| i.text.trim().to_owned()).collect())
    }

    fn predict(
        &self,
        _inputs: &[TranslationInput],
        texts: Vec<String>,
    ) -> Result<Vec<(String, f64)>, PipelineError> {
        Ok(texts
            .into_iter()
            .map(|text| {
                let letters = text.chars().filter(|c| c.is_alphabetic()).count();
                let confidence = if text.is_empty() {
                    0.0
                } else {
                    letters as f64 / text.chars().count() as f64
                };
                (text.to_uppercase(), confidence)
            })
            .collect())
    }

    fn postprocess(
        &self,
        inputs: &[TranslationInput],
        predicted: Vec<(String, f64)>,
    ) -> Vec<ItemResult<TranslationOutput>> {
        inputs
            .iter()
            .zip(predicted)
            .map(|(input, (translated_text, confidence))| {
                if translated_text.is_empty() {
                    return Err(PipelineError::msg(
                        "nothing to translate: the text is only whitespace",
                    ));
                }
                Ok(TranslationOutput {
                    translated_text,
                    language: input
                        .language
                        .clone()
                        .unwrap_or_else(|| self.default_language.clone()),
                    confidence,
                })
            })
            .collect()
    }
}
