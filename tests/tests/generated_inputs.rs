//! Generated inputs against the parsers users reach: the settings loader
//! (YAML files written with YAML 1.1's lax scalars, plus `MODALKIT_*`
//! variables), the bodies of every predict route (JSON values and raw
//! bytes, over HTTP to a real server) and SQS input messages (bodies and
//! attributes, through moto to a real consumer). Every case must load or be
//! refused with an error naming what is wrong: never a panic, never a 5xx,
//! never a message left on the queue. The counts go to the CI log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use modalkit_core::StartupError;
use modalkit_core::settings::{ConfigSources, Settings};
use modalkit_tests::moto::{Moto, drain_labelled, unique_queue};
use modalkit_tests::support::{ServerProcess, TestServer, echo_settings_with, write_report};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_modalkit-test-server");

/// A runner with a fixed seed: the same cases on every run, so a failure
/// reproduces; the count is what CI's time allows.
fn runner(cases: u32) -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    )
}

// --- settings ---------------------------------------------------------------

/// Every section and field of the settings, as the yaml names them.
const FIELDS: &[(&str, &[&str])] = &[
    (
        "app_settings",
        &[
            "app_prefix",
            "auth_config",
            "build_config",
            "deployment_config",
            "batch_config",
            "queue_config",
            "server_config",
        ],
    ),
    ("auth_config", &["api_key", "ssm_key", "auth_header"]),
    (
        "build_config",
        &["image", "tag", "workdir", "env", "extra_run_commands"],
    ),
    (
        "deployment_config",
        &[
            "region",
            "gpu",
            "memory",
            "cpu",
            "volumes",
            "volume_reload_interval_seconds",
            "concurrency_limit",
            "retries",
            "secrets",
            "mounts",
            "container_idle_timeout",
            "allow_concurrent_inputs",
            "secure",
            "cloud_bucket_mounts",
        ],
    ),
    (
        "batch_config",
        &["max_batch_size", "wait_ms", "adaptive_wait_ms"],
    ),
    (
        "queue_config",
        &[
            "backend",
            "broker_url",
            "max_attempts",
            "initial_backoff_ms",
            "max_backoff_ms",
            "max_delivery_seconds",
            "dead_letter_path",
            "input_queue",
            "input_model",
            "input_visibility_timeout_seconds",
            "input_max_messages",
            "input_wait_seconds",
            "input_max_in_flight",
            "dead_letter_queue",
            "job_store",
            "job_table",
            "webhook_secret",
            "webhook_allowed_hosts",
            "webhook_timeout_seconds",
        ],
    ),
    (
        "server_config",
        &[
            "host",
            "port",
            "max_body_bytes",
            "max_batch_request_items",
            "request_timeout_seconds",
            "async_timeout_seconds",
            "max_queue_depth",
            "workers",
            "shutdown_grace_seconds",
            "unready_delay_seconds",
            "job_ttl_seconds",
            "max_jobs",
            "cors_allow_origins",
            "header_read_timeout_seconds",
            "body_read_timeout_seconds",
            "idle_timeout_seconds",
            "max_connections",
        ],
    ),
    (
        "model_settings",
        &["local_model_repository_folder", "common", "model_entries"],
    ),
];

fn fields_of(section: &str) -> &'static [&'static str] {
    FIELDS
        .iter()
        .find(|(name, _)| *name == section)
        .map_or(&[], |(_, fields)| fields)
}

/// Scalars as a user might write them, YAML 1.1's surprises included.
const SCALARS: &[&str] = &[
    "0",
    "-1",
    "1",
    "8",
    "8000",
    "65536",
    "99999999999999999999",
    "0.5",
    "-0.0",
    "1e3",
    "1.5e-3",
    ".inf",
    "-.inf",
    ".nan",
    "0x1F",
    "0o17",
    "012",
    "1_000",
    "true",
    "false",
    "yes",
    "no",
    "on",
    "off",
    "y",
    "n",
    "True",
    "NO",
    "~",
    "null",
    "''",
    "\"\"",
    "memory",
    "sqs",
    "dynamodb",
    "cpu",
    "cuda",
    "A10G",
    "*",
    "[]",
    "{}",
    "[1, 2]",
    "[a, b]",
    "{a: 1}",
    "'quoted'",
    "\"x\\ty\"",
    "é",
    "2001:db8::1",
    "127.0.0.1",
    "http://127.0.0.1:9",
    "https://x.y/z",
    "10s",
    "-5",
    "3.0",
    "'8000'",
    "!!str 1",
    "&a 1",
    "*a",
    "|",
    ">",
    "- x",
];

