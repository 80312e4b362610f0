//! Text around the model: the tokenizer, the chat template from the model
//! folder's `tokenizer_config.json` (Jinja, as transformers renders it),
//! and the incremental detokenizer with stop strings that turns one token
//! at a time into the text a client may already see.

use std::path::Path;

use modalkit::generate::ChatMessage;
use tokenizers::Tokenizer;

/// The folder's tokenizer, chat template and special tokens.
pub struct TextSide {
    tokenizer: Tokenizer,
    template: Option<minijinja::Environment<'static>>,
    bos_token: String,
    eos_token: String,
}

impl TextSide {
    /// Reads `tokenizer.json` and `tokenizer_config.json` from `folder`.
    pub fn load(folder: &Path) -> Result<Self, String> {
        let tokenizer = Tokenizer::from_file(folder.join("tokenizer.json"))
            .map_err(|e| format!("{}: {e}", folder.join("tokenizer.json").display()))?;
        let config_path = folder.join("tokenizer_config.json");
        let config: serde_json::Value = std::fs::read_to_string(&config_path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
            .map_err(|e| format!("{}: {e}", config_path.display()))?;
        let special = |key: &str| match &config[key] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => o
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or_default()
                .to_owned(),
            _ => String::new(),
        };
        let template = match config["chat_template"].as_str() {
            Some(source) => {
                let mut env = minijinja::Environment::new();
                env.add_function(
                    "raise_exception",
                    |message: String| -> Result<String, minijinja::Error> {
                        Err(minijinja::Error::new(
                            minijinja::ErrorKind::InvalidOperation,
                            message,
                        ))
                    },
                );
                env.add_template_owned("chat", source.to_owned())
                    .map_err(|e| format!("{}: chat_template: {e}", config_path.display()))?;
                Some(env)
            }
            None => None,
        };
        Ok(TextSide {
            tokenizer,
            template,
            bos_token: special("bos_token"),
            eos_token: special("eos_token"),
        })
    }

    /// `messages` rendered by the chat template, ready for the assistant's
    /// turn; an error names what the template refused.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, String> {
        let env = self
            .template
            .as_ref()
            .ok_or("this model's folder has no chat template (tokenizer_config.json)")?;
        let template = env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| format!("chat template: {e}"))
    }

    /// The token ids of `text` (special tokens in it recognised; none added
    /// unless the tokenizer's post-processor adds them).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| format!("tokenizer: {e}"))
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| format!("tokenizer: {e}"))
    }

    /// The id of the tokenizer's `eos_token`, if it has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.tokenizer.token_to_id(&self.eos_token)
    }
}

/// Turns generated ids into text a token at a time: decodes a short window
/// (a byte-level token may be half a character: that text waits for the
/// rest) and holds back what could be the start of a stop string.
#[derive(Debug, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    /// Where the window decoded for context starts.
    prefix_offset: usize,
    /// Ids up to here have been turned into text.
    read_offset: usize,
    /// Text decoded but not yet released.
    held: String,
    stops: Vec<String>,
}

/// What one more token releases.
pub struct Released {
    /// Text the client may see now.
    pub text: String,
    /// A stop string was met (the text ends just before it).
    pub stopped: bool,
}

impl Detokenizer {
    /// A detokenizer that ends at the first of `stops` (none: never).
    pub fn new(stops: Vec<String>) -> Self {
        Detokenizer {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Default::default()
        }
    }

    /// Adds `id` and returns the text it releases.
    pub fn push(&mut self, text: &TextSide, id: u32) -> Result<Released, String> {
        self.ids.push(id);
        let before = text.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let after = text.decode(&self.ids[self.prefix_offset..])?;
        if after.len() > before.len() && !after.ends_with('\u{fffd}') {
            if let Some(new) = after.get(before.len()..) {
                self.held.push_str(new);
            }
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
        }
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let text = self.held[..at].to_owned();
            self.held.clear();
            return Ok(Released {
                text,
                stopped: true,
            });
        }
        // Keep the longest tail that a stop string starts with.
        let keep = self
            .stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .filter(|&n| stop.is_char_boundary(n) && self.held.ends_with(&stop[..n]))
                    .max()
            })
            .max()
            .unwrap_or(0);
        let release = self.held.len() - keep;
        let text: String = self.held.drain(..release).collect();
        Ok(Released {
            text,
            stopped: false,
        })
    }

    /// What is still held back, once the sequence ends without a stop.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}
