//! Where settings come from: config files, a `.env` file and `MODALKIT_`
//! environment variables. Env-style keys become nested paths
//! (`MODALKIT_APP_SETTINGS__BATCH_CONFIG__MAX_BATCH_SIZE` ->
//! `app_settings.batch_config.max_batch_size`).

use std::path::{Path, PathBuf};

use figment::value::{Dict, Map, Value};
use figment::{Error as FigmentError, Metadata, Profile, Provider};

/// Prefix of every settings variable.
pub const ENV_PREFIX: &str = "MODALKIT_";
/// Variable naming the config files, comma-separated.
pub const CONFIG_ENV: &str = "MODALKIT_CONFIG";
/// Default config file.
pub const DEFAULT_CONFIG_FILE: &str = "modalkit.yaml";

/// The inputs to [`crate::Settings::load`], in the order they apply.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// YAML files, later ones win; each must exist.
    pub files: Vec<PathBuf>,
    /// The `.env` file, if any (a missing one is skipped).
    pub dotenv: Option<PathBuf>,
    /// Environment variables (name, value); only `MODALKIT_APP_SETTINGS__*`
    /// and `MODALKIT_MODEL_SETTINGS__*` are read as settings.
    pub env: Vec<(String, String)>,
}

impl ConfigSources {
    /// The sources a server process uses: `config` (or `MODALKIT_CONFIG`, or
    /// `modalkit.yaml`), `./.env`, and the process environment.
    pub fn from_process(config: Option<&str>) -> Self {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let list = config
            .map(str::to_owned)
            .or_else(|| {
                env.iter()
                    .find(|(k, _)| k == CONFIG_ENV)
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| DEFAULT_CONFIG_FILE.to_owned());
        ConfigSources {
            files: split_file_list(&list),
            dotenv: Some(PathBuf::from(".env")),
            env,
        }
    }

    /// Only these files.
    pub fn files(files: Vec<PathBuf>) -> Self {
        ConfigSources {
            files,
            ..Default::default()
        }
    }

    /// Adds a `.env` file.
    pub fn with_dotenv(mut self, path: impl Into<PathBuf>) -> Self {
        self.dotenv = Some(path.into());
        self
    }

    /// Adds environment variables.
    pub fn with_env<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }
}

/// Splits `a.yaml, b.yaml` into paths.
pub fn split_file_list(list: &str) -> Vec<PathBuf> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// A figment provider over `MODALKIT_` key/value pairs, from the process
/// environment or a `.env` file.
#[derive(Debug, Clone)]
pub struct KeyValueProvider {
    name: String,
    source: Option<PathBuf>,
    pairs: Vec<(String, String)>,
}

impl KeyValueProvider {
    /// Pairs from the environment.
    pub fn environment(pairs: Vec<(String, String)>) -> Self {
        KeyValueProvider {
            name: "environment variable".to_owned(),
            source: None,
            pairs,
        }
    }

    /// Pairs read from a `.env` file; a missing file gives none.
    pub fn dotenv(path: &Path) -> Result<Self, String> {
        let pairs = match dotenv_pairs(path) {
            Ok(pairs) => pairs,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(format!("{}: {err}", path.display())),
        };
        Ok(KeyValueProvider {
            name: ".env file".to_owned(),
            source: Some(path.to_path_buf()),
            pairs,
        })
    }

    /// The settings key path for an env-style name, if it is one.
    pub fn key_path(name: &str) -> Option<String> {
        let rest = name.strip_prefix(ENV_PREFIX)?;
        let lower = rest.to_ascii_lowercase();
        if !(lower.starts_with("app_settings__") || lower.starts_with("model_settings__")) {
            return None;
        }
        Some(lower.split("__").collect::<Vec<_>>().join("."))
    }
}

impl Provider for KeyValueProvider {
    fn metadata(&self) -> Metadata {
        let mut meta = Metadata::named(self.name.clone());
        if let Some(path) = &self.source {
            meta = meta.source(figment::Source::File(path.clone()));
        }
        meta.interpolater(|_: &Profile, keys: &[&str]| {
            format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase())
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, FigmentError> {
        let mut dict = Dict::new();
        for (name, raw) in &self.pairs {
            let Some(path) = Self::key_path(name) else {
                continue;
            };
            let value: Value = raw.parse().unwrap_or_else(|_| Value::from(raw.clone()));
            let nested = figment::util::nest(&path, value)
                .into_dict()
                .ok_or_else(|| FigmentError::from(format!("bad key {name}")))?;
            dict = merge(dict, nested);
        }
        Ok(Profile::Default.collect(dict))
    }
}

fn merge(mut base: Dict, other: Dict) -> Dict {
    for (key, value) in other {
        let merged = match (base.remove(&key), value) {
            (Some(Value::Dict(tag, a)), Value::Dict(_, b)) => Value::Dict(tag, merge(a, b)),
            (_, value) => value,
        };
        base.insert(key, merged);
    }
    base
}

/// Reads `KEY=value` lines: `#` comments, optional `export `, optional quotes.
fn dotenv_pairs(path: &Path) -> std::io::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)?;
    let mut pairs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        pairs.push((key.trim().to_owned(), value.to_owned()));
    }
    Ok(pairs)
}
