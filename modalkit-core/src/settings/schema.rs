//! The settings structs: modalkit's schema, field for field, plus
//! `app_settings.server_config` and the async-job fields of `queue_config`.
//! Unknown keys load with a warning (see `lax.rs`), as modalkit ignores
//! them; `null` for a field means its default.

use std::collections::BTreeMap;

use garde::Validate;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How the app is built, deployed, batched and served.
    #[garde(dive)]
    pub app_settings: AppSettings,
    /// Which models are served and where their files are.
    #[garde(dive)]
    pub model_settings: ModelSettings,
}

/// `app_settings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// Prefix of the app's name; the name is this plus `MODALKIT_APP_POSTFIX`.
    #[garde(length(min = 1, max = 64), pattern(r"^[A-Za-z0-9][A-Za-z0-9._-]*$"))]
    pub app_prefix: String,
    /// API-key authentication.
    #[serde(default)]
    #[garde(dive)]
    pub auth_config: AuthConfig,
    /// The container image.
    #[serde(default)]
    #[garde(skip)]
    pub build_config: BuildConfig,
    /// Modal deployment settings.
    #[serde(default)]
    #[garde(dive)]
    pub deployment_config: DeploymentConfig,
    /// Dynamic batching.
    #[serde(default)]
    #[garde(dive)]
    pub batch_config: BatchConfig,
    /// Where async results go.
    #[serde(default)]
    #[garde(dive)]
    pub queue_config: QueueConfig,
    /// What the Rust server needs beyond modalkit's schema.
    #[serde(default)]
    #[garde(dive)]
    pub server_config: ServerConfig,
}

/// `app_settings.auth_config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The API key clients must send; none: no auth. A key under 8
    /// characters loads with a warning (modalkit accepts it).
    #[garde(inner(length(min = 1)))]
    pub api_key: Option<String>,
    /// An AWS SSM parameter holding the API key.
    #[garde(inner(length(min = 1)))]
    pub ssm_key: Option<String>,
    /// The header carrying the key.
    #[garde(length(min = 1), pattern(r"^[A-Za-z0-9-]+$"))]
    pub auth_header: String,
}

/// The defaults of every field (the one place they are written: a field
/// left out of the yaml takes its value from here).
impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            api_key: None,
            ssm_key: None,
            auth_header: "x-api-key".to_owned(),
        }
    }
}

/// `app_settings.build_config`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    /// A registry image to run instead of building the Dockerfile.
    #[serde(default)]
    pub image: Option<String>,
    /// The image's tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// Working directory in the container.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Environment variables set in the image.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Extra shell commands run while building the image (string or list).
    #[serde(default, deserialize_with = "string_or_list")]
    pub extra_run_commands: Vec<String>,
}

/// `app_settings.deployment_config`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Modal region(s).
    #[serde(default)]
    #[garde(skip)]
    pub region: Option<String>,
    /// GPU type(s), e.g. `"T4"` or `["H100", "A100"]`; empty: CPU.
    #[serde(default, deserialize_with = "string_or_list")]
    #[garde(skip)]
    pub gpu: Vec<String>,
    /// Memory request in MiB.
    #[serde(default)]
    #[garde(inner(range(min = 1)))]
    pub memory: Option<u32>,
    /// CPU request in cores.
    #[serde(default)]
    #[garde(inner(range(min = 0.125)))]
    pub cpu: Option<f64>,
    /// Mount path -> Modal volume name.
    #[serde(default)]
    #[garde(skip)]
    pub volumes: BTreeMap<String, String>,
    /// Reload volumes every this many seconds; none or <= 0: never.
    #[serde(default)]
    #[garde(skip)]
    pub volume_reload_interval_seconds: Option<i64>,
    /// Most containers at once.
    #[serde(default)]
    #[garde(inner(range(min = 1)))]
    pub concurrency_limit: Option<u32>,
    /// Retries of a failed input.
    #[serde(default)]
    #[garde(inner(range(max = 10)))]
    pub retries: Option<u32>,
    /// Modal secrets to attach.
    #[serde(default)]
    #[garde(skip)]
    pub secrets: Vec<String>,
    /// Local files or folders copied into the image.
    #[serde(default)]
    #[garde(dive)]
    pub mounts: Vec<Mount>,
    /// Seconds an idle container stays up.
    #[serde(default)]
    #[garde(inner(range(min = 2)))]
    pub container_idle_timeout: Option<u32>,
    /// Concurrent inputs per container.
    #[serde(default)]
    #[garde(inner(range(min = 1)))]
    pub allow_concurrent_inputs: Option<u32>,
    /// Concurrent inputs for the HTTP handler.
    #[serde(default)]
    #[garde(inner(range(min = 1)))]
    pub allow_concurrent_inputs_handler: Option<u32>,
    /// Require Modal proxy auth.
    #[serde(default)]
    #[garde(skip)]
    pub secure: bool,
    /// Cloud buckets mounted in the container.
    #[serde(default)]
    #[garde(dive)]
    pub cloud_bucket_mounts: Vec<CloudBucketMount>,
}

