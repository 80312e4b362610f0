//! A running server: builds one batcher per model, the result delivery and
//! the router, serves until SIGTERM/SIGINT (or a fatal device error), then
//! drains: `/ready` turns 503, intake stops, in-flight requests are
//! answered and accepted async jobs finish and are delivered within
//! `shutdown_grace`. SIGHUP runs the pipelines' `on_volume_reload`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use modalkit_core::{InferencePipeline, Settings, StartupError};
use modalkit_queue::{BackendRegistry, QueueBackend};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::async_jobs::store::{JobStore, StoreError};
use crate::async_jobs::{AsyncJobs, JobIntake};
use crate::auth::ApiKey;
use crate::aws::{Aws, DurableIntake};
use crate::connections::{self, ConnectionLimits};
use crate::lifecycle::{drain, reload_on_sighup, wait_for_stop, warm_up};
use crate::startup;
use crate::state::{AppState, Limits, StartupTimes};
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
    /// A setting needs a Cargo feature this binary was built without.
    #[error(
        "{field}: '{value}' needs the `{feature}` feature, which this binary was built without: enable it on the modalkit-rs crate (the Modal deploy derives it from the yaml)"
    )]
    NotCompiled {
        /// The setting's dotted path.
        field: &'static str,
        /// Its value.
        value: String,
        /// The feature.
        feature: &'static str,
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

/// A server ready to run.
pub struct Server<P: InferencePipeline> {
    state: Arc<AppState<P>>,
    extra_routes: Option<axum::Router<Arc<AppState<P>>>>,
    settings: Settings,
    api_key: Option<ApiKey>,
    durable: Option<DurableIntake>,
    warmups: Vec<(String, Vec<P::Input>)>,
}

impl<P: InferencePipeline> Server<P> {
    /// Loads every model (one batcher each), result delivery, the job store,
    /// the API key and the durable intake the settings ask for.
    pub async fn build(settings: Settings, options: ServerOptions) -> Result<Self, ServerError> {
        // The recorder first: metric handles made before it is installed
        // (the batchers' are made here) would record nowhere.
        crate::telemetry::prometheus();
        let aws = Aws::new(&options, &settings.app_settings.queue_config);
        let delivery = Arc::new(startup::delivery(&settings, &options, &aws).await?);
        let job_store = startup::job_store(&settings, &options, &aws).await?;
        let api_key = startup::api_key(&settings, &options, &aws).await?;
        let startup::Models {
            batchers: models,
            load_seconds,
            warmups,
        } = startup::models::<P>(&settings).await?;
        let model_names: Vec<String> = models.keys().cloned().collect();
        let durable = startup::durable_intake(&settings, &model_names, &aws).await?;
        let intake = durable
            .as_ref()
            .map_or(JobIntake::Embedded, DurableIntake::job_intake);
        let server_config = &settings.app_settings.server_config;
        let async_timeout = startup::async_timeout(&settings);
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
        let auth_header = api_key
            .as_ref()
            .map(|_| settings.app_settings.auth_config.auth_header.as_str());
        let openapi = crate::openapi::document::<P>(&app_name, &model_names, auth_header);
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
            startup: std::sync::Mutex::new(StartupTimes {
                load_seconds,
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
            durable,
            warmups,
        })
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
        let service = self.service();
        let state = Arc::clone(&self.state);
        let server_config = &self.settings.app_settings.server_config;
        let grace = Duration::from_secs_f64(server_config.shutdown_grace_seconds);
        let unready_delay = Duration::from_secs_f64(server_config.unready_delay_seconds);

        // With nothing to warm up, ready before the first request can ask.
        let warmups = self.warmups;
        if warmups.is_empty() {
            state.warmed_up(0.0);
        }
        let limits = ConnectionLimits::new(server_config);
        let (stop_http, mut http_stopped) = watch::channel(false);
        let http = tokio::spawn(async move {
            connections::serve(listener, service, limits, async move {
                let _ = http_stopped.wait_for(|stop| *stop).await;
            })
            .await;
        });

        let consumer = match &self.durable {
            Some(durable) => Some(durable.start(Arc::clone(&state.jobs)).await?),
            None => None,
        };
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
        // Responses still open (a stream being generated) finish within
        // the grace period counted from the drain's start, and get at least
        // 5 s past the drain.
        let http_deadline =
            (unready_since + grace).max(tokio::time::Instant::now() + Duration::from_secs(5));
        if tokio::time::timeout_at(http_deadline, http).await.is_err() {
            tracing::warn!("open connections did not close within the grace period");
        }
        let tracer = state.tracer.clone();
        let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
        tracing::info!(?stopped, "stopped");
        Ok(stopped)
    }
}
