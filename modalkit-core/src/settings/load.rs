//! Merging the sources into [`Settings`] the way modalkit (pydantic-settings)
//! does, then validating. Files are deep-merged in order, then `.env`, then
//! environment variables (later wins); values are typed by the field they
//! land in ([`super::lax`]). Every problem names its field path, the rule
//! broken and where the value came from. Keys modalkit would ignore, a
//! short API key and an empty model list are warnings, not errors.

use std::cell::RefCell;
use std::collections::BTreeMap;

use garde::Validate;
use serde_json::{Map, Value};

use super::lax::Lax;
use super::schema::Settings;
use super::sources::{ConfigSources, KeyValue, dotenv_key_values, key_values};
use crate::error::{ConfigProblems, StartupError};

/// Variable appended to `app_prefix` to name the app.
pub const APP_POSTFIX_ENV: &str = "MODALKIT_APP_POSTFIX";

/// Settings and what was wrong with them but not fatal.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings.
    pub settings: Settings,
    /// Problems modalkit would accept: unknown keys (with the nearest known
    /// key), a short API key, no models. `check --strict` fails on them.
    pub warnings: Vec<String>,
    /// Where each value that some source set came from: dotted path (e.g.
    /// `app_settings.queue_config.backend`) -> `from file X` or `from
    /// environment variable NAME`. A path not here holds its built-in
    /// default, which tells what a yaml names from what it leaves to us.
    pub origins: BTreeMap<String, String>,
}

impl Settings {
    /// Loads and validates settings (see [`Settings::load_with_warnings`]),
    /// logging the warnings.
    pub fn load(sources: &ConfigSources) -> Result<Settings, StartupError> {
        let loaded = Self::load_with_warnings(sources)?;
        for warning in &loaded.warnings {
            tracing::warn!("config: {warning}");
        }
        Ok(loaded.settings)
    }

    /// Loads and validates settings: defaults, then each file, then `.env`,
    /// then environment variables (later wins), returning the warnings.
    pub fn load_with_warnings(sources: &ConfigSources) -> Result<Loaded, StartupError> {
        let mut merged = Merged::default();
        for section in ["app_settings", "model_settings"] {
            merged
                .root
                .insert(section.to_owned(), Value::Object(Map::new()));
        }
        for file in &sources.files {
            if !file.is_file() {
                return Err(StartupError::config(format!(
                    "config file {} does not exist (named by --config or MODALKIT_CONFIG)",
                    file.display()
                )));
            }
            let origin = format!("from file {}", file.display());
            let text = std::fs::read_to_string(file)
                .map_err(|err| StartupError::config(format!("{}: {err}", file.display())))?;
            match super::yaml::parse(&text) {
                Ok(Value::Null) => {}
                Ok(Value::Object(map)) => merged.merge(Vec::new(), Value::Object(map), &origin),
                Ok(_) => {
                    return Err(StartupError::config(format!(
                        "{}: expected a mapping at the top level",
                        file.display()
                    )));
                }
                Err(err) => {
                    return Err(StartupError::config(format!(
                        "{}: invalid YAML: {err}",
                        file.display()
                    )));
                }
            }
        }
        if let Some(path) = &sources.dotenv {
            let pairs = dotenv_key_values(path).map_err(StartupError::config)?;
            let origin = format!("from .env file {}", path.display());
            merged.merge_key_values(pairs, &origin);
        }
        merged.merge_key_values(key_values(&sources.env), "from environment variable");

        let warnings = RefCell::new(Vec::new());
        let root = Value::Object(merged.root);
        let settings: Settings = serde_path_to_error::deserialize(Lax::new(root, &warnings))
            .map_err(|err| {
                let path = err.path().to_string();
                let message = err.into_inner().to_string();
                StartupError::Config(ConfigProblems(vec![problem(
                    &merged.origins,
                    &path,
                    &message,
                )]))
            })?;
        settings.validate().map_err(|report| {
            StartupError::Config(ConfigProblems(
                report
                    .iter()
                    .map(|(path, error)| {
                        problem(&merged.origins, &path.to_string(), &error.to_string())
                    })
                    .collect(),
            ))
        })?;
        let mut warnings = warnings.into_inner();
        warnings.extend(settings.warnings());
        Ok(Loaded {
            settings,
            warnings,
            origins: merged.origins,
        })
    }