/// One of `deployment_config.mounts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Path on the building machine.
    #[garde(length(min = 1))]
    pub local_path: String,
    /// Path in the container.
    #[garde(length(min = 1))]
    pub remote_path: String,
    /// `file` or `dir`.
    #[serde(rename = "type", default)]
    #[garde(skip)]
    pub kind: MountKind,
}

/// Where async job records live (`queue_config.job_store`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStoreKind {
    /// In this process: jobs are visible to the container that took them.
    #[default]
    Memory,
    /// One DynamoDB table shared by every container (`dynamodb` feature).
    Dynamodb,
}

impl JobStoreKind {
    /// The name the yaml uses.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStoreKind::Memory => "memory",
            JobStoreKind::Dynamodb => "dynamodb",
        }
    }
}

/// Whether a mount is a file or a folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// One file.
    #[default]
    File,
    /// A folder.
    Dir,
}

/// One of `deployment_config.cloud_bucket_mounts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct CloudBucketMount {
    /// Where it is mounted.
    #[garde(length(min = 1))]
    pub mount_point: String,
    /// The bucket.
    #[garde(length(min = 1))]
    pub bucket_name: String,
    /// S3-compatible endpoint (R2, GCS).
    #[serde(default)]
    #[garde(skip)]
    pub bucket_endpoint_url: Option<String>,
    /// Only this prefix of the bucket.
    #[serde(default)]
    #[garde(skip)]
    pub key_prefix: Option<String>,
    /// Modal secret with the credentials.
    #[serde(default)]
    #[garde(skip)]
    pub secret: Option<String>,
    /// Role to assume with OIDC.
    #[serde(default)]
    #[garde(skip)]
    pub oidc_auth_role_arn: Option<String>,
    /// Mount read-only.
    #[serde(default)]
    #[garde(skip)]
    pub read_only: bool,
    /// Requester pays.
    #[serde(default)]
    #[garde(skip)]
    pub requester_pays: bool,
}

/// `app_settings.batch_config`: as Modal's `@modal.batched`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most items in one batch (1..=1000). Left out of a `batch_config`
    /// that is given: 1, as in modalkit.
    #[serde(default = "default_max_batch_size")]
    #[garde(range(min = 1, max = 1000))]
    pub max_batch_size: usize,
    /// Longest an item waits for its batch to fill, from its arrival (<
    /// 600000). Left out of a `batch_config` that is given: 0, as in
    /// modalkit.
    #[serde(default = "default_wait_ms")]
    #[garde(range(max = 599_999))]
    pub wait_ms: u64,
    /// Load-aware filling (modalkit-rs only): after a batch, the next one
    /// waits for that batch's clients to resubmit (as many items as were
    /// queued when it ended plus its size), at most this long from its end
    /// and at most an eighth of its compute time. A lone client never
    /// waits. 0: off.
    #[serde(default = "default_adaptive_wait_ms")]
    #[garde(range(min = 0.0, max = 1000.0))]
    pub adaptive_wait_ms: f64,
    /// Most tokens in one batch (modalkit-rs only), as the pipeline counts
    /// an item's cost (`InferencePipeline::cost`: tokens for a text model,
    /// 1 otherwise). A batch takes the oldest queued item, then the
    /// cheapest ones that fit: its compute time is bounded and a short
    /// request joins the next batch instead of queueing behind every long
    /// one. None: batches in arrival order, bounded by `max_batch_size`
    /// only.
    #[serde(default)]
    #[garde(inner(range(min = 1, max = 100_000_000)))]
    pub max_batch_tokens: Option<usize>,
}

/// modalkit's field defaults, for a `batch_config` given in part.
fn default_max_batch_size() -> usize {
    1
}
fn default_wait_ms() -> u64 {
    0
}
fn default_adaptive_wait_ms() -> f64 {
    1.0
}

/// Without any `batch_config` (modalkit requires one), the server batches.
const UNCONFIGURED_MAX_BATCH_SIZE: usize = 32;
const UNCONFIGURED_WAIT_MS: u64 = 5;

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch_size: UNCONFIGURED_MAX_BATCH_SIZE,
            wait_ms: UNCONFIGURED_WAIT_MS,
            adaptive_wait_ms: default_adaptive_wait_ms(),
            max_batch_tokens: None,
        }
    }
}

