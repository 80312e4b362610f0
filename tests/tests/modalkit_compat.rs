//! The differential test against the real modalkit 0.2.0 (installed from
//! PyPI into .venv-modalkit by scripts/modalkit-oracle.sh; driven through
//! tests/oracle/modalkit_oracle.py). For modalkit's own yaml files (README,
//! docs, tests: tests/fixtures/modalkit-yaml, fragments over the base their
//! `# over:` line names) and our own tricky files and env variables, it
//! compares what loads and the merged values; for the echo pipeline it
//! compares the exact bytes of sync and batch replies, the async reply, and
//! the success and failure queue messages. Differences kept on purpose are
//! listed in docs/migrating-from-modalkit.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use modalkit_core::settings::{ConfigSources, Settings};
use modalkit_tests::oracle::oracle;
use modalkit_tests::support::{TestServer, client, settings_from_yaml, write_report};
use serde_json::{Value, json};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fixture and the files it loads: its `# over:` base (recursively) first.
fn chain(dir: &Path, name: &str) -> Vec<PathBuf> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let over = text
        .lines()
        .find_map(|l| l.strip_prefix("# over:").map(|b| b.trim().to_owned()));
    let mut files = over.map(|base| chain(dir, &base)).unwrap_or_default();
    files.push(path);
    files
}

/// Environment variables of a case.
type EnvVars = Vec<(&'static str, &'static str)>;

/// A settings case: the files it loads and its environment variables.
type Case = (Vec<PathBuf>, Vec<(String, String)>);

/// Our own cases: (name, yaml, env). Each yaml is written to a file.
fn own_cases() -> Vec<(&'static str, String, EnvVars)> {
    let base = std::fs::read_to_string(workspace().join("tests/fixtures/modalkit-yaml/base.yaml"))
        .unwrap();
    let env_case = |name, vars: EnvVars| (name, base.clone(), vars);
    vec![
        ("yaml-1.1 scalars", base.replace("  common: {}", "  common: {use_fp16: yes, strict: off, mode: 0755, big: 1_000, ratio: 0.5, quoted: 'on', nothing: ~}")
            .replace("    volumes: {}", "    volumes: {}\n    secure: yes"), vec![]),
        ("lax scalars", base.replace("    max_batch_size: 4", "    max_batch_size: \"16\"").replace("    volumes: {}", "    volumes: {}\n    secure: \"true\"\n    retries: \"3\""), vec![]),
        ("nulls", base.replace("    volumes: {}", "    volumes: null\n    gpu: null\n    region: null"), vec![]),
        ("partial batch_config", base.replace("    max_batch_size: 4\n    wait_ms: 10", "    max_batch_size: 8"), vec![]),
        ("unknown keys", base.replace("  batch_config:", "  async_config: {workers: 2}\n  batch_config:").replace("    volumes: {}", "    volumes: {}\n    preemptible: true"), vec![]),
        ("short api key", base.replace("compat-base-key-1234", "abc"), vec![]),
        ("empty model_entries", base.replace("    translate: {}", "    {}").replace("  model_entries:\n    {}", "  model_entries: {}"), vec![]),
        ("secure with a key", base.replace("    volumes: {}", "    volumes: {}\n    secure: true"), vec![]),
        env_case("env: string field keeps its text", vec![("MODALKIT_APP_SETTINGS__BUILD_CONFIG__TAG", "3.10")]),
        env_case("env: numeric app_prefix", vec![("MODALKIT_APP_SETTINGS__APP_PREFIX", "12345")]),
        env_case("env: True", vec![("MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__SECURE", "True")]),
        env_case("env: number for an int", vec![("MODALKIT_APP_SETTINGS__BATCH_CONFIG__MAX_BATCH_SIZE", "16")]),
        env_case("env: JSON section", vec![("MODALKIT_APP_SETTINGS__BATCH_CONFIG", "{\"max_batch_size\": 8}")]),
        env_case("env: JSON list", vec![("MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__SECRETS", "[\"aws\", \"hf\"]")]),
        env_case("env: lower-case name", vec![("modalkit_app_settings__batch_config__wait_ms", "25")]),
        env_case("env: free-form value", vec![("MODALKIT_MODEL_SETTINGS__COMMON__USE_FP16", "true")]),
        env_case("env: new model entry", vec![("MODALKIT_MODEL_SETTINGS__MODEL_ENTRIES__SUMMARIZE", "{\"max_len\": 128}")]),
    ]
}

