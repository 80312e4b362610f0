//! Settings: sources and their order, env nesting, modalkit's full schema,
//! and bad configs failing with the field path and where the value came from.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use modalkit_core::StartupError;
use modalkit_core::settings::{ConfigSources, MountKind, Settings, app_name, redacted};
use tempfile::TempDir;

const MINIMAL: &str =
    "app_settings:\n  app_prefix: demo\nmodel_settings:\n  model_entries:\n    translator: {}\n";

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn load(yaml: &str) -> Result<Settings, StartupError> {
    let dir = TempDir::new().unwrap();
    let file = write(&dir, "modalkit.yaml", yaml);
    Settings::load(&ConfigSources::files(vec![file]))
}

fn load_err(yaml: &str) -> String {
    match load(yaml) {
        Ok(settings) => panic!("expected an error, got {settings:?}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn minimal_yaml_gets_runnable_defaults() {
    let s = load(MINIMAL).unwrap();
    assert_eq!(s.app_settings.server_config.host, "0.0.0.0");
    assert_eq!(s.app_settings.server_config.port, 8000);
    assert_eq!(s.app_settings.auth_config.auth_header, "x-api-key");
    assert_eq!(
        s.app_settings.queue_config.backend, "sqs",
        "modalkit's default"
    );
    assert_eq!(s.app_settings.batch_config.max_batch_size, 32);
    assert_eq!(s.model_settings.local_model_repository_folder, "./models");
    assert_eq!(app_name(&s, None), "demo-dev");
    assert_eq!(app_name(&s, Some("-prod")), "demo-prod");
}

#[test]
fn later_sources_win_files_then_dotenv_then_env() {
    let dir = TempDir::new().unwrap();
    let first = write(
        &dir,
        "a.yaml",
        "app_settings:\n  app_prefix: first\n  batch_config: {max_batch_size: 4, wait_ms: 10}\n  server_config: {port: 9001, workers: 2}\nmodel_settings:\n  model_entries: {m: {}}\n",
    );
    let second = write(
        &dir,
        "b.yaml",
        "app_settings:\n  app_prefix: second\n  batch_config: {max_batch_size: 8}\n",
    );
    let dotenv = write(
        &dir,
        ".env",
        "# comment\nMODALKIT_APP_SETTINGS__BATCH_CONFIG__MAX_BATCH_SIZE=16\nexport MODALKIT_APP_SETTINGS__SERVER_CONFIG__PORT=\"9002\"\nUNRELATED=1\n",
    );
    let sources = ConfigSources::files(vec![first, second])
        .with_dotenv(dotenv)
        .with_env([
            ("MODALKIT_APP_SETTINGS__SERVER_CONFIG__PORT", "9003"),
            ("MODALKIT_CONFIG", "ignored-here.yaml"),
            ("PATH", "/bin"),
        ]);
    let s = Settings::load(&sources).unwrap();
    assert_eq!(
        s.app_settings.app_prefix, "second",
        "second file beats the first"
    );
    assert_eq!(
        s.app_settings.batch_config.wait_ms, 10,
        "unset keys keep the earlier file's value"
    );
    assert_eq!(
        s.app_settings.batch_config.max_batch_size, 16,
        ".env beats files"
    );
    assert_eq!(s.app_settings.server_config.port, 9003, "env beats .env");
    assert_eq!(s.app_settings.server_config.workers, 2);
}

#[test]
fn double_underscore_nests_into_every_section() {
    let dir = TempDir::new().unwrap();
    let file = write(&dir, "m.yaml", MINIMAL);
    let sources = ConfigSources::files(vec![file]).with_env([
        (
            "MODALKIT_APP_SETTINGS__AUTH_CONFIG__API_KEY",
            "secret-key-123",
        ),
        ("MODALKIT_APP_SETTINGS__QUEUE_CONFIG__BACKEND", "sqs"),
        ("MODALKIT_MODEL_SETTINGS__COMMON__DEVICE", "cpu"),
        (
            "MODALKIT_MODEL_SETTINGS__MODEL_ENTRIES__TRANSLATOR__PATH",
            "weights",
        ),
    ]);
    let s = Settings::load(&sources).unwrap();
    assert_eq!(
        s.app_settings.auth_config.api_key.as_deref(),
        Some("secret-key-123")
    );
    assert_eq!(s.app_settings.queue_config.backend, "sqs");
    assert_eq!(s.model_settings.common["device"], "cpu");
    assert_eq!(
        s.model_settings.model_entries["translator"]["path"],
        "weights"
    );
    assert_eq!(
        redacted(&s)["app_settings"]["auth_config"]["api_key"],
        "***"
    );
}

#[test]
fn string_or_list_fields_accept_both() {
    let one = load(&format!(
        "{MINIMAL}\n"
    )
    .replace(
        "app_prefix: demo",
        "app_prefix: demo\n  build_config: {extra_run_commands: \"pip install x\"}\n  deployment_config: {gpu: T4}",
    ))
    .unwrap();
    assert_eq!(
        one.app_settings.build_config.extra_run_commands,
        vec!["pip install x"]
    );
    assert_eq!(one.app_settings.deployment_config.gpu, vec!["T4"]);
    let many = load(&MINIMAL.replace(
        "app_prefix: demo",
        "app_prefix: demo\n  build_config: {extra_run_commands: [a, b]}\n  deployment_config: {gpu: [H100, A100]}",
    ))
    .unwrap();
    assert_eq!(
        many.app_settings.build_config.extra_run_commands,
        vec!["a", "b"]
    );
    assert_eq!(
        many.app_settings.deployment_config.gpu,
        vec!["H100", "A100"]
    );
    let err = load_err(&MINIMAL.replace(
        "app_prefix: demo",
        "app_prefix: demo\n  deployment_config: {gpu: 3}",
    ));
    assert!(err.contains("app_settings.deployment_config.gpu"), "{err}");
}

const FULL_MODALKIT_YAML: &str = r#"
app_settings:
  app_prefix: "my-translation-app"
  auth_config:
    ssm_key: "/translation/api-key"
    api_key: "dev-only-api-key"
    auth_header: "x-api-key"
  build_config:
    image: "python"
    tag: "3.11-slim"
    workdir: "/app"
    env:
      HF_HOME: /models/cache
      LOG_LEVEL: info
    extra_run_commands:
      - "apt-get update"
      - "pip install torch"
  deployment_config:
    region: "us-east"
    gpu: "A10G"
    memory: 4096
    cpu: 2.0
    volumes:
      /models: "models-volume"
    volume_reload_interval_seconds: 300
    concurrency_limit: 4
    retries: 2
    secrets: ["aws-credentials", "hf-token"]
    mounts:
      - local_path: "./config/labels.json"
        remote_path: "/app/labels.json"
        type: "file"
      - local_path: "./assets"
        remote_path: "/app/assets"
        type: "dir"
    container_idle_timeout: 120
    allow_concurrent_inputs: 8
    allow_concurrent_inputs_handler: 16
    secure: true
    cloud_bucket_mounts:
      - mount_point: "/data"
        bucket_name: "my-bucket"
        bucket_endpoint_url: "https://r2.example.com"
        key_prefix: "models/"
        secret: "r2-secret"
        oidc_auth_role_arn: "arn:aws:iam::123:role/reader"
        read_only: true
        requester_pays: false
  batch_config:
    max_batch_size: 16
    wait_ms: 200
  queue_config:
    backend: "sqs"
    broker_url: "http://localhost:4566"
model_settings:
  local_model_repository_folder: "/models"
  common:
    device: "cuda"
    cache_dir: "/models/cache"
  model_entries:
    translator:
      model_path: "translator-v2"
      target_language: "fr"
    summarizer:
      model_path: "summarizer"
"#;

#[test]
fn a_complete_modalkit_yaml_loads_unchanged() {
    let s = load(FULL_MODALKIT_YAML).unwrap();
    let app = &s.app_settings;
    assert_eq!(app.app_prefix, "my-translation-app");
    assert_eq!(
        app.auth_config.ssm_key.as_deref(),
        Some("/translation/api-key")
    );
    assert_eq!(app.build_config.image.as_deref(), Some("python"));
    assert_eq!(app.build_config.tag.as_deref(), Some("3.11-slim"));
    assert_eq!(app.build_config.env["HF_HOME"], "/models/cache");
    assert_eq!(app.build_config.extra_run_commands.len(), 2);
    let d = &app.deployment_config;
    assert_eq!(d.region.as_deref(), Some("us-east"));
    assert_eq!(d.gpu, vec!["A10G"]);
    assert_eq!(d.memory, Some(4096));
    assert_eq!(d.cpu, Some(2.0));
    assert_eq!(d.volumes["/models"], "models-volume");
    assert_eq!(d.volume_reload_interval_seconds, Some(300));
    assert_eq!(d.concurrency_limit, Some(4));
    assert_eq!(d.retries, Some(2));
    assert_eq!(d.secrets, vec!["aws-credentials", "hf-token"]);
    assert_eq!(d.mounts[1].kind, MountKind::Dir);
    assert_eq!(d.container_idle_timeout, Some(120));
    assert_eq!(d.allow_concurrent_inputs, Some(8));
    assert_eq!(d.allow_concurrent_inputs_handler, Some(16));
    assert!(d.secure);
    let bucket = &d.cloud_bucket_mounts[0];
    assert_eq!(bucket.bucket_name, "my-bucket");
    assert_eq!(bucket.key_prefix.as_deref(), Some("models/"));
    assert!(bucket.read_only && !bucket.requester_pays);
    assert_eq!(app.batch_config.max_batch_size, 16);
    assert_eq!(app.batch_config.wait_ms, 200);
    assert_eq!(
        app.queue_config.broker_url.as_deref(),
        Some("http://localhost:4566")
    );
    assert_eq!(s.model_settings.model_entries.len(), 2);
    assert_eq!(s.model_settings.common["device"], "cuda");
}

/// Each bad config, and the text its error must contain.
const BAD_CONFIGS: &[(&str, &str, &str)] = &[
    (
        "batch size 0",
        "  batch_config: {max_batch_size: 0}",
        "app_settings.batch_config.max_batch_size",
    ),
    (
        "batch size 1001",
        "  batch_config: {max_batch_size: 1001}",
        "app_settings.batch_config.max_batch_size",
    ),
    (
        "wait 600000 ms",
        "  batch_config: {wait_ms: 600000}",
        "app_settings.batch_config.wait_ms",
    ),
    (
        "negative wait",
        "  batch_config: {wait_ms: -1}",
        "app_settings.batch_config.wait_ms",
    ),
    (
        "port out of range",
        "  server_config: {port: 70000}",
        "app_settings.server_config.port",
    ),
    (
        "port as text",
        "  server_config: {port: eighty}",
        "app_settings.server_config.port",
    ),
    (
        "zero workers",
        "  server_config: {workers: 0}",
        "app_settings.server_config.workers",
    ),
    (
        "zero queue depth",
        "  server_config: {max_queue_depth: 0}",
        "app_settings.server_config.max_queue_depth",
    ),
    (
        "bad mount type",
        "  deployment_config: {mounts: [{local_path: a, remote_path: b, type: link}]}",
        "app_settings.deployment_config.mounts",
    ),
    (
        "bucket without name",
        "  deployment_config: {cloud_bucket_mounts: [{mount_point: /d, bucket_name: ''}]}",
        "app_settings.deployment_config.cloud_bucket_mounts[0].bucket_name",
    ),
    (
        "empty backend",
        "  queue_config: {backend: ''}",
        "app_settings.queue_config.backend",
    ),
];

#[test]
fn bad_configs_fail_naming_field_path_and_source() {
    for (what, section, path) in BAD_CONFIGS {
        let yaml = MINIMAL.replace("app_prefix: demo", &format!("app_prefix: demo\n{section}"));
        let err = load_err(&yaml);
        assert!(
            err.contains(path),
            "{what}: error does not name {path}:\n{err}"
        );
        assert!(
            err.contains("modalkit.yaml"),
            "{what}: error does not name the file:\n{err}"
        );
    }
}

#[test]
fn empty_prefix_and_bad_model_names_fail_with_paths() {
    let err =
        load_err("app_settings:\n  app_prefix: ''\nmodel_settings:\n  model_entries: {m: {}}\n");
    assert!(err.contains("app_settings.app_prefix"), "{err}");
    let err = load_err("model_settings:\n  model_entries: {m: {}}\n");
    assert!(err.contains("app_settings.app_prefix"), "{err}");
    let err = load_err(
        "app_settings:\n  app_prefix: demo\nmodel_settings:\n  model_entries: {'bad name': {}}\n",
    );
    assert!(err.contains("model_settings.model_entries"), "{err}");
}

#[test]
fn a_bad_env_value_names_the_variable() {
    let dir = TempDir::new().unwrap();
    let file = write(&dir, "m.yaml", MINIMAL);
    let sources = ConfigSources::files(vec![file]).with_env([(
        "MODALKIT_APP_SETTINGS__BATCH_CONFIG__MAX_BATCH_SIZE",
        "5000",
    )]);
    let err = Settings::load(&sources).unwrap_err().to_string();
    assert!(
        err.contains("app_settings.batch_config.max_batch_size"),
        "{err}"
    );
    assert!(
        err.contains("MODALKIT_APP_SETTINGS__BATCH_CONFIG__MAX_BATCH_SIZE"),
        "{err}"
    );
}

#[test]
fn a_missing_config_file_is_an_error() {
    let err = Settings::load(&ConfigSources::files(vec![
        "/nonexistent/modalkit.yaml".into(),
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("/nonexistent/modalkit.yaml") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn model_context_entry_names_model_and_field() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Entry {
        model_path: String,
        top_k: u32,
    }
    let s = load(FULL_MODALKIT_YAML).unwrap();
    let ctx = modalkit_core::ModelContext::from_settings(&s, "translator", 0).unwrap();
    let err = ctx.entry::<Entry>().unwrap_err().to_string();
    assert!(err.contains("model 'translator'"), "{err}");
    assert!(err.contains("top_k"), "{err}");
    assert_eq!(ctx.setting("device").unwrap(), "cuda");
    assert_eq!(ctx.model_path("x"), PathBuf::from("/models/x"));
    assert!(modalkit_core::ModelContext::from_settings(&s, "nope", 0).is_none());
}

fn load_warned(yaml: &str) -> (Settings, Vec<String>) {
    let dir = TempDir::new().unwrap();
    let file = write(&dir, "modalkit.yaml", yaml);
    let loaded = Settings::load_with_warnings(&ConfigSources::files(vec![file])).unwrap();
    (loaded.settings, loaded.warnings)
}

#[test]
fn what_modalkit_accepts_loads_with_a_warning() {
    let yaml = MINIMAL.replace(
        "app_prefix: demo",
        "app_prefix: demo\n  async_config: {workers: 2}\n  batch_config: {max_batchsize: 8}\n  auth_config: {api_key: abc}\n  deployment_config: {preemptible: true}",
    );
    let (settings, warnings) = load_warned(&yaml);
    assert_eq!(
        settings.app_settings.auth_config.api_key.as_deref(),
        Some("abc")
    );
    let text = warnings.join("\n");
    for expected in [
        "app_settings.async_config: unknown key, ignored",
        "app_settings.batch_config.max_batchsize: unknown key, ignored; did you mean max_batch_size?",
        "app_settings.deployment_config.preemptible: unknown key, ignored",
        "app_settings.auth_config.api_key: only 3 characters",
    ] {
        assert!(
            text.contains(expected),
            "missing warning {expected:?} in:\n{text}"
        );
    }
    let (settings, warnings) =
        load_warned("app_settings:\n  app_prefix: demo\nmodel_settings:\n  model_entries: {}\n");
    assert!(settings.model_settings.model_entries.is_empty());
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("model_settings.model_entries: empty")),
        "{warnings:?}"
    );
}

#[test]
fn nulls_partial_sections_and_pydantic_lax_scalars_load_as_in_modalkit() {
    let yaml = r#"
app_settings:
  app_prefix: demo
  build_config: {image: python, tag: "3.10", env: null, extra_run_commands: null}
  deployment_config:
    volumes: null
    gpu: null
    region: null
    secure: "true"
    concurrency_limit: "4"
  batch_config:
    max_batch_size: "16"
  queue_config: null
model_settings:
  local_model_repository_folder: ./models
  common: {use_fp16: yes, mode: 0755, big: 1_000, off_flag: off, quoted: 'yes'}
  model_entries:
    m: {threshold: "0.5", enabled: on}
"#;
    let (s, warnings) = load_warned(yaml);
    assert!(warnings.is_empty(), "{warnings:?}");
    let app = &s.app_settings;
    assert!(app.deployment_config.volumes.is_empty() && app.deployment_config.gpu.is_empty());
    assert!(app.deployment_config.secure);
    assert_eq!(app.deployment_config.concurrency_limit, Some(4));
    assert_eq!(app.build_config.tag.as_deref(), Some("3.10"));
    assert_eq!(app.batch_config.max_batch_size, 16);
    assert_eq!(
        app.batch_config.wait_ms, 0,
        "modalkit's default for a part-given batch_config"
    );
    assert_eq!(app.queue_config.backend, "sqs");
    let common = &s.model_settings.common;
    assert_eq!(
        common["use_fp16"], true,
        "YAML 1.1 booleans, as PyYAML reads them"
    );
    assert_eq!(common["mode"], 493, "0755 is octal in YAML 1.1");
    assert_eq!(common["big"], 1000);
    assert_eq!(common["off_flag"], false);
    assert_eq!(common["quoted"], "yes", "a quoted scalar stays a string");
    assert_eq!(s.model_settings.model_entries["m"]["enabled"], true);
    assert_eq!(s.model_settings.model_entries["m"]["threshold"], "0.5");
    // Without any batch_config, the server still batches.
    let (s, _) = load_warned(MINIMAL);
    assert_eq!(
        (
            s.app_settings.batch_config.max_batch_size,
            s.app_settings.batch_config.wait_ms
        ),
        (32, 5)
    );
    // A YAML number where modalkit wants text is refused, naming the field.
    let err = load_err(&MINIMAL.replace(
        "app_prefix: demo",
        "app_prefix: demo\n  build_config: {tag: 3.10}",
    ));
    assert!(
        err.contains("app_settings.build_config.tag") && err.contains("expected a string"),
        "{err}"
    );
}

#[test]
fn env_values_are_typed_by_the_field_they_set_as_pydantic_settings_does() {
    let dir = TempDir::new().unwrap();
    let file = write(&dir, "m.yaml", MINIMAL);
    let sources = ConfigSources::files(vec![file]).with_env([
        ("MODALKIT_APP_SETTINGS__BUILD_CONFIG__TAG", "3.10"),
        ("MODALKIT_APP_SETTINGS__APP_PREFIX", "123"),
        ("MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__SECURE", "True"),
        (
            "modalkit_app_settings__batch_config",
            r#"{"max_batch_size": 8, "wait_ms": 20}"#,
        ),
        ("Modalkit_App_Settings__Server_Config__Port", "9100"),
        ("MODALKIT_MODEL_SETTINGS__COMMON__USE_FP16", "true"),
        (
            "MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__SECRETS",
            r#"["a", "b"]"#,
        ),
    ]);
    let s = Settings::load(&sources).unwrap();
    let app = &s.app_settings;
    assert_eq!(
        app.build_config.tag.as_deref(),
        Some("3.10"),
        "a string field keeps the text"
    );
    assert_eq!(app.app_prefix, "123");
    assert!(app.deployment_config.secure);
    assert_eq!(
        (app.batch_config.max_batch_size, app.batch_config.wait_ms),
        (8, 20)
    );
    assert_eq!(app.server_config.port, 9100, "names match in any case");
    assert_eq!(app.deployment_config.secrets, vec!["a", "b"]);
    assert_eq!(
        s.model_settings.common["use_fp16"], "true",
        "free-form values stay text, as in modalkit"
    );
}
