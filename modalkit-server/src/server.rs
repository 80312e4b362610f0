//! A running server: builds one batcher per model, the result delivery and
//! the router, serves until SIGTERM/SIGINT (or a fatal device error), then
//! drains: `/ready` turns 503, intake stops, in-flight requests are
//! answered and accepted async jobs finish and are delivered within
//! `shutdown_grace`. SIGHUP runs the pipelines' `on_volume_reload`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use modalkit_core::batcher::BatcherState;
use modalkit_core::settings::JobStoreKind;
use modalkit_core::{
    Batcher, BatcherConfig, InferencePipeline, ModelContext, Settings, StartupError,
};
use modalkit_queue::{BackendRegistry, DeadLetterFile, Delivery, QueueBackend, RetryPolicy};
#[cfg(feature = "sqs")]
use modalkit_queue::{SqsOptions, SqsQueue};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[cfg(feature = "sqs")]
use crate::async_jobs::consumer::{ConsumerConfig, InputConsumer};
use crate::async_jobs::store::{JobStore, MemoryJobStore, StoreError};
use crate::async_jobs::{AsyncJobs, JobIntake};
use crate::auth::ApiKey;
use crate::state::{AppState, Limits};
use crate::traces::Tracer;

/// Process exit code after a fatal device error (documented in docs/).
pub const EXIT_DEVICE_FAILED: u8 = 3;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The settings, a model entry, a device or a model's load.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// The queue backend, the webhook sender or the input queue could not
    /// be set up.
    #[error(transparent)]
    Queue(#[from] modalkit_queue::QueueError),
    /// The job store could not be reached or its table created.
    #[error("job store (DynamoDB table {table}): {source}")]
    JobStore {
        /// The table.
        table: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The API key could not be read from AWS SSM.
    #[error("reading the API key from SSM parameter {parameter}: {reason}")]
    ApiKeyFromSsm {
        /// The parameter's name.
        parameter: String,
        /// Why, with the SDK's whole chain of causes.
        reason: String,
    },
    /// `server_config.host:port` could not be bound.
    #[error("cannot bind {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A model's loading task panicked or was cancelled.
    #[error("model loading task failed: {0}")]
    LoadTask(#[source] tokio::task::JoinError),
}

/// How a server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// A requested shutdown completed: exit 0.
    Clean,
    /// A fatal device error: exit [`EXIT_DEVICE_FAILED`].
    DeviceFailed,
}

impl Stopped {
    /// The process exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Stopped::Clean => 0,
            Stopped::DeviceFailed => EXIT_DEVICE_FAILED,
        }
    }
}

/// What a program can hand the server besides settings.
#[derive(Clone, Default)]
pub struct ServerOptions {
    /// A backend instance to use instead of `queue_config.backend` (as
    /// modalkit's `ModalService(queue_backend=...)`).
    pub queue_backend: Option<Arc<dyn QueueBackend>>,
    /// Backends selectable by name; default: the built-in ones.
    pub registry: Option<BackendRegistry>,
    /// A job store instance to use instead of `queue_config.job_store`.
    pub job_store: Option<Arc<dyn JobStore>>,
    /// An API key to use instead of `auth_config.api_key` / `ssm_key`.
    pub api_key: Option<String>,
    /// The AWS configuration for SQS and SSM; default: the standard chain
    /// (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL`), with
    /// `queue_config.broker_url` as the SQS endpoint when set.
    #[cfg(feature = "sqs")]
    pub aws_config: Option<aws_config::SdkConfig>,
}

/// Without the `sqs` feature there is no input consumer; this stands in for
/// it in the drain.
#[cfg(not(feature = "sqs"))]
struct InputConsumer;

#[cfg(not(feature = "sqs"))]
impl InputConsumer {
    fn stop_polling(&self) {}
    async fn wait(&self) {}
}