/// modalkit's defaults for fields we leave unset (None means "as modalkit").
const MODALKIT_DEFAULTS: &[(&str, &str)] = &[
    ("app_settings.build_config.workdir", "\"/root\""),
    (
        "app_settings.deployment_config.volume_reload_interval_seconds",
        "-1",
    ),
    ("app_settings.deployment_config.retries", "1"),
    (
        "app_settings.deployment_config.container_idle_timeout",
        "180",
    ),
    (
        "app_settings.deployment_config.allow_concurrent_inputs",
        "1",
    ),
    (
        "app_settings.deployment_config.allow_concurrent_inputs_handler",
        "10",
    ),
    ("app_settings.queue_config.broker_url", "\"memory://\""),
];

/// One value as modalkit's model_dump and ours should agree on it.
fn normalize(path: &str, value: &Value, ours: bool) -> Value {
    if ours
        && value.is_null()
        && let Some((_, default)) = MODALKIT_DEFAULTS.iter().find(|(p, _)| *p == path)
    {
        return serde_json::from_str(default).unwrap();
    }
    match (path, value) {
        (p, Value::Null)
            if p.ends_with("deployment_config.gpu") || p.ends_with("extra_run_commands") =>
        {
            json!([])
        }
        (p, Value::String(s))
            if p.ends_with("deployment_config.gpu") || p.ends_with("extra_run_commands") =>
        {
            json!([s])
        }
        (p, Value::Null) if p.ends_with("deployment_config.volumes") => json!({}),
        (p, Value::String(s)) if p.ends_with("local_model_repository_folder") => {
            json!(s.trim_start_matches("./").trim_end_matches('/'))
        }
        _ => value.clone(),
    }
}

/// Where ours differs from modalkit's on modalkit's own fields.
fn differences(theirs: &Value, ours: &Value, path: &str, out: &mut Vec<String>) {
    if let (Value::Object(theirs), Some(ours_map)) = (theirs, ours.as_object())
        && !path.ends_with("common")
        && !path.ends_with("model_entries")
        && !path.ends_with("volumes")
        && !path.ends_with(".env")
    {
        for (key, value) in theirs {
            let child = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            differences(
                value,
                ours_map.get(key).unwrap_or(&Value::Null),
                &child,
                out,
            );
        }
        return;
    }
    if let (Value::Array(theirs), Value::Array(ours)) = (theirs, ours)
        && theirs.len() == ours.len()
        && theirs.iter().all(Value::is_object)
    {
        for (i, (t, o)) in theirs.iter().zip(ours).enumerate() {
            differences(t, o, &format!("{path}[{i}]"), out);
        }
        return;
    }
    let (t, o) = (normalize(path, theirs, false), normalize(path, ours, true));
    if t != o {
        out.push(format!("{path}: modalkit {t}, ours {o}"));
    }
}

