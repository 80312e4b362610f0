//! What a pipeline's `load` receives: which model it is, where its files are,
//! the `common` settings and this model's own entry.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::StartupError;
use crate::settings::Settings;

/// Everything a pipeline needs to load one model on one worker.
#[derive(Debug, Clone)]
pub struct ModelContext {
    /// The model's name: its key in `model_entries`.
    pub model_name: String,
    /// `model_settings.local_model_repository_folder`.
    pub model_folder: PathBuf,
    /// `model_settings.common`: settings shared by every model.
    pub common: Map<String, Value>,
    /// This model's entry in `model_settings.model_entries`.
    pub entry: Value,
    /// Which worker of this model is loading (0-based).
    pub worker_index: usize,
}

impl ModelContext {
    /// The context for `model_name` from loaded settings, or `None` if the
    /// model is not configured.
    pub fn from_settings(
        settings: &Settings,
        model_name: &str,
        worker_index: usize,
    ) -> Option<Self> {
        let models = &settings.model_settings;
        let entry = models.model_entries.get(model_name)?.clone();
        Some(ModelContext {
            model_name: model_name.to_owned(),
            model_folder: PathBuf::from(&models.local_model_repository_folder),
            common: models.common.clone(),
            entry,
            worker_index,
        })
    }

    /// A context with an empty folder and `common`, for tests and doctests.
    pub fn for_test(model_name: &str, entry: Value) -> Self {
        ModelContext {
            model_name: model_name.to_owned(),
            model_folder: PathBuf::from("."),
            common: Map::new(),
            entry,
            worker_index: 0,
        }
    }

    /// This model's entry as `T`; a mismatch names the model and the field.
    ///
    /// ```
    /// # use modalkit_core::ModelContext;
    /// #[derive(Debug, serde::Deserialize)]
    /// struct Entry { path: String }
    /// let ctx = ModelContext::for_test("m", serde_json::json!({"path": 3}));
    /// let err = ctx.entry::<Entry>().unwrap_err().to_string();
    /// assert!(err.contains("model_settings.model_entries.m.path"), "{err}");
    /// ```
    pub fn entry<T: DeserializeOwned>(&self) -> Result<T, StartupError> {
        serde_path_to_error::deserialize(&self.entry).map_err(|err| {
            let path = err.path().to_string();
            StartupError::ModelEntry {
                model: self.model_name.clone(),
                path: if path == "." {
                    String::new()
                } else {
                    format!(".{path}")
                },
                message: err.into_inner().to_string(),
            }
        })
    }

    /// A setting looked up in this model's entry first, then in `common`
    /// (as `device` is: per model, with a shared default).
    pub fn setting(&self, key: &str) -> Option<&Value> {
        self.entry.get(key).or_else(|| self.common.get(key))
    }

    /// A path inside the model folder.
    pub fn model_path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.model_folder.join(relative)
    }
}
