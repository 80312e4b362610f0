//! What a configuration asks of the binary: the Cargo features of the
//! modalkit crate that its settings need, and whether this build has them.
//! `check` reports a missing one as an error, `serve` refuses what it cannot
//! do, and the Modal deploy (`deploy/modal_app.py`, `derive_features`)
//! derives the same features from the same yaml to build the image; a test
//! of the deploy holds the two to this table:
//!
//! | setting | feature |
//! |---|---|
//! | `queue_config.backend: sqs` (modalkit's default) | `sqs` |
//! | `queue_config.input_queue` | `sqs` |
//! | `auth_config.ssm_key` (unless `deployment_config.secure`) | `sqs` |
//! | `queue_config.job_store: dynamodb` | `dynamodb` |
//! | `queue_config.webhook_allowed_hosts` or `webhook_secret` | `webhooks` |

use modalkit_core::Settings;
use modalkit_core::settings::JobStoreKind;
use serde::Serialize;

/// One setting that needs a Cargo feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct FeatureNeed {
    /// The setting's dotted path, e.g. `app_settings.queue_config.backend`.
    pub field: &'static str,
    /// Its value, as the yaml gives it (secrets are not shown).
    pub value: String,
    /// The feature of the modalkit crate it needs.
    pub feature: &'static str,
    /// Whether this binary was built with it.
    pub compiled: bool,
}

/// The server's features of the modalkit crate, by name.
const SERVER_FEATURES: [&str; 4] = ["sqs", "dynamodb", "webhooks", "otel"];

/// The features of [`SERVER_FEATURES`] this binary was built with.
pub(crate) fn compiled_features() -> Vec<&'static str> {
    SERVER_FEATURES
        .into_iter()
        .filter(|feature| compiled(feature))
        .collect()
}

/// Whether this binary was built with `feature` of the modalkit crate
/// (one of [`SERVER_FEATURES`]); other names: false.
// Each arm's value depends on the build, so no one `matches!` fits them all.
#[allow(clippy::match_like_matches_macro)]
pub(crate) fn compiled(feature: &str) -> bool {
    match feature {
        "sqs" => cfg!(feature = "sqs"),
        "dynamodb" => cfg!(feature = "dynamodb"),
        "webhooks" => cfg!(feature = "webhooks"),
        "otel" => cfg!(feature = "otel"),
        _ => false,
    }
}

/// The features `settings` need, one entry per setting that needs one, in
/// the order of the table above.
pub(crate) fn needed_features(settings: &Settings) -> Vec<FeatureNeed> {
    let app = &settings.app_settings;
    let queue = &app.queue_config;
    let mut needs = Vec::new();
    let mut need = |field: &'static str, value: &str, feature: &'static str| {
        needs.push(FeatureNeed {
            field,
            value: value.to_owned(),
            feature,
            compiled: compiled(feature),
        });
    };
    if queue.backend == "sqs" {
        need("app_settings.queue_config.backend", &queue.backend, "sqs");
    }
    if let Some(input_queue) = &queue.input_queue {
        need("app_settings.queue_config.input_queue", input_queue, "sqs");
    }
    if let Some(parameter) = &app.auth_config.ssm_key
        && !app.deployment_config.secure
    {
        need("app_settings.auth_config.ssm_key", parameter, "sqs");
    }
    if queue.job_store == JobStoreKind::Dynamodb {
        need(
            "app_settings.queue_config.job_store",
            "dynamodb",
            "dynamodb",
        );
    }
    if !queue.webhook_allowed_hosts.is_empty() {
        need(
            "app_settings.queue_config.webhook_allowed_hosts",
            &queue.webhook_allowed_hosts.join(", "),
            "webhooks",
        );
    } else if queue.webhook_secret.is_some() {
        need(
            "app_settings.queue_config.webhook_secret",
            "***",
            "webhooks",
        );
    }
    needs
}

/// The distinct features `settings` need, sorted.
pub(crate) fn feature_names(needs: &[FeatureNeed]) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = needs.iter().map(|need| need.feature).collect();
    names.sort_unstable();
    names.dedup();
    names
}
