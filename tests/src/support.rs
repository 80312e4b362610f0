//! Starting real servers for tests and talking to them. Setup failures
//! panic with a message: this is test support.
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use modalkit_core::settings::{
    AppSettings, AuthConfig, BatchConfig, BuildConfig, ConfigSources, DeploymentConfig,
    ModelSettings, QueueConfig, ServerConfig,
};
use modalkit_core::{InferencePipeline, Settings};
use modalkit_queue::{InMemoryQueue, QueueBackend};
use modalkit_server::{AppState, Server, ServerOptions, Stopped};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::pipeline::EchoPipeline;

/// A yaml config for one echo model named `model`, with `extra` lines
/// appended under `app_settings` (indented by the caller).
/// Unless `app_extra` sets a `queue_config`, results go to the in-memory
/// backend (modalkit's default, `sqs`, is for tests that ask for it).
pub fn config_yaml(model: &str, app_extra: &str) -> String {
    let queue = if app_extra.contains("queue_config") {
        ""
    } else {
        "  queue_config: {backend: memory}\n"
    };
    format!(
        "app_settings:\n  app_prefix: e2e\n{queue}{app_extra}\nmodel_settings:\n  model_entries:\n    {model}: {{}}\n"
    )
}

/// Typed settings for echo models named `models`: app prefix `e2e`, results
/// to the in-memory backend (modalkit's default, `sqs`, is for tests that
/// ask for it), every other field at its default; adjust the fields before
/// starting a server. Tests of the yaml loader itself use
/// [`settings_from_yaml`].
pub fn echo_settings(models: &[&str]) -> Settings {
    Settings {
        app_settings: AppSettings {
            app_prefix: "e2e".to_owned(),
            auth_config: AuthConfig::default(),
            build_config: BuildConfig::default(),
            deployment_config: DeploymentConfig::default(),
            batch_config: BatchConfig::default(),
            queue_config: QueueConfig {
                backend: "memory".to_owned(),
                ..QueueConfig::default()
            },
            server_config: ServerConfig::default(),
        },
        model_settings: ModelSettings {
            model_entries: models
                .iter()
                .map(|name| ((*name).to_owned(), Value::Object(Default::default())))
                .collect(),
            ..ModelSettings::default()
        },
    }
}

/// [`echo_settings`] for one model, adjusted by `adjust`.
pub fn echo_settings_with(model: &str, adjust: impl FnOnce(&mut AppSettings)) -> Settings {
    let mut settings = echo_settings(&[model]);
    adjust(&mut settings.app_settings);
    settings
}

/// Loads settings from yaml text (through a real file).
pub fn settings_from_yaml(yaml: &str) -> Settings {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("modalkit.yaml");
    std::fs::write(&path, yaml).expect("write config");
    Settings::load(&ConfigSources::files(vec![path])).expect("valid test config")
}

/// A server running in this process on 127.0.0.1 and a free port.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// The in-memory queue results go to.
    pub queue: Arc<InMemoryQueue>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Stopped>>,
}

impl TestServer {
    /// Starts an echo server with these settings (port forced to 0);
    /// results go to [`TestServer::queue`].
    pub async fn start(settings: Settings) -> TestServer {
        Self::builder(settings).start().await
    }

    /// A server of the echo pipeline with these settings, to adjust before
    /// [`TestServerBuilder::start`].
    pub fn builder(settings: Settings) -> TestServerBuilder<EchoPipeline> {
        TestServerBuilder {
            settings,
            options: ServerOptions::default(),
            routes: axum::Router::new(),
        }
    }
}

/// What a [`TestServer`] is started with: settings, the pipeline, options
/// and extra routes.
pub struct TestServerBuilder<P: InferencePipeline> {
    settings: Settings,
    options: ServerOptions,
    routes: axum::Router<Arc<AppState<P>>>,
}

impl<P: InferencePipeline> TestServerBuilder<P> {
    /// Serves pipeline `Q` instead (extra routes set so far are dropped:
    /// they were for the other pipeline).
    pub fn pipeline<Q: InferencePipeline>(self) -> TestServerBuilder<Q> {
        TestServerBuilder {
            settings: self.settings,
            options: self.options,
            routes: axum::Router::new(),
        }
    }

    /// Server options; when they name no backend and the config's is
    /// `memory`, results still go to [`TestServer::queue`].
    pub fn options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// Extra routes (e.g. the OpenAI ones).
    pub fn routes(mut self, routes: axum::Router<Arc<AppState<P>>>) -> Self {
        self.routes = routes;
        self
    }

    /// Builds the server and serves it on 127.0.0.1 and a free port.
    pub async fn start(self) -> TestServer {
        let TestServerBuilder {
            mut settings,
            mut options,
            routes,
        } = self;
        settings.app_settings.server_config.host = "127.0.0.1".into();
        settings.app_settings.server_config.port = 0;
        let queue = Arc::new(InMemoryQueue::new(100_000));
        if options.queue_backend.is_none() && settings.app_settings.queue_config.backend == "memory"
        {
            options.queue_backend = Some(Arc::clone(&queue) as Arc<dyn QueueBackend>);
        }
        let server = Server::<P>::build(settings, options)
            .await
            .expect("server builds")
            .with_routes(routes);
        let listener = server.bind().await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            server
                .run(listener, async move {
                    let _ = stopped.await;
                })
                .await
                .expect("server runs")
        });
        TestServer {
            base_url: format!("http://{address}"),
            queue,
            stop: Some(stop),
            handle: Some(handle),
        }
    }
}