/// A setting that needs the `sqs` feature, in a build without it.
#[cfg(not(feature = "sqs"))]
fn not_compiled(field: &str, value: &str) -> ServerError {
    StartupError::config(format!(
        "{field}: '{value}' needs SQS/SSM support, which this binary was built without: enable the `sqs` feature of the modalkit crate"
    ))
    .into()
}

/// The input consumer to start when serving.
#[cfg(feature = "sqs")]
struct ConsumerPlan {
    sqs: Arc<SqsQueue>,
    config: ConsumerConfig,
}

/// A server ready to run.
pub struct Server<P: InferencePipeline> {
    state: Arc<AppState<P>>,
    extra_routes: Option<axum::Router<Arc<AppState<P>>>>,
    settings: Settings,
    api_key: Option<ApiKey>,
    #[cfg(feature = "sqs")]
    consumer: Option<ConsumerPlan>,
}

impl<P: InferencePipeline> Server<P> {
    /// Loads every model (one batcher each) and the queue backend.
    pub async fn build(settings: Settings, options: ServerOptions) -> Result<Self, ServerError> {
        // The recorder first: metric handles made before it is installed
        // (the batchers' are made here) would record nowhere.
        crate::telemetry::prometheus();
        let app = &settings.app_settings;
        let server_config = &app.server_config;
        let queue_config = &app.queue_config;
        #[cfg(feature = "sqs")]
        let sqs_for = |aws: &Option<aws_config::SdkConfig>| {
            let aws = aws.clone();
            let endpoint = queue_config.broker_url.clone();
            async move {
                match aws {
                    Some(config) => SqsQueue::from_config(&config),
                    None => {
                        SqsQueue::connect(SqsOptions {
                            endpoint_url: endpoint,
                        })
                        .await
                    }
                }
            }
        };
        let registry = options.registry.clone().unwrap_or_default();
        let missing_feature = match &options.queue_backend {
            Some(_) => None,
            None => registry.missing_feature(&queue_config.backend),
        };
        let backend: Arc<dyn QueueBackend> = match &options.queue_backend {
            Some(backend) => Arc::clone(backend),
            #[cfg(feature = "sqs")]
            None if queue_config.backend == "sqs" && options.aws_config.is_some() => {
                Arc::new(sqs_for(&options.aws_config).await)
            }
            None => Arc::new(modalkit_queue::LazyBackend::new(
                registry,
                queue_config.clone(),
            )?),
        };
        let delivery = Delivery::new(
            backend,
            RetryPolicy::from_config(&app.queue_config),
            DeadLetterFile::new(&app.queue_config.dead_letter_path),
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
        let delivery = Arc::new(delivery);
        let job_store = match &options.job_store {
            Some(store) => Arc::clone(store),
            None => build_job_store(&settings, &options).await?,
        };
        // As modalkit: with `secure: true`, Modal's proxy authenticates and
        // the auth_config key is neither checked nor read from SSM.
        let secure = app.deployment_config.secure;
        if secure && (app.auth_config.api_key.is_some() || app.auth_config.ssm_key.is_some()) {
            tracing::warn!(
                "deployment_config.secure is true: Modal's proxy auth (Modal-Key/Modal-Secret) protects the app; auth_config's api_key/ssm_key is ignored, as in modalkit"
            );
        }
        let configured_key = app.auth_config.api_key.clone().filter(|_| !secure);
        let ssm_key = app.auth_config.ssm_key.clone().filter(|_| !secure);
        #[cfg_attr(not(feature = "sqs"), allow(unused_mut))]
        let mut key = options.api_key.or(configured_key);
        #[cfg(feature = "sqs")]
        if let (None, Some(parameter)) = (&key, &ssm_key) {
            let aws = match &options.aws_config {
                Some(config) => config.clone(),
                None => aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await,
            };
            key = Some(crate::ssm::api_key_from_ssm(&aws, parameter).await?);
            tracing::info!(parameter = %parameter, "API key read from SSM");
        }
        #[cfg(not(feature = "sqs"))]
        if let (None, Some(parameter)) = (&key, &ssm_key) {
            return Err(not_compiled("app_settings.auth_config.ssm_key", parameter));
        }
        let api_key = match key {
            Some(key) => Some(
                ApiKey::new(&app.auth_config.auth_header, &key).map_err(StartupError::config)?,
            ),
            None => None,
        };

        if settings.model_settings.model_entries.is_empty() {
            return Err(StartupError::config(
                "model_settings.model_entries: empty; add at least one model to serve (modalkit loads such a file, but there is nothing to serve)",
            )
            .into());
        }
        let config = BatcherConfig::from_settings(&settings);
        let mut models = BTreeMap::new();
        let loading = Instant::now();
        for name in settings.model_settings.model_entries.keys() {
            let started = Instant::now();
            let (name_owned, config, settings_owned) =
                (name.clone(), config.clone(), settings.clone());
            let batcher = tokio::task::spawn_blocking(move || {
                Batcher::<P>::start(&name_owned, config, |worker| {
                    ModelContext::from_settings(&settings_owned, &name_owned, worker)
                        .unwrap_or_else(|| {
                            ModelContext::for_test(&name_owned, serde_json::Value::Null)
                        })
                })
            })
            .await
            .map_err(ServerError::LoadTask)??;
            tracing::info!(model = %name, workers = batcher.config().workers, elapsed = ?started.elapsed(), "model loaded");
            models.insert(name.clone(), Arc::new(batcher));
        }
        let model_names: Vec<String> = models.keys().cloned().collect();
        #[cfg(not(feature = "sqs"))]
        if let Some(queue_name) = &queue_config.input_queue {
            return Err(not_compiled(
                "app_settings.queue_config.input_queue",
                queue_name,
            ));
        }
        #[cfg(feature = "sqs")]
        let consumer = match &queue_config.input_queue {
            None => None,
            Some(queue_name) => {
                let default_model = match &queue_config.input_model {
                    Some(model) if models.contains_key(model) => model.clone(),
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
                Some(ConsumerPlan {
                    sqs: Arc::new(sqs_for(&options.aws_config).await),
                    config: ConsumerConfig {
                        queue_name: queue_name.clone(),
                        max_messages: queue_config.input_max_messages as i32,
                        wait_seconds: queue_config.input_wait_seconds as i32,
                        visibility_seconds: queue_config.input_visibility_timeout_seconds as i32,
                        max_in_flight: queue_config.input_max_in_flight,
                        default_model,
                    },
                })
            }
        };
        #[cfg(feature = "sqs")]
        let intake = match &consumer {
            Some(plan) => JobIntake::Durable {
                sqs: Arc::clone(&plan.sqs),
                queue: plan.config.queue_name.clone(),
            },
            None => JobIntake::Embedded,
        };
        #[cfg(not(feature = "sqs"))]
        let intake = JobIntake::Embedded;
        let async_timeout = Duration::from_secs_f64(server_config.async_timeout_seconds);
        let app_name = modalkit_core::settings::app_name_from_env(&settings);
        let tracer = Tracer::from_env(&app_name);
        let jobs = Arc::new(
            AsyncJobs::new(
                job_store,
                delivery,
                models.clone(),
                intake,
                async_timeout,
                server_config.job_ttl_seconds as f64,
            )
            .with_tracer(tracer.clone()),
        );
        let openapi = crate::openapi::document::<P>(&app_name, &model_names);
        let state = Arc::new(AppState {
            models,
            model_names,
            jobs,
            limits: Limits {
                max_body_bytes: server_config.max_body_bytes,
                max_batch_request_items: server_config.max_batch_request_items,
                request_timeout: Duration::from_secs_f64(server_config.request_timeout_seconds),
                async_timeout,
            },
            tracer,
            shutting_down: Default::default(),
            startup: std::sync::Mutex::new(crate::state::StartupTimes {
                load_seconds: loading.elapsed().as_secs_f64(),
                warmup_seconds: None,
            }),
            openapi: serde_json::to_vec_pretty(&openapi)
                .unwrap_or_default()
                .into(),
        });
        Ok(Server {
            state,
            extra_routes: None,
            settings,
            api_key,
            #[cfg(feature = "sqs")]
            consumer,
        })
    }

    /// The shared state (for embedding and tests).
    pub fn state(&self) -> &Arc<AppState<P>> {
        &self.state
    }

    /// Adds routes (behind the API key, like the predict routes), e.g.
    /// [`crate::openai::routes`].
    pub fn with_routes(mut self, routes: axum::Router<Arc<AppState<P>>>) -> Self {
        self.extra_routes = Some(match self.extra_routes.take() {
            Some(existing) => existing.merge(routes),
            None => routes,
        });
        self
    }

    /// The axum router.
    pub fn router(&self) -> axum::Router {
        crate::router::build(
            Arc::clone(&self.state),
            self.api_key.clone(),
            &self.settings.app_settings.server_config.cors_allow_origins,
            self.extra_routes.clone(),
        )
    }

    /// What [`Server::router`] routes to, served without the router around it.
    fn service(
        &self,
    ) -> impl tower::Service<
        axum::extract::Request,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static {
        crate::router::service(
            Arc::clone(&self.state),
            self.api_key.clone(),
            &self.settings.app_settings.server_config.cors_allow_origins,
            self.extra_routes.clone(),
        )
    }

    /// Binds `server_config.host:port`.
    pub async fn bind(&self) -> Result<TcpListener, ServerError> {
        let config = &self.settings.app_settings.server_config;
        let address = format!("{}:{}", config.host, config.port);
        TcpListener::bind(&address)
            .await
            .map_err(|source| ServerError::Bind { address, source })
    }

    /// Serves on `listener` until `shutdown` resolves, SIGTERM/SIGINT
    /// arrives, or a model's device fails; then drains and returns how it
    /// stopped.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Stopped, ServerError> {
        let address: Option<SocketAddr> = listener.local_addr().ok();
        tracing::info!(?address, models = ?self.state.model_names, "serving");
        let service = axum::ServiceExt::<axum::extract::Request>::into_make_service(self.service());
        let state = Arc::clone(&self.state);
        let server_config = &self.settings.app_settings.server_config;
        let grace = Duration::from_secs_f64(server_config.shutdown_grace_seconds);
        let unready_delay = Duration::from_secs_f64(server_config.unready_delay_seconds);

        // With nothing to warm up, ready before the first request can ask.
        let warmups = warmup_inputs(&state, &self.settings);
        if warmups.is_empty() {
            state.warmed_up(0.0);
        }
        let (stop_http, mut http_stopped) = watch::channel(false);
        let http = tokio::spawn(async move {
            let result = axum::serve(listener, service)
                .with_graceful_shutdown(async move {
                    let _ = http_stopped.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(err) = result {
                tracing::error!(%err, "HTTP server failed");
            }
        });

        #[cfg(feature = "sqs")]
        let consumer = match &self.consumer {
            Some(plan) => {
                let consumer = InputConsumer::start(
                    Arc::clone(&plan.sqs),
                    Arc::clone(&state.jobs),
                    plan.config.clone(),
                )
                .await?;
                Some(consumer)
            }
            None => None,
        };
        #[cfg(not(feature = "sqs"))]
        let consumer: Option<InputConsumer> = None;
        let reload_state = Arc::clone(&state);
        let reloads = tokio::spawn(reload_on_sighup(reload_state));
        let warmup = tokio::spawn(warm_up(Arc::clone(&state), warmups));
        let stopped = wait_for_stop(&state, shutdown).await;
        let unready_since = tokio::time::Instant::now();
        reloads.abort();
        warmup.abort();
        if let Some(consumer) = &consumer {
            consumer.stop_polling();
        }
        drain(&state, consumer.as_ref(), grace).await;
        tokio::time::sleep_until(unready_since + unready_delay).await;
        let _ = stop_http.send(true);
        if tokio::time::timeout(Duration::from_secs(5), http)
            .await
            .is_err()
        {
            tracing::warn!("open connections did not close within 5s of the drain");
        }
        let tracer = state.tracer.clone();
        let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
        tracing::info!(?stopped, "stopped");
        Ok(stopped)
    }
}

/// Each model's warm-up inputs ([`InferencePipeline::warmup_inputs`]), for
/// the models that declare any.
fn warmup_inputs<P: InferencePipeline>(
    state: &AppState<P>,
    settings: &Settings,
) -> Vec<(String, Vec<P::Input>)> {
    state
        .models
        .iter()
        .map(|(name, batcher)| {
            let ctx = ModelContext::from_settings(settings, name, 0)
                .unwrap_or_else(|| ModelContext::for_test(name, serde_json::Value::Null));
            (
                name.clone(),
                P::warmup_inputs(&ctx, batcher.config().max_batch_size),
            )
        })
        .filter(|(_, inputs)| !inputs.is_empty())
        .collect()
}

/// Runs the warm-up inputs through each model's batcher, then marks the
/// server ready. A failing warm-up item
/// is logged; a fatal one fails the model (and `/ready` says so).
async fn warm_up<P: InferencePipeline>(
    state: Arc<AppState<P>>,
    warmups: Vec<(String, Vec<P::Input>)>,
) {
    let started = Instant::now();
    for (name, inputs) in warmups {
        let Some(batcher) = state.models.get(&name) else {
            continue;
        };
        let count = inputs.len();
        let deadline = Instant::now() + state.limits.async_timeout;
        let mut tickets = Vec::with_capacity(count);
        for input in inputs {
            let options = modalkit_core::SubmitOptions {
                deadline: Some(deadline),
                on_start: None,
                timing: None,
            };
            match batcher.submit_waiting(input, options).await {
                Ok(ticket) => tickets.push(ticket),
                Err(err) => tracing::warn!(model = %name, %err, "a warm-up item was refused"),
            }
        }
        let mut failed = 0;
        for ticket in tickets {
            if let Err(err) = ticket.await {
                failed += 1;
                tracing::warn!(model = %name, %err, "a warm-up item failed");
            }
        }
        tracing::info!(model = %name, items = count, failed, elapsed = ?started.elapsed(), "warmed up");
    }
    state.warmed_up(started.elapsed().as_secs_f64());
}

async fn wait_for_stop<P: InferencePipeline>(
    state: &AppState<P>,
    shutdown: impl Future<Output = ()>,
) -> Stopped {
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<()>(1);
    for batcher in state.models.values() {
        let mut watcher = batcher.watch_state();
        let failed = failed_tx.clone();
        tokio::spawn(async move {
            if watcher
                .wait_for(|s| matches!(s, BatcherState::Failed(_)))
                .await
                .is_ok()
            {
                let _ = failed.try_send(());
            }
        });
    }
    drop(failed_tx);
    let fatal = async {
        if failed_rx.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = shutdown => { tracing::info!("shutdown requested"); Stopped::Clean }
        () = terminate_signal() => { tracing::info!("SIGTERM/SIGINT received: draining"); Stopped::Clean }
        () = fatal => { tracing::error!("a model's device failed: draining, then exiting with code {EXIT_DEVICE_FAILED}"); Stopped::DeviceFailed }
    }
}

/// The drain: stop intake, let queued work and async deliveries finish
/// within `grace`; past it, fail what is still queued (async jobs then send
/// their failure or dead-letter it) and stop retrying deliveries.
async fn drain<P: InferencePipeline>(
    state: &AppState<P>,
    consumer: Option<&InputConsumer>,
    grace: Duration,
) {
    let started = Instant::now();
    state.shutting_down.store(true, Ordering::SeqCst);
    for batcher in state.models.values() {
        batcher.close();
    }
    state.jobs.tasks().close();
    let deadline = tokio::time::Instant::now() + grace;
    let workers_done = join_batchers(state);
    if tokio::time::timeout_at(deadline, async {
        workers_done.await;
        state.jobs.tasks().wait().await;
        if let Some(consumer) = consumer {
            consumer.wait().await;
        }
    })
    .await
    .is_err()
    {
        let failed: usize = state
            .models
            .values()
            .map(|b| b.fail_queued("the server shut down before this item was computed"))
            .sum();
        tracing::warn!(
            failed_queued = failed,
            pending_jobs = state.jobs.tasks().len(),
            "grace period over"
        );
        state.jobs.delivery().give_up();
        state.jobs.tasks().wait().await;
        if let Some(consumer) = consumer {
            consumer.wait().await;
        }
    }
    tracing::info!(elapsed = ?started.elapsed(), "drained");
}

/// The job store `queue_config.job_store` names.
async fn build_job_store(
    settings: &Settings,
    options: &ServerOptions,
) -> Result<Arc<dyn JobStore>, ServerError> {
    let app = &settings.app_settings;
    match app.queue_config.job_store {
        JobStoreKind::Dynamodb => dynamodb_job_store(settings, options).await,
        JobStoreKind::Memory => Ok(Arc::new(MemoryJobStore::new(
            app.server_config.max_jobs,
            app.server_config.job_ttl_seconds as f64,
        ))),
    }
}

/// The DynamoDB job store, its table created if missing.
#[cfg(feature = "dynamodb")]
async fn dynamodb_job_store(
    settings: &Settings,
    options: &ServerOptions,
) -> Result<Arc<dyn JobStore>, ServerError> {
    let app = &settings.app_settings;
    let ttl = app.server_config.job_ttl_seconds as f64;
    let aws = match &options.aws_config {
        Some(config) => config.clone(),
        None => aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await,
    };
    let table = &app.queue_config.job_table;
    let store = crate::async_jobs::store::DynamoJobStore::connect(
        &aws,
        table,
        ttl,
        app.server_config.async_timeout_seconds + ttl,
    )
    .await
    .map_err(|source| ServerError::JobStore {
        table: table.clone(),
        source,
    })?;
    tracing::info!(table = %table, "job records in DynamoDB");
    Ok(Arc::new(store))
}

/// Without the `dynamodb` feature: a clear start-up error.
#[cfg(not(feature = "dynamodb"))]
async fn dynamodb_job_store(
    _settings: &Settings,
    _options: &ServerOptions,
) -> Result<Arc<dyn JobStore>, ServerError> {
    Err(StartupError::config(
        "app_settings.queue_config.job_store: 'dynamodb' needs the DynamoDB job store, which this binary was built without: enable the `dynamodb` feature of the modalkit crate",
    )
    .into())
}

fn join_batchers<P: InferencePipeline>(state: &AppState<P>) -> impl Future<Output = ()> + use<P> {
    let batchers: Vec<Arc<Batcher<P>>> = state.models.values().cloned().collect();
    async move {
        let _ = tokio::task::spawn_blocking(move || batchers.iter().for_each(|b| b.join())).await;
    }
}

#[cfg(unix)]
async fn terminate_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        }
        _ => {
            tracing::error!("cannot listen for SIGTERM/SIGINT");
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(not(unix))]
async fn terminate_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(unix)]
async fn reload_on_sighup<P: InferencePipeline>(state: Arc<AppState<P>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP; volume reloads only on the timer");
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading volumes");
        for batcher in state.models.values() {
            batcher.request_reload();
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup<P: InferencePipeline>(_state: Arc<AppState<P>>) {}
