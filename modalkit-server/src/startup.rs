//! The parts a server is built from, one function each: result delivery,
//! the job store, the API key, the models' batchers and the durable intake.
//! `Server::build` calls them in order; each reads only its own settings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use modalkit_core::settings::JobStoreKind;
use modalkit_core::{
    Batcher, BatcherConfig, InferencePipeline, ModelContext, Settings, StartupError,
};
use modalkit_queue::{DeadLetterFile, Delivery, LazyBackend, QueueBackend, RetryPolicy};

use crate::async_jobs::store::{JobStore, MemoryJobStore};
use crate::auth::ApiKey;
use crate::aws::{Aws, DurableIntake};
use crate::server::{ServerError, ServerOptions};

/// Result delivery: the backend the options hand in or the settings name
/// (built on its first send), retries, dead letters and webhooks.
pub(crate) async fn delivery(
    settings: &Settings,
    options: &ServerOptions,
    aws: &Aws,
) -> Result<Delivery, ServerError> {
    let queue_config = &settings.app_settings.queue_config;
    let registry = options.registry.clone().unwrap_or_default();
    let missing_feature = match &options.queue_backend {
        Some(_) => None,
        None => registry.missing_feature(&queue_config.backend),
    };
    let given_sqs = match queue_config.backend.as_str() {
        "sqs" => aws.given_sqs_backend().await,
        _ => None,
    };
    let backend: Arc<dyn QueueBackend> = match (&options.queue_backend, given_sqs) {
        (Some(backend), _) => Arc::clone(backend),
        (None, Some(sqs)) => sqs,
        (None, None) => Arc::new(LazyBackend::new(registry, queue_config.clone())?),
    };
    let delivery = Delivery::new(
        backend,
        RetryPolicy::from_config(queue_config),
        DeadLetterFile::new(&queue_config.dead_letter_path),
    )
    .with_dead_letter_queue(queue_config.dead_letter_queue.clone());
    let delivery = match missing_feature {
        Some(feature) => {
            tracing::warn!(
                backend = %queue_config.backend,
                feature,
                "queue_config.backend names a backend this binary was built without: async jobs that name a queue will be refused (422); build with the `{feature}` feature (the Modal deploy derives it from the yaml) or set queue_config.backend"
            );
            delivery.with_backend_not_compiled(feature)
        }
        None => delivery,
    };
    #[cfg(feature = "webhooks")]
    let delivery = delivery.with_webhooks(modalkit_queue::WebhookSender::new(
        &modalkit_queue::WebhookConfig {
            secret: queue_config.webhook_secret.clone(),
            allowed_hosts: queue_config.webhook_allowed_hosts.clone(),
            timeout: Duration::from_secs_f64(queue_config.webhook_timeout_seconds),
        },
    )?);
    Ok(delivery)
}

/// Where job records live: the store the options hand in, or the one
/// `queue_config.job_store` names.
pub(crate) async fn job_store(
    settings: &Settings,
    options: &ServerOptions,
    aws: &Aws,
) -> Result<Arc<dyn JobStore>, ServerError> {
    if let Some(store) = &options.job_store {
        return Ok(Arc::clone(store));
    }
    let app = &settings.app_settings;
    let ttl = app.server_config.job_ttl_seconds as f64;
    match app.queue_config.job_store {
        JobStoreKind::Memory => Ok(Arc::new(MemoryJobStore::new(
            app.server_config.max_jobs,
            ttl,
        ))),
        JobStoreKind::Dynamodb => {
            aws.job_store(
                &app.queue_config,
                ttl,
                app.server_config.async_timeout_seconds + ttl,
            )
            .await
        }
    }
}

/// The API key the predict routes check, if any: the options', else
/// `auth_config.api_key`, else the one in SSM at `auth_config.ssm_key`.
/// With `deployment_config.secure`, Modal's proxy authenticates and the
/// auth_config key is neither checked nor read, as in modalkit.
pub(crate) async fn api_key(
    settings: &Settings,
    options: &ServerOptions,
    aws: &Aws,
) -> Result<Option<ApiKey>, ServerError> {
    let app = &settings.app_settings;
    let secure = app.deployment_config.secure;
    if secure && (app.auth_config.api_key.is_some() || app.auth_config.ssm_key.is_some()) {
        tracing::warn!(
            "deployment_config.secure is true: Modal's proxy auth (Modal-Key/Modal-Secret) protects the app; auth_config's api_key/ssm_key is ignored, as in modalkit"
        );
    }
    let configured = app.auth_config.api_key.clone().filter(|_| !secure);
    let key = match (
        options.api_key.clone().or(configured),
        &app.auth_config.ssm_key,
    ) {
        (Some(key), _) => key,
        (None, Some(parameter)) if !secure => {
            let key = aws.api_key(parameter).await?;
            tracing::info!(parameter = %parameter, "API key read from SSM");
            key
        }
        (None, _) => return Ok(None),
    };
    let key = ApiKey::new(&app.auth_config.auth_header, &key)
        .map_err(|err| StartupError::config(err.to_string()))?;
    Ok(Some(key))
}

