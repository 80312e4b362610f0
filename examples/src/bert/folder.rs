//! Reads a model folder and decides what it serves: a sentence-transformers
//! embedding model (its pooling, `Normalize`, prompts, `max_seq_length`) or
//! a `BertForSequenceClassification` (a reranker with one label, a
//! classifier with several). What the encoders cannot run is refused here,
//! at load, naming the file and the setting.

use std::collections::BTreeMap;
use std::path::Path;

use modalkit::candle::encoder::{BertConfig, Pooling};
use modalkit::prelude::*;

/// What an entry serves.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// Sentence vectors.
    Embed(EmbedSettings),
    /// A relevance logit per (query, text) pair: a cross-encoder.
    Rerank,
    /// A logit per label.
    Classify {
        /// Label names, by index.
        labels: Vec<String>,
    },
}

impl Task {
    /// `embedding`, `reranker` or `classifier` (TEI's names).
    pub fn name(&self) -> &'static str {
        match self {
            Task::Embed(_) => "embedding",
            Task::Rerank => "reranker",
            Task::Classify { .. } => "classifier",
        }
    }
}

/// How an embedding model turns token vectors into its sentence vector.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedSettings {
    /// `1_Pooling/config.json`'s mode.
    pub pooling: Pooling,
    /// Whether `modules.json` ends with `Normalize`.
    pub normalize: bool,
    /// `config_sentence_transformers.json`'s prompts, by name.
    pub prompts: BTreeMap<String, String>,
    /// The prompt used when a request names none.
    pub default_prompt_name: Option<String>,
}

/// A model folder, read and checked.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    /// `config.json`.
    pub config: BertConfig,
    /// What it serves.
    pub task: Task,
    /// Longest input in tokens (`[CLS]` and `[SEP]` included).
    pub max_seq_length: usize,
}

#[modalkit::entry]
struct Module {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[modalkit::entry]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
    #[serde(default = "yes")]
    include_prompt: bool,
}

fn yes() -> bool {
    true
}

#[modalkit::entry]
#[derive(Default)]
struct SentenceTransformersConfig {
    #[serde(default)]
    prompts: BTreeMap<String, String>,
    #[serde(default)]
    default_prompt_name: Option<String>,
}

#[modalkit::entry]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[modalkit::entry]
struct TokenizerConfig {
    model_max_length: Option<f64>,
}

/// Reads `path` as JSON; a missing file is `None`.
fn read_optional<T: modalkit::serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<T>, PipelineError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(PipelineError::msg(format!("{}: {err}", path.display()))),
    };
    modalkit::serde_json::from_str(&text)
        .map(Some)
        .map_err(|err| PipelineError::msg(format!("{}: {err}", path.display())))
}

fn read<T: modalkit::serde::de::DeserializeOwned>(path: &Path) -> Result<T, PipelineError> {
    read_optional(path)?.ok_or_else(|| PipelineError::msg(format!("{} is missing", path.display())))
}

impl ModelFolder {
    /// Reads `folder`; `max_seq_length` overrides the folder's.
    pub fn read(folder: &Path, max_seq_length: Option<usize>) -> Result<Self, PipelineError> {
        if !folder.join("model.safetensors").is_file() {
            return Err(PipelineError::msg(format!(
                "no model.safetensors in {} (run scripts/fetch-model.sh)",
                folder.display()
            )));
        }
        let config: BertConfig = read(&folder.join("config.json"))?;
        if let Some(unsupported) = config.unsupported() {
            return Err(PipelineError::msg(format!(
                "{}/config.json: unsupported {unsupported}",
                folder.display()
            )));
        }
        let classifier = config
            .architectures
            .iter()
            .any(|a| a == "BertForSequenceClassification");
        let task = if classifier {
            classification_task(folder, &config)?
        } else {
            Task::Embed(embed_settings(folder, &config)?)
        };
        let folder_limit = match &task {
            Task::Embed(_) => {
                read_optional::<SentenceBertConfig>(&folder.join("sentence_bert_config.json"))?
                    .and_then(|c| c.max_seq_length)
            }
            _ => None,
        };
        let tokenizer_limit =
            read_optional::<TokenizerConfig>(&folder.join("tokenizer_config.json"))?
                .and_then(|c| c.model_max_length)
                .filter(|n| (1.0..1e9).contains(n))
                .map(|n| n as usize);
        let max_seq_length = max_seq_length
            .or(folder_limit)
            .or(tokenizer_limit)
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        if max_seq_length < 2 {
            return Err(PipelineError::msg(format!(
                "max_seq_length {max_seq_length}: at least 2 ([CLS] and [SEP])"
            )));
        }
        Ok(ModelFolder {
            config,
            task,
            max_seq_length,
        })
    }
}

