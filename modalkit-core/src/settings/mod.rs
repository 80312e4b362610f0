//! Settings: modalkit's `modalkit.yaml` schema plus a `server_config` section,
//! merged from defaults, files, `.env` and `MODALKIT_` environment variables,
//! then validated. Files are read as PyYAML reads them (YAML 1.1) and values
//! typed as pydantic does, so a modalkit user's files and variables load
//! unchanged.
//!
//! ```
//! use modalkit_core::settings::{ConfigSources, Settings};
//! let dir = tempfile::tempdir().unwrap();
//! let file = dir.path().join("modalkit.yaml");
//! std::fs::write(&file, "app_settings:\n  app_prefix: demo\nmodel_settings:\n  model_entries:\n    m: {}\n").unwrap();
//! let sources = ConfigSources::files(vec![file])
//!     .with_env([("MODALKIT_APP_SETTINGS__BATCH_CONFIG__MAX_BATCH_SIZE", "64")]);
//! let settings = Settings::load(&sources).unwrap();
//! assert_eq!(settings.app_settings.batch_config.max_batch_size, 64);
//! ```

mod lax;
mod load;
mod schema;
mod sources;
pub mod yaml;

pub use load::{APP_POSTFIX_ENV, Loaded, app_name, app_name_from_env, redacted};
pub use schema::*;
pub use sources::{ConfigSources, KeyValue, dotenv_key_values, key_path, key_values};