/// Values that fit `field` (by its name's convention), to make loadable
/// configs common: a number for counts and durations, a list for lists,
/// a name otherwise.
fn plausible(field: &str) -> &'static [&'static str] {
    const LISTS: &[&str] = &[
        "cors_allow_origins",
        "secrets",
        "volumes",
        "mounts",
        "webhook_allowed_hosts",
        "extra_run_commands",
        "cloud_bucket_mounts",
        "env",
    ];
    if LISTS.contains(&field) {
        &["[]", "[a]", "['*']"]
    } else if field.ends_with("_seconds")
        || field.ends_with("_ms")
        || field.starts_with("max_")
        || field.ends_with("_size")
        || [
            "port",
            "workers",
            "retries",
            "memory",
            "cpu",
            "concurrency_limit",
            "container_idle_timeout",
            "allow_concurrent_inputs",
            "input_max_in_flight",
            "input_max_messages",
        ]
        .contains(&field)
    {
        &["1", "8", "30", "0.5", "1000"]
    } else if field == "backend" {
        &["memory", "sqs"]
    } else if field == "job_store" {
        &["memory"]
    } else {
        &["x", "modalkit-app", "'a b'"]
    }
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(SCALARS).prop_map(str::to_owned),
        1 => prop::collection::vec(prop::sample::select(&['a', 'Z', '0', '_', '-', '.', ':', ' ', '#', '\'', '"', '\\', '\u{e9}'][..]), 0..10)
            .prop_map(String::from_iter),
    ]
}

/// A yaml node: a scalar, a list of scalars, or (for a section) a map of its
/// fields, sometimes with a misspelt or unknown one.
#[derive(Debug, Clone)]
enum Node {
    Scalar(String),
    List(Vec<String>),
    Map(Vec<(String, Node)>),
}

fn node(key: &'static str, depth: u32) -> BoxedStrategy<Node> {
    let fields = fields_of(key);
    let leaf = prop_oneof![
        6 => prop::sample::select(plausible(key)).prop_map(|v| Node::Scalar(v.to_owned())),
        3 => scalar().prop_map(Node::Scalar),
        1 => prop::collection::vec(scalar(), 0..3).prop_map(Node::List),
    ];
    if fields.is_empty() || depth > 3 {
        return leaf.boxed();
    }
    let field = prop_oneof![
        8 => prop::sample::select(fields),
        1 => Just("unknown_field"),
        1 => prop::sample::select(fields).prop_map(|f| if f.len() > 3 { &f[..f.len() - 1] } else { f }),
    ];
    let entries = prop::collection::vec(
        field.prop_flat_map(move |name| {
            node(name, depth + 1).prop_map(move |value| (name.to_owned(), value))
        }),
        0..4,
    );
    prop_oneof![1 => leaf, 9 => entries.prop_map(Node::Map)].boxed()
}

fn render(node: &Node, indent: usize, out: &mut String) {
    match node {
        Node::Scalar(text) => {
            out.push(' ');
            out.push_str(text);
            out.push('\n');
        }
        Node::List(items) => {
            out.push('\n');
            for item in items {
                out.push_str(&format!("{}- {item}\n", " ".repeat(indent)));
            }
        }
        Node::Map(entries) => {
            out.push('\n');
            for (key, value) in entries {
                out.push_str(&format!("{}{key}:", " ".repeat(indent)));
                render(value, indent + 2, out);
            }
        }
    }
}

fn config_text() -> impl Strategy<Value = String> {
    (
        node("app_settings", 1),
        node("model_settings", 1),
        any::<bool>(),
    )
        .prop_map(|(app, model, with_model)| {
            let mut text = String::from("app_settings:");
            render(&app, 2, &mut text);
            if with_model {
                text.push_str("model_settings:");
                render(&model, 2, &mut text);
            }
            text
        })
}