/// `app_settings.queue_config`: where async results are delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// A registered backend name: `memory`, `sqs` or a custom one.
    #[garde(length(min = 1))]
    pub backend: String,
    /// The broker's address, for backends that take one.
    #[garde(skip)]
    pub broker_url: Option<String>,
    /// Attempts per result before it is dead-lettered.
    #[garde(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt, with jitter.
    #[garde(range(min = 1, max = 60_000))]
    pub initial_backoff_ms: u64,
    /// Longest delay between two attempts.
    #[garde(range(min = 1, max = 600_000))]
    pub max_backoff_ms: u64,
    /// Longest time one result may spend in delivery before it is dead-lettered.
    #[garde(range(min = 1, max = 86_400))]
    pub max_delivery_seconds: u64,
    /// JSON-lines file of results that could not be delivered.
    #[garde(length(min = 1))]
    pub dead_letter_path: String,
    /// An SQS queue to consume `AsyncInput` messages from; none: no consumer.
    #[garde(inner(length(min = 1, max = 80)))]
    pub input_queue: Option<String>,
    /// The model consumed messages run on (optional when one model is served).
    #[garde(skip)]
    pub input_model: Option<String>,
    /// How long a received message stays hidden; extended while it is processed.
    #[garde(range(min = 2, max = 43_200))]
    pub input_visibility_timeout_seconds: u32,
    /// Messages per receive call (1..=10).
    #[garde(range(min = 1, max = 10))]
    pub input_max_messages: u32,
    /// Long-poll wait per receive call (0..=20 s).
    #[garde(range(max = 20))]
    pub input_wait_seconds: u32,
    /// Most consumed messages being processed at once by this process.
    #[garde(range(min = 1, max = 100_000))]
    pub input_max_in_flight: usize,
    /// An SQS queue for dead-letter records (they outlive the container);
    /// the file at `dead_letter_path` is the fallback.
    #[garde(inner(length(min = 1, max = 80)))]
    pub dead_letter_queue: Option<String>,
    /// Where async job records live: `memory` (this process) or `dynamodb`
    /// (one table shared by every container).
    #[garde(skip)]
    pub job_store: JobStoreKind,
    /// The DynamoDB table of the `dynamodb` job store (created if missing).
    #[garde(length(min = 3, max = 255))]
    pub job_table: String,
    /// Signing secret of webhook deliveries (`whsec_<base64>`, Standard
    /// Webhooks); none: unsigned.
    #[garde(inner(length(min = 1)))]
    pub webhook_secret: Option<String>,
    /// Hosts (`host` or `host:port`) a success/failure "queue" URL may name;
    /// `*` allows any. Empty (default): no webhooks.
    #[garde(skip)]
    pub webhook_allowed_hosts: Vec<String>,
    /// Timeout of one webhook POST.
    #[garde(range(min = 0.1, max = 600.0))]
    pub webhook_timeout_seconds: f64,
}

/// The defaults of every field (the one place they are written: a field
/// left out of the yaml takes its value from here).
impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            // modalkit's default. The backend is built on the first send,
            // so a server whose jobs name no queue never needs SQS.
            backend: "sqs".to_owned(),
            broker_url: None,
            max_attempts: 8,
            initial_backoff_ms: 100,
            max_backoff_ms: 5_000,
            max_delivery_seconds: 60,
            dead_letter_path: "modalkit-dead-letters.jsonl".to_owned(),
            input_queue: None,
            input_model: None,
            input_visibility_timeout_seconds: 30,
            input_max_messages: 10,
            input_wait_seconds: 20,
            input_max_in_flight: 64,
            dead_letter_queue: None,
            job_store: JobStoreKind::default(),
            job_table: "modalkit-jobs".to_owned(),
            webhook_secret: None,
            webhook_allowed_hosts: Vec::new(),
            webhook_timeout_seconds: 10.0,
        }
    }
}

