//! Merging the sources into [`Settings`] and validating them. Every problem is
//! reported with its field path, the rule broken and where the value came from.

use figment::Figment;
use figment::providers::{Format, Serialized, Yaml};
use garde::Validate;
use serde_json::Value;

use super::schema::Settings;
use super::sources::{ConfigSources, KeyValueProvider};
use crate::error::{ConfigProblems, Error, Result};

/// Variable appended to `app_prefix` to name the app.
pub const APP_POSTFIX_ENV: &str = "MODALKIT_APP_POSTFIX";

impl Settings {
    /// Loads and validates settings: defaults, then each file, then `.env`,
    /// then environment variables (later wins).
    pub fn load(sources: &ConfigSources) -> Result<Settings> {
        let mut figment = Figment::from(Serialized::defaults(serde_json::json!({
            "app_settings": {},
            "model_settings": {},
        })));
        for file in &sources.files {
            if !file.is_file() {
                return Err(Error::config(format!(
                    "config file {} does not exist (named by --config or MODALKIT_CONFIG)",
                    file.display()
                )));
            }
            figment = figment.merge(Yaml::file_exact(file));
        }
        if let Some(path) = &sources.dotenv {
            figment = figment.merge(KeyValueProvider::dotenv(path).map_err(Error::config)?);
        }
        figment = figment.merge(KeyValueProvider::environment(sources.env.clone()));

        let settings: Settings = figment
            .extract()
            .map_err(|err| extraction_problems(&figment, err))?;
        settings
            .validate()
            .map_err(|report| validation_problems(&figment, &report))?;
        Ok(settings)
    }
}

/// The app's name: `app_prefix` + `MODALKIT_APP_POSTFIX` (default `-dev`).
pub fn app_name(settings: &Settings, postfix: Option<&str>) -> String {
    format!(
        "{}{}",
        settings.app_settings.app_prefix,
        postfix.unwrap_or("-dev")
    )
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

/// Where the value at `path` came from: the nearest key on the path that a
/// source set (list items have no metadata of their own).
fn origin(figment: &Figment, path: &str) -> String {
    let dotted = path.replace('[', ".").replace(']', "");
    let mut keys: Vec<&str> = dotted.split('.').filter(|k| !k.is_empty()).collect();
    let mut found = None;
    while !keys.is_empty() && found.is_none() {
        found = figment.find_metadata(&keys.join("."));
        if found.is_none() {
            keys.pop();
        }
    }
    let path = keys.join(".");
    let path = path.as_str();
    match found {
        Some(meta) => match &meta.source {
            Some(source) => format!("from {} {source}", meta.name),
            None => {
                let keys: Vec<&str> = path.split('.').collect();
                let name = meta.interpolate(&figment::Profile::Default, &keys);
                format!("from {} {name}", meta.name)
            }
        },
        None => "built-in default".to_owned(),
    }
}

fn extraction_problems(figment: &Figment, err: figment::Error) -> Error {
    let problems = err
        .into_iter()
        .map(|e| {
            let mut path = e.path.join(".");
            let missing = match &e.kind {
                figment::error::Kind::UnknownField(field, _) => Some(field.clone()),
                figment::error::Kind::MissingField(field) => Some(field.to_string()),
                _ => None,
            };
            if let Some(field) = &missing {
                path = if path.is_empty() {
                    field.clone()
                } else {
                    format!("{path}.{field}")
                };
            }
            let place = match (&e.kind, &e.metadata) {
                (figment::error::Kind::MissingField(_), _) => "set in no source".to_owned(),
                (_, Some(meta)) => match &meta.source {
                    Some(source) => format!("from {} {source}", meta.name),
                    None => format!("from {}", meta.name),
                },
                (_, None) => origin(figment, &path),
            };
            let what = if path.is_empty() {
                "<root>".to_owned()
            } else {
                path
            };
            format!("{what}: {} ({place})", e.kind)
        })
        .collect();
    Error::Config(ConfigProblems(problems))
}

fn validation_problems(figment: &Figment, report: &garde::Report) -> Error {
    let problems = report
        .iter()
        .map(|(path, error)| {
            let path = path.to_string();
            format!("{path}: {error} ({})", origin(figment, &path))
        })
        .collect();
    Error::Config(ConfigProblems(problems))
}