/// `MODALKIT_APP_SETTINGS__SECTION__FIELD=value` variables.
fn variables() -> impl Strategy<Value = Vec<(String, String)>> {
    let sections: Vec<&'static str> = FIELDS[0].1.to_vec();
    let one = prop::sample::select(sections).prop_flat_map(|section| {
        let fields = fields_of(section);
        let field = if fields.is_empty() {
            Just(section).boxed()
        } else {
            prop::sample::select(fields).boxed()
        };
        field.prop_flat_map(move |field| {
            let name = if field == section {
                format!("MODALKIT_APP_SETTINGS__{}", section.to_uppercase())
            } else {
                format!(
                    "MODALKIT_APP_SETTINGS__{}__{}",
                    section.to_uppercase(),
                    field.to_uppercase()
                )
            };
            prop_oneof![
                2 => prop::sample::select(plausible(field)).prop_map(str::to_owned),
                1 => scalar(),
            ]
            .prop_map(move |value| (name.clone(), value))
        })
    });
    prop::collection::vec(one, 0..3)
}

/// Whether a refusal names what is wrong: the settings path it is about
/// (`app_settings.server_config.port: ...`), or the file and the line of
/// yaml that does not parse.
fn names_what_is_wrong(problem: &str, file: &str) -> bool {
    problem.starts_with("app_settings")
        || problem.starts_with("model_settings")
        || (problem.starts_with(file) && problem.contains(" line "))
}

#[test]
fn generated_configs_load_or_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modalkit.yaml");
    let (mut loaded, mut refused) = (0usize, 0usize);
    let mut runner = runner(3_000);
    let strategy = (config_text(), variables());
    for _ in 0..runner.config().cases {
        let (text, env) = strategy.new_tree(&mut runner).unwrap().current();
        std::fs::write(&path, &text).unwrap();
        let sources = ConfigSources {
            files: vec![path.clone()],
            dotenv: None,
            env: env.clone(),
        };
        let outcome = std::panic::catch_unwind(|| Settings::load_with_warnings(&sources));
        let context = || format!("yaml:\n{text}\nenv: {env:?}");
        match outcome {
            Err(_) => panic!("the settings loader panicked on\n{}", context()),
            Ok(Ok(_)) => loaded += 1,
            Ok(Err(StartupError::Config(problems))) => {
                assert!(
                    !problems.0.is_empty(),
                    "a refusal with no problem listed:\n{}",
                    context()
                );
                for problem in &problems.0 {
                    assert!(
                        names_what_is_wrong(problem, &path.display().to_string()),
                        "'{problem}' names no field; {}",
                        context()
                    );
                }
                refused += 1;
            }
            Ok(Err(other)) => panic!("the settings loader failed with {other} on\n{}", context()),
        }
    }
    assert!(
        loaded > 100 && refused > 100,
        "both outcomes are exercised: {loaded} loaded, {refused} refused"
    );
    write_report(
        "generated-settings.txt",
        &format!(
            "generated inputs, settings loader: {} configs (yaml + MODALKIT_* variables): {loaded} loaded, {refused} refused naming a field, 0 panics",
            loaded + refused
        ),
    );
}

// --- request bodies -----------------------------------------------------------

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(&["", "hi", "text", "message", "\u{0}", "é\u{1F600}", "    "][..])
            .prop_map(Value::from),
        prop::collection::vec(any::<char>(), 0..20)
            .prop_map(|chars| Value::from(String::from_iter(chars))),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                // The echo pipeline's fields a user sends, the envelope's, and
                // unknown ones (not its test knobs `sleep_ms` and `fail`: a
                // generated hour-long sleep or a requested panic is no
                // parser's fault).
                (
                    prop::sample::select(
                        &[
                            "text",
                            "repeat",
                            "message",
                            "success_queue",
                            "failure_queue",
                            "meta",
                            "x",
                            ""
                        ][..]
                    ),
                    inner
                ),
                0..5
            )
            .prop_map(|entries| Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect()
            )),
        ]
    })
}