#[tokio::test]
async fn settings_and_wire_bytes_match_modalkit_0_2_0() {
    let fixtures = workspace().join("tests/fixtures/modalkit-yaml");
    let scratch = tempfile::tempdir().unwrap();
    let mut cases: BTreeMap<String, Case> = BTreeMap::new();
    let mut names: Vec<String> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && !n.starts_with("base"))
        .collect();
    names.sort();
    let fixture_count = names.len();
    for name in names {
        cases.insert(name.clone(), (chain(&fixtures, &name), Vec::new()));
    }
    let own = own_cases();
    let own_count = own.len();
    for (name, yaml, env) in own {
        let path = scratch
            .path()
            .join(format!("{}.yaml", name.replace([' ', ':', '-', '.'], "_")));
        std::fs::write(&path, yaml).unwrap();
        let env = env
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        cases.insert(format!("own: {name}"), (vec![path], env));
    }

    // The wire: our echo server's bytes, and modalkit's for the same requests.
    let server = TestServer::start(settings_from_yaml(
        "app_settings:\n  app_prefix: compat\n  batch_config: {max_batch_size: 1, wait_ms: 0}\n  queue_config: {backend: memory}\nmodel_settings:\n  model_entries:\n    echo: {}\n",
    ))
    .await;
    let http = client();
    let post = |path: &str, body: &str| {
        let request = http
            .post(server.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned());
        async move {
            let reply = request.send().await.unwrap();
            (reply.status().as_u16(), reply.text().await.unwrap())
        }
    };
    let mut ours: BTreeMap<String, (u16, String)> = BTreeMap::new();
    let mut wire: Vec<Value> = Vec::new();
    for (name, body) in [
        ("sync ascii", r#"{"text": "hello", "repeat": 2}"#),
        ("sync unicode", r#"{"text": "héllo \"wörld\" ✓"}"#),
    ] {
        ours.insert(name.to_owned(), post("/predict_sync", body).await);
        wire.push(json!({"name": name, "kind": "sync", "body": body}));
    }
    let (status, batch) = post(
        "/predict_batch",
        r#"[{"text": "a"}, {"text": "b", "repeat": 3}]"#,
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    let items: Vec<Value> = serde_json::from_str(&batch).unwrap();
    for (i, (item, body)) in items
        .iter()
        .zip([r#"{"text": "a"}"#, r#"{"text": "b", "repeat": 3}"#])
        .enumerate()
    {
        let name = format!("batch item {i}");
        ours.insert(name.clone(), (200, serde_json::to_string(item).unwrap()));
        wire.push(json!({"name": name, "kind": "sync", "body": body}));
    }
    let meta = r#"{"z": 1, "a": "é", "nested": {"b": [1, 2.5, true], "a": null}}"#;
    let success_body = format!(
        r#"{{"message": {{"text": "queued"}}, "success_queue": "ok", "failure_queue": "err", "meta": {meta}}}"#
    );
    let (status, reply) = post("/predict_async", &success_body).await;
    let job: Value = serde_json::from_str(&reply).unwrap();
    let zeroed = reply.replace(
        job["job_id"].as_str().unwrap(),
        "00000000-0000-0000-0000-000000000000",
    );
    ours.insert("async reply".to_owned(), (status, zeroed));
    wire.push(json!({"name": "async reply", "kind": "async_reply", "body": success_body}));
    let item_body = format!(
        r#"{{"message": {{"text": "doomed", "fail": "item"}}, "failure_queue": "err", "meta": {meta}}}"#
    );
    post("/predict_async", &item_body).await;
    // Every field given, so the message as received is the message modalkit
    // re-serializes (it fills in defaults; we send it as received).
    let batch_body = r#"{"message": {"text": "sunk", "repeat": null, "sleep_ms": 0, "fail": "batch"}, "success_queue": "", "failure_queue": "err2", "meta": {"k": "v"}}"#;
    post("/predict_async", batch_body).await;
    let started = std::time::Instant::now();
    while (server.queue.peek("ok").is_empty()
        || server.queue.peek("err").is_empty()
        || server.queue.peek("err2").is_empty())
        && started.elapsed() < std::time::Duration::from_secs(10)
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let success = server.queue.peek("ok").pop().expect("a success message");
    let parsed: Value = serde_json::from_str(&success).unwrap();
    ours.insert("success message".to_owned(), (0, success.clone()));
    wire.push(
        json!({"name": "success message", "kind": "success", "body": success_body,
        "batch_size": parsed["batch_size"], "worker": parsed["worker"]}),
    );
    let item_failure = server.queue.peek("err").pop().expect("an item failure");
    let error: Value = serde_json::from_str(&item_failure).unwrap();
    ours.insert("item failure message".to_owned(), (0, item_failure.clone()));
    wire.push(json!({"name": "item failure message", "kind": "item_failure", "body": item_body, "error": error["error"]}));
    let batch_failure = server.queue.peek("err2").pop().expect("a batch failure");
    let failure: Value = serde_json::from_str(&batch_failure).unwrap();
    let raised = failure["error"]
        .as_str()
        .unwrap()
        .trim_start_matches("Internal Server Error. Error log: ")
        .to_owned();
    ours.insert(
        "batch failure message".to_owned(),
        (0, batch_failure.clone()),
    );
    wire.push(json!({"name": "batch failure message", "kind": "batch_failure", "body": batch_body, "error": raised}));
    server.shutdown().await;

    let settings_request: Vec<Value> = cases
        .iter()
        .map(|(name, (files, env))| json!({"name": name, "files": files, "env": env.iter().cloned().collect::<BTreeMap<_, _>>()}))
        .collect();
    let answer = oracle(&json!({
        "settings": settings_request,
        "wire": wire,
        "wire_config": fixtures.join("base.yaml"),
    }));

    let mut problems = Vec::new();
    let (mut same, mut refused_by_both, mut accepted_beyond) = (0, Vec::new(), Vec::new());
    for (name, (files, env)) in &cases {
        let theirs = &answer["settings"][name];
        let loaded = Settings::load_with_warnings(
            &ConfigSources::files(files.clone()).with_env(env.clone()),
        );
        match (theirs.get("ok"), loaded) {
            (Some(theirs), Ok(loaded)) => {
                let mut diffs = Vec::new();
                differences(
                    theirs,
                    &serde_json::to_value(&loaded.settings).unwrap(),
                    "",
                    &mut diffs,
                );
                if diffs.is_empty() {
                    same += 1;
                } else {
                    problems.push(format!(
                        "{name}: merged values differ:\n    {}",
                        diffs.join("\n    ")
                    ));
                }
            }
            (Some(_), Err(err)) => {
                problems.push(format!("{name}: modalkit loads it, we refuse: {err}"))
            }
            (None, Err(_)) => refused_by_both.push(name.clone()),
            (None, Ok(_)) => {
                // pydantic's second line names the field it refused.
                let error = theirs["error"].as_str().unwrap_or_default();
                let field = error.lines().nth(1).unwrap_or(error);
                accepted_beyond.push(format!("{name}: {field}"));
            }
        }
    }
    let mut wire_same = 0;
    for (name, (status, body)) in &ours {
        let theirs = &answer["wire"][name];
        let theirs_status = theirs["status"].as_u64().unwrap_or(0) as u16;
        if (theirs_status, theirs["body"].as_str().unwrap_or_default()) == (*status, body.as_str())
        {
            wire_same += 1;
        } else {
            problems.push(format!(
                "wire {name}:\n    modalkit {theirs_status} {}\n    ours     {status} {body}",
                theirs["body"]
            ));
        }
    }
    let report = format!(
        "modalkit 0.2.0 differential test: {} settings cases ({fixture_count} of modalkit's yaml files, {own_count} of ours): \
         {same} load to the same values, {} refused by both [{}], {} loaded by us but refused by modalkit [{}]; \
         {} wire cases: {wire_same} byte-identical",
        cases.len(),
        refused_by_both.len(),
        refused_by_both.join("; "),
        accepted_beyond.len(),
        accepted_beyond.join("; "),
        ours.len(),
    );
    println!("{report}");
    write_report("modalkit-compat.txt", &report);
    assert!(problems.is_empty(), "{report}\n{}", problems.join("\n"));
}