impl TestServer {
    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Requests a graceful shutdown and waits for it.
    pub async fn shutdown(mut self) -> Stopped {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.handle.take() {
            Some(handle) => handle.await.expect("server task"),
            None => Stopped::Clean,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A server binary running as its own process.
pub struct ServerProcess {
    /// The child.
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// Its captured log file.
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts `binary` with `config` on a free port and waits until `/health`
    /// answers. `env` adds variables.
    pub fn spawn(
        binary: &Path,
        config: &Path,
        env: &[(&str, String)],
        log: PathBuf,
    ) -> ServerProcess {
        let port = free_port();
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(config)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdout(Stdio::from(log_file.try_clone().expect("log clone")))
            .stderr(Stdio::from(log_file))
            .env("RUST_LOG", "info");
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn server");
        let process = ServerProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            log,
        };
        process.wait_until_up(Duration::from_secs(60));
        process
    }

    fn wait_until_up(&self, limit: Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if std::net::TcpStream::connect(self.base_url.trim_start_matches("http://")).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "server did not start; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Sends a signal (`TERM`, `HUP`, `KILL`) with the `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit (at most `limit`) and returns its code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        panic!(
            "server did not exit within {limit:?}; log:\n{}",
            self.log_text()
        );
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A plain HTTP client with a generous timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// GETs a URL and returns its body as JSON.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client
        .get(url)
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("JSON body")
}

/// Polls `/ready` until it answers 200 (warm-up done); false if `limit`
/// passes first.
pub async fn wait_until_ready(client: &reqwest::Client, base_url: &str, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        let ready = client.get(format!("{base_url}/ready")).send().await;
        if ready.is_ok_and(|response| response.status() == 200) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Polls `/ready` until it answers 503 (returning its body) or stops
/// answering (`None`), for at most `limit`.
pub async fn wait_until_not_ready(
    client: &reqwest::Client,
    base_url: &str,
    limit: Duration,
) -> Option<Value> {
    let started = Instant::now();
    while started.elapsed() < limit {
        match client.get(format!("{base_url}/ready")).send().await {
            Ok(response) if response.status() == 503 => return response.json().await.ok(),
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(_) => return None,
        }
    }
    None
}

/// The `echo` field of each JSON body (results of the echo pipeline).
pub fn echoes<'a>(
    bodies: impl IntoIterator<Item = &'a String>,
) -> std::collections::BTreeSet<String> {
    bodies
        .into_iter()
        .map(|body| {
            let value: Value = serde_json::from_str(body).expect("JSON result");
            value["echo"].as_str().expect("an echo field").to_owned()
        })
        .collect()
}

/// POSTs JSON and returns (status, body as JSON).
pub async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// The Python with the test clients (modalkit 0.2.0, openai) that
/// `scripts/modalkit-oracle.sh` installs: `MODALKIT_TEST_ORACLE_PYTHON`, or
/// `.venv-modalkit` in the workspace. Panics with how to install it.
pub fn client_python() -> PathBuf {
    let python = std::env::var("MODALKIT_TEST_ORACLE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| crate::model::workspace_root().join(".venv-modalkit/bin/python"));
    assert!(
        python.is_file(),
        "the Python test clients are not installed: run `scripts/modalkit-oracle.sh install` (scripts/test.sh does); looked for {}",
        python.display()
    );
    python
}

/// Runs `tests/oracle/SCRIPT` with the test clients' Python ([`client_python`])
/// and `args`, off the async runtime, and parses what it prints as JSON.
/// Panics with the script's stderr if it fails.
pub async fn run_client(script: &str, args: Vec<String>) -> Value {
    let python = client_python();
    let path = crate::model::workspace_root()
        .join("tests/oracle")
        .join(script);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(path)
            .args(args)
            .output()
            .expect("the client's Python runs")
    })
    .await
    .expect("the client ran");
    assert!(
        output.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the client prints JSON")
}

/// Keeps `text` for the CI log: scripts/test.sh prints every file of
/// target/test-reports/ after the tests.
pub fn write_report(name: &str, text: &str) {
    let reports = crate::model::workspace_root().join("target/test-reports");
    std::fs::create_dir_all(&reports).expect("reports folder");
    std::fs::write(reports.join(name), format!("{}\n", text.trim_end())).expect("report written");
}

/// The value of the series `series` (name and labels, as scraped) in a
/// Prometheus scrape; 0 when absent.
pub fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The server at `base_url`'s `/metrics` text.
pub async fn scrape(base_url: &str) -> String {
    client()
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics text")
}

/// Builds `bin` of the examples package as the README does (`cargo build
/// -p modalkit-examples --bin BIN`, not with the features the tests unify)
/// and returns where Cargo put it.
pub fn build_example(bin: &str) -> PathBuf {
    let output = Command::new(env!("CARGO"))
        .args(["build", "--locked", "-p", "modalkit-examples", "--bin", bin])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(crate::model::workspace_root())
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo build -p modalkit-examples --bin {bin} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["target"]["name"] == bin)
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .expect("cargo names the executable it built")
}