/// A body: JSON (often near a valid one), or raw bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        2 => (json_value(), json_value()).prop_map(|(text, repeat)| serde_json::to_vec(&json!({"text": text, "repeat": repeat})).unwrap()),
        2 => (prop::collection::vec(any::<char>(), 0..30), 0..4u32).prop_map(|(text, repeat)| serde_json::to_vec(&json!({"text": String::from_iter(text), "repeat": repeat})).unwrap()),
        2 => json_value().prop_map(|message| serde_json::to_vec(&json!({"message": message, "success_queue": "ok"})).unwrap()),
        1 => prop::collection::vec(prop::collection::vec(any::<char>(), 0..12), 0..4)
            .prop_map(|texts| serde_json::to_vec(&texts.into_iter().map(|t| json!({"text": String::from_iter(t)})).collect::<Vec<_>>()).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => json_value().prop_map(|v| { let mut bytes = serde_json::to_vec(&v).unwrap(); bytes.truncate(bytes.len() / 2); bytes }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_bodies_get_a_reply_or_a_4xx_naming_the_problem() {
    let server = TestServer::start(echo_settings_with("echo", |_| {})).await;
    let http = reqwest::Client::new();
    let routes = ["/predict_sync", "/predict_batch", "/predict_async"];
    // Mostly JSON, so the parsers behind the content-type check are reached.
    let content_types = [
        "application/json",
        "application/json",
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "",
    ];
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut runner = runner(1_500);
    let strategy = (body(), 0..routes.len(), 0..content_types.len());
    for _ in 0..runner.config().cases {
        let (bytes, route, content_type) = strategy.new_tree(&mut runner).unwrap().current();
        let mut request = http.post(server.url(routes[route])).body(bytes.clone());
        if !content_types[content_type].is_empty() {
            request = request.header("content-type", content_types[content_type]);
        }
        let reply = request.send().await.expect("the server answers");
        let status = reply.status().as_u16();
        let text = reply.text().await.unwrap();
        let case = || {
            format!(
                "{} {} {:?} -> {status} {text}",
                routes[route],
                content_types[content_type],
                String::from_utf8_lossy(&bytes)
            )
        };
        assert!(status < 500, "a server error: {}", case());
        let reply: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {}", case()));
        if status >= 400 {
            let code = reply["error"]["code"].as_str().unwrap_or("");
            let message = reply["error"]["message"].as_str().unwrap_or("");
            assert!(
                !code.is_empty() && !message.is_empty(),
                "an error without code or message: {}",
                case()
            );
        }
        *statuses.entry(status).or_default() += 1;
    }
    assert!(
        statuses.keys().any(|s| *s < 300) && statuses.keys().any(|s| *s >= 400),
        "{statuses:?}"
    );
    let total: usize = statuses.values().sum();
    write_report(
        "generated-bodies.txt",
        &format!(
            "generated inputs, request bodies: {total} requests to /predict_sync, /predict_batch, /predict_async; statuses {statuses:?}; 0 server errors"
        ),
    );
}

// --- SQS input messages -----------------------------------------------------

/// A well-formed job that names neither queue: it runs and its result goes
/// nowhere, as asked.
fn asks_for_no_delivery(body: &str) -> bool {
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(body) else {
        return false;
    };
    let names_none = |field: &str| fields.get(field).is_none_or(|queue| queue == "");
    fields.contains_key("message")
        && fields.keys().all(|key| {
            ["message", "success_queue", "failure_queue", "meta"].contains(&key.as_str())
        })
        && names_none("success_queue")
        && names_none("failure_queue")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_sqs_messages_are_each_run_or_refused_and_none_is_left() {
    const MESSAGES: u32 = 150;
    let moto = Moto::shared();
    let sqs = moto.sqs();
    let dir = tempfile::tempdir().unwrap();
    let (input, success, failure) = (
        unique_queue("gen-in"),
        unique_queue("gen-ok"),
        unique_queue("gen-err"),
    );
    let dead_letters = dir.path().join("dead.jsonl");
    let config = dir.path().join("modalkit.yaml");
    std::fs::write(
        &config,
        format!(
            "app_settings:\n  app_prefix: generated\n  queue_config:\n    backend: sqs\n    input_queue: {input}\n    input_visibility_timeout_seconds: 5\n    input_wait_seconds: 1\n    dead_letter_path: '{}'\nmodel_settings:\n  model_entries:\n    echo: {{}}\n",
            dead_letters.display()
        ),
    )
    .unwrap();
    let server = ServerProcess::spawn(
        Path::new(BINARY),
        &config,
        &moto.process_env(),
        dir.path().join("server.log"),
    );
    let url = loop {
        if let Ok(reply) = sqs.get_queue_url().queue_name(&input).send().await {
            break reply.queue_url().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Bodies: an envelope around a generated message (its queues named, so
    // each outcome is visible), or generated JSON, or raw text.
    let envelope = json_value().prop_map(move |message| {
        json!({"message": message, "success_queue": "S", "failure_queue": "F"}).to_string()
    });
    let strategy = (
        prop_oneof![
            3 => envelope,
            // Raw JSON names no queue of its own: every outcome is then
            // either in the two queues, the dead-letter file, or (a valid
            // job naming no queue) nowhere by request.
            1 => json_value().prop_map(|mut v| {
                if let Some(fields) = v.as_object_mut() {
                    fields.remove("success_queue");
                    fields.remove("failure_queue");
                }
                v.to_string()
            }),
            1 => prop::collection::vec(any::<char>(), 1..40).prop_map(String::from_iter),
        ],
        prop::option::of(prop::sample::select(&["echo", "nope", ""][..])),
    );
    let mut runner = runner(MESSAGES);
    let (mut sent, mut no_delivery) = (0, 0);
    for _ in 0..MESSAGES {
        let (body, model) = strategy.new_tree(&mut runner).unwrap().current();
        let body = body
            .replace("\"S\"", &format!("\"{success}\""))
            .replace("\"F\"", &format!("\"{failure}\""));
        let body_sent = if body.is_empty() {
            " ".to_owned()
        } else {
            body
        };
        let mut send = sqs.send_message().queue_url(&url).message_body(&body_sent);
        if let Some(model) = model.filter(|m| !m.is_empty()) {
            send = send.message_attributes(
                "model",
                aws_sdk_sqs::types::MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(model)
                    .build()
                    .unwrap(),
            );
        }
        if send.send().await.is_ok() {
            sent += 1;
            no_delivery += usize::from(asks_for_no_delivery(&body_sent));
        }
    }
    // SQS refuses some bodies itself (characters outside its set): only
    // what it took counts.
    assert!(sent > MESSAGES * 2 / 3, "SQS took {sent} of {MESSAGES}");

    // Every message is consumed: run (success or failure queue) or refused
    // (failure queue, or the dead-letter file when it names none).
    let started = Instant::now();
    loop {
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(
                aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            )
            .send()
            .await
            .unwrap();
        let left: u64 = attributes
            .attributes()
            .map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{left} messages left on the input queue; log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Outcomes are read until they account for every message (moto makes
    // a sent message receivable a moment after the send returns).
    let (mut succeeded, mut failed, mut dead) = (0, 0, 0);
    let started = Instant::now();
    while succeeded + failed + dead + no_delivery < sent as usize {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{succeeded} + {failed} + {dead} outcomes and {no_delivery} jobs naming no queue for {sent} messages; log:\n{}",
            server.log_text()
        );
        succeeded += drain_labelled(&sqs, &success).await.len();
        failed += drain_labelled(&sqs, &failure).await.len();
        dead = std::fs::read_to_string(&dead_letters)
            .unwrap_or_default()
            .lines()
            .count();
    }
    assert!(
        !server.log_text().contains("panicked"),
        "{}",
        server.log_text()
    );
    write_report(
        "generated-sqs.txt",
        &format!(
            "generated inputs, SQS messages: {sent} consumed: {succeeded} succeeded, {failed} failed or refused (failure queue), {dead} dead-lettered (no failure queue named), {no_delivery} valid jobs naming no queue, 0 left, 0 panics"
        ),
    );
}
