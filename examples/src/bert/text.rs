//! Text to token ids for the BERT family: a prompt prepended to an
//! embedding model's text, a (query, text) pair for a cross-encoder with
//! its second segment marked, truncation at `max_seq_length` (longest
//! first for pairs, as sentence-transformers' `CrossEncoder`), or a refusal
//! when the request forbids truncating; and tokens with their offsets for
//! `/tokenize`.

use std::path::Path;

use modalkit::prelude::*;
use modalkit::tei::Token;
use tokenizers::{EncodeInput, Encoding, Tokenizer, TruncationParams};

/// One input's token ids and where its second segment starts.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Token ids, `[CLS]` and `[SEP]` included.
    pub ids: Vec<u32>,
    /// First token of the pair's second text; `ids.len()` for one text.
    pub second_segment: usize,
}

/// The model's tokenizer, twice: truncating at `max_seq_length`, and whole
/// (to count what a refused input holds, and for `/tokenize`).
pub struct TextTokenizer {
    truncating: Tokenizer,
    whole: Tokenizer,
    max_seq_length: usize,
}

impl TextTokenizer {
    /// Reads `tokenizer.json` from `folder`.
    pub fn load(folder: &Path, max_seq_length: usize) -> Result<Self, PipelineError> {
        let mut whole = Tokenizer::from_file(folder.join("tokenizer.json"))
            .map_err(|err| PipelineError::msg(format!("tokenizer.json: {err}")))?;
        whole.with_padding(None);
        whole
            .with_truncation(None)
            .map_err(|err| PipelineError::msg(format!("tokenizer truncation: {err}")))?;
        let mut truncating = whole.clone();
        truncating
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                ..Default::default()
            }))
            .map_err(|err| PipelineError::msg(format!("tokenizer truncation: {err}")))?;
        Ok(TextTokenizer {
            truncating,
            whole,
            max_seq_length,
        })
    }

    /// Longest input in tokens.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// One text (`prompt` prepended); longer than `max_seq_length` it is
    /// cut, or refused when `truncate` is false.
    pub fn single(
        &self,
        prompt: &str,
        text: &str,
        truncate: bool,
    ) -> Result<Encoded, PipelineError> {
        let input = if prompt.is_empty() {
            text.to_owned()
        } else {
            format!("{prompt}{text}")
        };
        self.encode(EncodeInput::Single(input.into()), truncate, "text")
    }

    /// A (query, text) pair, cut longest first.
    pub fn pair(&self, query: &str, text: &str, truncate: bool) -> Result<Encoded, PipelineError> {
        let input = EncodeInput::Dual(query.to_owned().into(), text.to_owned().into());
        self.encode(input, truncate, "query and text together")
    }

    fn encode(
        &self,
        input: EncodeInput,
        truncate: bool,
        what: &str,
    ) -> Result<Encoded, PipelineError> {
        let encoding = self.truncating.encode(input.clone(), true).map_err(|err| {
            PipelineError::invalid_input(format!("the tokenizer refused the input: {err}"))
        })?;
        if !truncate && !encoding.get_overflowing().is_empty() {
            let whole = self
                .whole
                .encode(input, true)
                .map(|encoding| encoding.len())
                .unwrap_or(0);
            return Err(PipelineError::invalid_input(format!(
                "{what} must have at most {} tokens, given {whole}: shorten it or set truncate to true",
                self.max_seq_length
            )));
        }
        Ok(encoded(&encoding))
    }

    /// Every token of `text` with its offsets, not truncated.
    pub fn spans(&self, text: &str, add_special_tokens: bool) -> Result<Vec<Token>, PipelineError> {
        let encoding = self.whole.encode(text, add_special_tokens).map_err(|err| {
            PipelineError::invalid_input(format!("the tokenizer refused the input: {err}"))
        })?;
        let spans = encoding
            .get_ids()
            .iter()
            .zip(encoding.get_tokens())
            .zip(encoding.get_special_tokens_mask())
            .zip(encoding.get_offsets())
            .map(|(((&id, token), &special), &(start, stop))| {
                let special = special == 1;
                match text.get(start..stop) {
                    Some(covered) if !special => Token {
                        id,
                        text: covered.to_owned(),
                        special,
                        start: Some(start),
                        stop: Some(stop),
                    },
                    _ => Token {
                        id,
                        text: token.clone(),
                        special,
                        start: None,
                        stop: None,
                    },
                }
            })
            .collect();
        Ok(spans)
    }
}

fn encoded(encoding: &Encoding) -> Encoded {
    let ids = encoding.get_ids().to_vec();
    let second_segment = encoding
        .get_type_ids()
        .iter()
        .position(|&t| t != 0)
        .unwrap_or(ids.len());
    Encoded {
        ids,
        second_segment,
    }
}
