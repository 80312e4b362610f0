//! The command line of a server binary: `serve` (default), `check` and
//! `openapi`, with `--config`, `--host` and `--port` (each also read from
//! its environment variable).

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use modalkit_core::settings::{ConfigSources, Loaded, redacted};
use modalkit_core::{InferencePipeline, Settings, StartupError};

use crate::features::{FeatureNeed, compiled_features, feature_names, needed_features};
use crate::server::{Server, ServerOptions};

/// Exit code for an invalid configuration or a failed start-up.
pub const EXIT_STARTUP_FAILED: u8 = 1;

/// A modalkit-rs server.
#[derive(Debug, Parser)]
#[command(version, about = "A modalkit-compatible inference server")]
pub(crate) struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Config file(s), comma-separated; later ones win.
    #[arg(long, env = "MODALKIT_CONFIG", global = true)]
    pub config: Option<String>,
    /// Address to bind (overrides server_config.host).
    #[arg(long, env = "MODALKIT_HOST", global = true)]
    pub host: Option<String>,
    /// Port to bind (overrides server_config.port).
    #[arg(long, env = "MODALKIT_PORT", global = true)]
    pub port: Option<u16>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Load the models and serve HTTP (the default).
    Serve,
    /// Validate the config and print it merged, as JSON, secrets redacted;
    /// warnings (keys modalkit would ignore, a short API key, no models) go
    /// to stderr. A setting that needs a Cargo feature this binary was built
    /// without is an error (a warning for modalkit's default `sqs` backend
    /// when the config does not name it).
    Check {
        /// Fail (exit 1) on warnings too.
        #[arg(long)]
        strict: bool,
        /// Print, instead of the config, the Cargo features it needs and
        /// which of them this binary has (JSON).
        #[arg(long)]
        features: bool,
    },
    /// Print the OpenAPI document.
    Openapi,
}

impl Cli {
    /// Loads settings and their warnings from the sources this command line
    /// names.
    pub(crate) fn settings_with_warnings(&self) -> Result<Loaded, StartupError> {
        let mut loaded =
            Settings::load_with_warnings(&ConfigSources::from_process(self.config.as_deref()))?;
        let settings = &mut loaded.settings;
        if let Some(host) = &self.host {
            settings.app_settings.server_config.host = host.clone();
        }
        if let Some(port) = self.port {
            settings.app_settings.server_config.port = port;
        }
        Ok(loaded)
    }
}

/// Runs the command line for pipeline `P` with default options.
pub fn run<P: InferencePipeline>() -> ExitCode {
    run_with::<P>(ServerOptions::default())
}

/// Runs the command line for pipeline `P` with `options`.
pub fn run_with<P: InferencePipeline>(options: ServerOptions) -> ExitCode {
    run_with_routes::<P>(options, axum::Router::new)
}

/// Runs the command line for pipeline `P` with `options`, serving the
/// routes `routes` makes besides modalkit's (see [`crate::openai::run`]).
pub fn run_with_routes<P: InferencePipeline>(
    options: ServerOptions,
    routes: fn() -> axum::Router<std::sync::Arc<crate::state::AppState<P>>>,
) -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init_tracing();
    let Loaded {
        settings,
        warnings,
        origins,
    } = match cli.settings_with_warnings() {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_STARTUP_FAILED);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check { strict, features } => {
            check(&settings, &origins, warnings, strict, features)
        }
        Command::Openapi => {
            let names: Vec<String> = settings
                .model_settings
                .model_entries
                .keys()
                .cloned()
                .collect();
            // The key itself may live in SSM: what the settings name decides.
            let auth = &settings.app_settings.auth_config;
            let keyed = !settings.app_settings.deployment_config.secure
                && (auth.api_key.is_some() || auth.ssm_key.is_some());
            let doc = crate::openapi::document::<P>(
                &modalkit_core::settings::app_name_from_env(&settings),
                &names,
                keyed.then_some(auth.auth_header.as_str()),
            );
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Command::Serve => {
            for warning in &warnings {
                tracing::warn!("config: {warning}");
            }
            serve::<P>(settings, options, routes)
        }
    }
}

/// `check`: the merged config (or, with `features`, what it needs compiled
/// in), its warnings, and an error for each setting this binary cannot do.
fn check(
    settings: &Settings,
    origins: &BTreeMap<String, String>,
    mut warnings: Vec<String>,
    strict: bool,
    features: bool,
) -> ExitCode {
    let needs = needed_features(settings);
    if features {
        let report = serde_json::json!({
            "needed": feature_names(&needs),
            "compiled": compiled_features(),
            "settings": needs,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let mut errors = Vec::new();
    for need in needs.iter().filter(|need| !need.compiled) {
        let FeatureNeed {
            field,
            value,
            feature,
            ..
        } = need;
        match origins.get(*field) {
            Some(origin) => errors.push(format!(
                "{field}: '{value}' ({origin}) needs the `{feature}` feature of the modalkit crate, which this binary was built without"
            )),
            None => warnings.push(format!(
                "{field}: '{value}' (modalkit's default) needs the `{feature}` feature of the modalkit crate, which this binary was built without: async jobs that name a queue will be refused; set queue_config.backend (e.g. memory) or build with `{feature}`"
            )),
        }
    }
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    for error in &errors {
        eprintln!("error: {error}");
    }
    if !errors.is_empty() {
        return ExitCode::from(EXIT_STARTUP_FAILED);
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&redacted(settings)).unwrap_or_default()
    );
    if strict && !warnings.is_empty() {
        eprintln!("error: {} warning(s) and --strict", warnings.len());
        return ExitCode::from(EXIT_STARTUP_FAILED);
    }
    ExitCode::SUCCESS
}

fn serve<P: InferencePipeline>(
    settings: Settings,
    options: ServerOptions,
    routes: fn() -> axum::Router<std::sync::Arc<crate::state::AppState<P>>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_STARTUP_FAILED);
        }
    };
    let result = runtime.block_on(async {
        let server = Server::<P>::build(settings, options)
            .await?
            .with_routes(routes());
        let listener = server.bind().await?;
        server.run(listener, std::future::pending()).await
    });
    match result {
        Ok(stopped) => ExitCode::from(stopped.exit_code()),
        Err(err) => {
            tracing::error!(%err, "start-up failed");
            eprintln!("error: {err}");
            ExitCode::from(EXIT_STARTUP_FAILED)
        }
    }
}
