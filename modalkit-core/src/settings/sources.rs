//! Where settings come from: config files, a `.env` file and `MODALKIT_`
//! environment variables (any case). Env-style keys become nested paths
//! (`MODALKIT_APP_SETTINGS__BATCH_CONFIG__MAX_BATCH_SIZE` ->
//! `app_settings.batch_config.max_batch_size`); a whole section can be one
//! JSON value (`MODALKIT_APP_SETTINGS__BATCH_CONFIG='{"wait_ms": 5}'`).

use std::path::{Path, PathBuf};

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

/// One setting from an environment variable or a `.env` line.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyValue {
    /// The settings path, e.g. `["app_settings", "batch_config", "wait_ms"]`.
    pub path: Vec<String>,
    /// The value: the text as given (typed later by the field it lands in,
    /// as pydantic-settings does), or parsed JSON when the text is a JSON
    /// object or array.
    pub value: serde_json::Value,
    /// The variable's name as given.
    pub name: String,
}

/// The settings among `(name, value)` pairs: names start with `MODALKIT_`
/// (any case, as pydantic-settings matches them) followed by
/// `APP_SETTINGS` or `MODEL_SETTINGS` and `__`-separated keys.
///
/// ```
/// use modalkit_core::settings::key_values;
/// let found = key_values(&[("modalkit_app_settings__build_config__tag".into(), "3.10".into())]);
/// assert_eq!(found[0].path, ["app_settings", "build_config", "tag"]);
/// assert_eq!(found[0].value, serde_json::json!("3.10"));
/// ```
pub fn key_values(pairs: &[(String, String)]) -> Vec<KeyValue> {
    pairs
        .iter()
        .filter_map(|(name, raw)| {
            let path = key_path(name)?;
            let trimmed = raw.trim_start();
            let json = (!inside_free_form_map(&path)
                && (trimmed.starts_with('{') || trimmed.starts_with('[')))
            .then(|| serde_json::from_str::<serde_json::Value>(raw).ok())
            .flatten();
            Some(KeyValue {
                path,
                value: json.unwrap_or_else(|| serde_json::Value::from(raw.clone())),
                name: name.clone(),
            })
        })
        .collect()
}

/// The maps whose values are free-form (`dict[str, Any]` or
/// `dict[str, str]` in modalkit): a variable naming a key inside one sets
/// that key to the text as given, JSON or not, as pydantic-settings does.
const FREE_FORM_MAPS: &[&[&str]] = &[
    &["model_settings", "common"],
    &["model_settings", "model_entries"],
    &["app_settings", "build_config", "env"],
    &["app_settings", "deployment_config", "volumes"],
];

fn inside_free_form_map(path: &[String]) -> bool {
    FREE_FORM_MAPS
        .iter()
        .any(|map| path.len() > map.len() && path.iter().zip(map.iter()).all(|(a, b)| a == b))
}

/// The settings key path for an env-style name, if it is one.
pub fn key_path(name: &str) -> Option<Vec<String>> {
    let lower = name.to_ascii_lowercase();
    let rest = lower.strip_prefix(&ENV_PREFIX.to_ascii_lowercase())?;
    let path: Vec<String> = rest.split("__").map(str::to_owned).collect();
    let section_ok = matches!(path[0].as_str(), "app_settings" | "model_settings");
    (section_ok && path.iter().all(|key| !key.is_empty())).then_some(path)
}

/// The `.env` file's settings; a missing file has none.
pub fn dotenv_key_values(path: &Path) -> Result<Vec<KeyValue>, String> {
    match dotenv_pairs(path) {
        Ok(pairs) => Ok(key_values(&pairs)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(format!("{}: {err}", path.display())),
    }
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