/// The models of `model_entries`, loaded.
pub(crate) struct Models<P: InferencePipeline> {
    /// One batcher per model.
    pub(crate) batchers: BTreeMap<String, Arc<Batcher<P>>>,
    /// How long loading them all took.
    pub(crate) load_seconds: f64,
    /// Each model's warm-up inputs
    /// ([`InferencePipeline::warmup_inputs`]), for the models that have any.
    pub(crate) warmups: Vec<(String, Vec<P::Input>)>,
}

/// Every model of `model_entries`, loaded: one batcher each (its workers
/// load the pipeline on their own threads).
pub(crate) async fn models<P: InferencePipeline>(
    settings: &Settings,
) -> Result<Models<P>, ServerError> {
    if settings.model_settings.model_entries.is_empty() {
        return Err(StartupError::config(
            "model_settings.model_entries: empty; add at least one model to serve (modalkit loads such a file, but there is nothing to serve)",
        )
        .into());
    }
    let config = BatcherConfig::from_settings(settings);
    let mut batchers = BTreeMap::new();
    let mut warmups = Vec::new();
    let loading = Instant::now();
    for name in settings.model_settings.model_entries.keys() {
        let started = Instant::now();
        let context = model_context(settings, name)?;
        let inputs = P::warmup_inputs(&context, config.max_batch_size);
        if !inputs.is_empty() {
            warmups.push((name.clone(), inputs));
        }
        let (name_owned, config) = (name.clone(), config.clone());
        let batcher = tokio::task::spawn_blocking(move || {
            Batcher::<P>::start(&name_owned, config, |worker_index| ModelContext {
                worker_index,
                ..context.clone()
            })
        })
        .await
        .map_err(ServerError::LoadTask)??;
        tracing::info!(model = %name, workers = batcher.config().workers, elapsed = ?started.elapsed(), "model loaded");
        batchers.insert(name.clone(), Arc::new(batcher));
    }
    Ok(Models {
        batchers,
        load_seconds: loading.elapsed().as_secs_f64(),
        warmups,
    })
}

/// The context worker 0 of model `name` loads with.
fn model_context(settings: &Settings, name: &str) -> Result<ModelContext, ServerError> {
    ModelContext::from_settings(settings, name, 0).ok_or_else(|| {
        StartupError::config(format!(
            "model_settings.model_entries: no model named '{name}'"
        ))
        .into()
    })
}

/// The durable intake `queue_config.input_queue` asks for, if any: the
/// input queue and the model its messages run on by default.
pub(crate) async fn durable_intake(
    settings: &Settings,
    model_names: &[String],
    aws: &Aws,
) -> Result<Option<DurableIntake>, ServerError> {
    let queue_config = &settings.app_settings.queue_config;
    let Some(queue_name) = &queue_config.input_queue else {
        return Ok(None);
    };
    let default_model = match &queue_config.input_model {
        Some(model) if model_names.contains(model) => model.clone(),
        Some(model) => {
            return Err(StartupError::config(format!(
                "app_settings.queue_config.input_model: '{model}' is not in model_settings.model_entries"
            ))
            .into());
        }
        None if model_names.len() == 1 => model_names[0].clone(),
        None => {
            return Err(StartupError::config(
                "app_settings.queue_config.input_model: required when several models are served",
            )
            .into());
        }
    };
    Ok(Some(
        aws.input_queue(queue_name, queue_config, default_model)
            .await?,
    ))
}

/// How long async jobs may take, for the job layer and the warm-up.
pub(crate) fn async_timeout(settings: &Settings) -> Duration {
    Duration::from_secs_f64(settings.app_settings.server_config.async_timeout_seconds)
}