fn classification_task(folder: &Path, config: &BertConfig) -> Result<Task, PipelineError> {
    let mut labels = Vec::with_capacity(config.id2label.len());
    for index in 0..config.id2label.len().max(1) {
        match config.id2label.get(&index.to_string()) {
            Some(label) => labels.push(label.clone()),
            None if config.id2label.is_empty() => labels.push("LABEL_0".to_owned()),
            None => {
                return Err(PipelineError::msg(format!(
                    "{}/config.json: id2label has no label {index}",
                    folder.display()
                )));
            }
        }
    }
    Ok(if labels.len() == 1 {
        Task::Rerank
    } else {
        Task::Classify { labels }
    })
}

fn embed_settings(folder: &Path, config: &BertConfig) -> Result<EmbedSettings, PipelineError> {
    let modules: Option<Vec<Module>> = read_optional(&folder.join("modules.json"))?;
    let pooling_path = folder.join("1_Pooling/config.json");
    let (pooling_dir, normalize) = match modules {
        Some(modules) => sentence_transformer_modules(folder, &modules)?,
        None if pooling_path.is_file() => ("1_Pooling".to_owned(), false),
        None => {
            return Err(PipelineError::msg(format!(
                "{}: no modules.json or 1_Pooling/config.json, so not a sentence-transformers folder, and config.json's architectures {:?} are not BertForSequenceClassification",
                folder.display(),
                config.architectures
            )));
        }
    };
    let pooling_file = folder.join(&pooling_dir).join("config.json");
    let pooling_config: PoolingConfig = read(&pooling_file)?;
    let unsupported = [
        (
            pooling_config.pooling_mode_mean_sqrt_len_tokens,
            "pooling_mode_mean_sqrt_len_tokens",
        ),
        (
            pooling_config.pooling_mode_weightedmean_tokens,
            "pooling_mode_weightedmean_tokens",
        ),
        (
            pooling_config.pooling_mode_lasttoken,
            "pooling_mode_lasttoken",
        ),
    ];
    if let Some((_, mode)) = unsupported.iter().find(|(on, _)| *on) {
        return Err(PipelineError::msg(format!(
            "{}: {mode} is not supported (cls, mean and max are)",
            pooling_file.display()
        )));
    }
    let modes: Vec<Pooling> = [
        (pooling_config.pooling_mode_cls_token, Pooling::Cls),
        (pooling_config.pooling_mode_mean_tokens, Pooling::Mean),
        (pooling_config.pooling_mode_max_tokens, Pooling::Max),
    ]
    .into_iter()
    .filter_map(|(on, mode)| on.then_some(mode))
    .collect();
    let pooling = match modes.as_slice() {
        [one] => *one,
        [] => {
            return Err(PipelineError::msg(format!(
                "{}: no pooling mode is set",
                pooling_file.display()
            )));
        }
        _ => {
            return Err(PipelineError::msg(format!(
                "{}: several pooling modes at once (concatenated vectors) are not supported",
                pooling_file.display()
            )));
        }
    };
    if !pooling_config.include_prompt {
        return Err(PipelineError::msg(format!(
            "{}: include_prompt false is not supported",
            pooling_file.display()
        )));
    }
    let settings: SentenceTransformersConfig =
        read_optional(&folder.join("config_sentence_transformers.json"))?.unwrap_or_default();
    let default_prompt_name = settings.default_prompt_name.filter(|name| !name.is_empty());
    if let Some(name) = &default_prompt_name
        && !settings.prompts.contains_key(name)
    {
        return Err(PipelineError::msg(format!(
            "{}/config_sentence_transformers.json: default_prompt_name '{name}' is not one of the prompts",
            folder.display()
        )));
    }
    Ok(EmbedSettings {
        pooling,
        normalize,
        prompts: settings.prompts,
        default_prompt_name,
    })
}

/// The pooling module's folder and whether a `Normalize` follows, from
/// `modules.json`: a Transformer, a Pooling, optionally a Normalize;
/// anything else (Dense, ...) is refused.
fn sentence_transformer_modules(
    folder: &Path,
    modules: &[Module],
) -> Result<(String, bool), PipelineError> {
    let short = |kind: &str| kind.rsplit('.').next().unwrap_or(kind).to_owned();
    let kinds: Vec<String> = modules.iter().map(|m| short(&m.kind)).collect();
    let refuse =
        |why: String| PipelineError::msg(format!("{}/modules.json: {why}", folder.display()));
    match kinds
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["Transformer", "Pooling"] => Ok((modules[1].path.clone(), false)),
        ["Transformer", "Pooling", "Normalize"] => Ok((modules[1].path.clone(), true)),
        _ => {
            let extra: Vec<&String> = kinds
                .iter()
                .filter(|k| !["Transformer", "Pooling", "Normalize"].contains(&k.as_str()))
                .collect();
            Err(refuse(if extra.is_empty() {
                format!("modules {kinds:?}: expected Transformer, Pooling and optionally Normalize")
            } else {
                format!("{extra:?} not supported (Transformer, Pooling and Normalize are)")
            }))
        }
    }
}