    /// What is allowed (as modalkit allows it) but likely a mistake.
    fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(key) = &self.app_settings.auth_config.api_key
            && key.chars().count() < 8
        {
            warnings.push(format!(
                "app_settings.auth_config.api_key: only {} characters; a key this short is easy to guess",
                key.chars().count()
            ));
        }
        if self.model_settings.model_entries.is_empty() {
            warnings.push(
                "model_settings.model_entries: empty; `serve` needs at least one model".to_owned(),
            );
        }
        warnings
    }
}

/// The merged document and where each value came from.
#[derive(Default)]
struct Merged {
    root: Map<String, Value>,
    /// Dotted path -> "from file X" / "from environment variable NAME".
    origins: BTreeMap<String, String>,
}

impl Merged {
    /// Deep-merges `value` at `path`: maps merge key by key, anything else
    /// replaces what was there.
    fn merge(&mut self, path: Vec<String>, value: Value, origin: &str) {
        match value {
            Value::Object(map) if !path.is_empty() || !map.is_empty() => {
                if !path.is_empty() {
                    self.origins.insert(path.join("."), origin.to_owned());
                    let slot = self.slot(&path);
                    if !slot.is_object() {
                        *slot = Value::Object(Map::new());
                    }
                }
                for (key, child) in map {
                    let mut child_path = path.clone();
                    child_path.push(key);
                    self.merge(child_path, child, origin);
                }
            }
            Value::Object(_) => {}
            other => {
                self.origins.insert(path.join("."), origin.to_owned());
                *self.slot(&path) = other;
            }
        }
    }

    fn merge_key_values(&mut self, pairs: Vec<KeyValue>, origin: &str) {
        for KeyValue { path, value, name } in pairs {
            let origin = if origin.ends_with("variable") {
                format!("{origin} {name}")
            } else {
                format!("{origin} ({name})")
            };
            self.merge(path, value, &origin);
        }
    }

    /// The value at `path` (non-empty), created (as maps) where missing.
    fn slot(&mut self, path: &[String]) -> &mut Value {
        let mut map = &mut self.root;
        let Some((last, parents)) = path.split_last() else {
            return map.entry(String::new()).or_insert(Value::Null);
        };
        for key in parents {
            let child = map
                .entry(key.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            map = match child {
                Value::Object(inner) => inner,
                _ => unreachable!("made a map above"),
            };
        }
        map.entry(last.clone()).or_insert(Value::Null)
    }
}

/// One problem line: `path: message (from where)`.
fn problem(origins: &BTreeMap<String, String>, path: &str, message: &str) -> String {
    let mut path = if path == "." {
        String::new()
    } else {
        path.to_owned()
    };
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        path = if path.is_empty() {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
        return format!("{path}: {message} (set in no source)");
    }
    let mut key = path.replace('[', ".").replace(']', "");
    let place = loop {
        if let Some(origin) = origins.get(&key) {
            break origin.clone();
        }
        match key.rfind('.') {
            Some(at) => key.truncate(at),
            None => break "built-in default".to_owned(),
        }
    };
    let what = if path.is_empty() {
        "<root>"
    } else {
        path.as_str()
    };
    format!("{what}: {message} ({place})")
}

/// The app's name: `app_prefix` + the postfix (`MODALKIT_APP_POSTFIX`,
/// default `-dev`).
pub fn app_name(settings: &Settings, postfix: Option<&str>) -> String {
    format!(
        "{}{}",
        settings.app_settings.app_prefix,
        postfix.unwrap_or("-dev")
    )
}

/// The app's name with the postfix this process's `MODALKIT_APP_POSTFIX`
/// sets, as modalkit names it.
pub fn app_name_from_env(settings: &Settings) -> String {
    app_name(settings, std::env::var(APP_POSTFIX_ENV).ok().as_deref())
}

/// The settings as JSON with secrets replaced by `"***"`.
pub fn redacted(settings: &Settings) -> Value {
    let mut value = serde_json::to_value(settings).unwrap_or(Value::Null);
    if let Some(auth) = value.pointer_mut("/app_settings/auth_config/api_key")
        && !auth.is_null()
    {
        *auth = Value::from("***");
    }
    value
}