/// `app_settings.server_config`: what the Rust server needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind.
    #[garde(length(min = 1))]
    pub host: String,
    /// Port to bind (0: any free port).
    #[garde(skip)]
    pub port: u16,
    /// Largest request body, in bytes.
    #[garde(range(min = 64, max = 1_073_741_824))]
    pub max_body_bytes: usize,
    /// Most messages in one `/predict_batch` request.
    #[garde(range(min = 1, max = 100_000))]
    pub max_batch_request_items: usize,
    /// Deadline of a sync request, in seconds.
    #[garde(range(min = 0.001, max = 86_400.0))]
    pub request_timeout_seconds: f64,
    /// Deadline of an async job, in seconds.
    #[garde(range(min = 0.001, max = 604_800.0))]
    pub async_timeout_seconds: f64,
    /// Items queued per model before requests are refused with 503.
    #[garde(range(min = 1, max = 10_000_000))]
    pub max_queue_depth: usize,
    /// Pipeline worker threads per model, each with its own loaded pipeline.
    #[garde(range(min = 1, max = 256))]
    pub workers: usize,
    /// Longest a graceful shutdown waits for in-flight work, in seconds.
    #[garde(range(min = 0.0, max = 3_600.0))]
    pub shutdown_grace_seconds: f64,
    /// After readiness turns 503 (shutdown or device failure), keep answering
    /// at least this long before closing the listener, so load balancers
    /// see the 503 before connections are refused.
    #[garde(range(min = 0.0, max = 60.0))]
    pub unready_delay_seconds: f64,
    /// How long a finished async job's result is kept for `GET /jobs/{id}`.
    #[garde(range(min = 1, max = 604_800))]
    pub job_ttl_seconds: u64,
    /// Most jobs kept at once.
    #[garde(range(min = 1, max = 100_000_000))]
    pub max_jobs: usize,
    /// Origins allowed by CORS; empty: no CORS headers.
    #[garde(skip)]
    pub cors_allow_origins: Vec<String>,
    /// A connection must send a whole request head (request line and
    /// headers) within this many seconds of its first byte, and its first
    /// byte within this many seconds of being accepted; else it is closed.
    /// Frees what half-open (slowloris) connections hold.
    #[garde(range(min = 0.001, max = 3_600.0))]
    pub header_read_timeout_seconds: f64,
    /// A request's whole body must arrive within this many seconds of its
    /// head; else 408 and the connection is closed.
    #[garde(range(min = 0.001, max = 86_400.0))]
    pub body_read_timeout_seconds: f64,
    /// A keep-alive connection with no request for this many seconds is
    /// closed. Longer than the 60 s idle timeout of common load balancers,
    /// so the server never closes a connection a proxy is about to reuse.
    #[garde(range(min = 0.001, max = 86_400.0))]
    pub idle_timeout_seconds: f64,
    /// Most connections open at once; past it a new connection gets 503
    /// with `Retry-After` and is closed. Capped further by the process's
    /// file-descriptor limit (raised to its hard limit at start), less a
    /// reserve for the models' files and the queue clients.
    #[garde(range(min = 1, max = 10_000_000))]
    pub max_connections: usize,
}

/// The defaults of every field (the one place they are written: a field
/// left out of the yaml takes its value from here).
impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".to_owned(),
            port: 8000,
            max_body_bytes: 2 * 1024 * 1024,
            max_batch_request_items: 1_000,
            request_timeout_seconds: 60.0,
            async_timeout_seconds: 600.0,
            max_queue_depth: 1_024,
            workers: 1,
            shutdown_grace_seconds: 30.0,
            unready_delay_seconds: 0.5,
            job_ttl_seconds: 3_600,
            max_jobs: 100_000,
            cors_allow_origins: Vec::new(),
            header_read_timeout_seconds: 10.0,
            body_read_timeout_seconds: 60.0,
            idle_timeout_seconds: 75.0,
            max_connections: 4_096,
        }
    }
}

/// `model_settings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Validate)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// Folder holding the models' files.
    #[garde(skip)]
    pub local_model_repository_folder: String,
    /// Settings shared by every model.
    #[garde(skip)]
    pub common: Map<String, Value>,
    /// One entry per served model, free-form for the pipeline.
    /// Empty loads with a warning (modalkit accepts it); `serve` refuses it.
    #[garde(custom(model_names_are_valid))]
    pub model_entries: BTreeMap<String, Value>,
}

/// The defaults of every field (the one place they are written).
impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            local_model_repository_folder: "./models".to_owned(),
            common: Map::new(),
            model_entries: BTreeMap::new(),
        }
    }
}

fn model_names_are_valid(entries: &BTreeMap<String, Value>, _: &()) -> garde::Result {
    for name in entries.keys() {
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(garde::Error::new(format!(
                "model name '{name}' must be non-empty and use only letters, digits, '-', '_' and '.'"
            )));
        }
    }
    Ok(())
}

/// Accepts `"cmd"` or `["cmd", ...]` (and null) as a list of strings.
fn string_or_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        Nothing(()),
    }
    match OneOrMany::deserialize(deserializer) {
        Ok(OneOrMany::One(s)) => Ok(vec![s]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Ok(OneOrMany::Nothing(())) => Ok(Vec::new()),
        Err(_) => Err(serde::de::Error::custom(
            "expected a string or a list of strings",
        )),
    }
}
