//! Nothing accepted is lost when SQS fails: results wait out an outage and
//! arrive; past the retry budget they are dead-lettered; a SIGTERM during
//! async load ends every accepted job in a queue or the dead-letter file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use modalkit_server::ServerOptions;
use modalkit_tests::moto::{Moto, collect_messages, unique_queue};
use modalkit_tests::support::{
    ServerProcess, TestServer, client, echoes, get_json, post_json, settings_from_yaml,
};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_modalkit-test-server");

fn dead_letters(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn submit_async(
    http: &reqwest::Client,
    base: &str,
    texts: impl Iterator<Item = String>,
    ok: &str,
    err: &str,
    sleep_ms: u64,
) -> BTreeSet<String> {
    let mut accepted = BTreeSet::new();
    for text in texts {
        let body = json!({"message": {"text": text, "sleep_ms": sleep_ms}, "success_queue": ok, "failure_queue": err});
        let (status, reply) = post_json(http, &format!("{base}/predict_async"), &body).await;
        assert_eq!(status, 200, "{reply}");
        accepted.insert(text.to_uppercase());
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_wait_out_an_sqs_outage_and_all_arrive() {
    let mut moto = Moto::start();
    let settings = settings_from_yaml(
        "app_settings:\n  app_prefix: outage\n  queue_config: {backend: sqs, max_attempts: 60, initial_backoff_ms: 100, max_backoff_ms: 1000, max_delivery_seconds: 120}\nmodel_settings:\n  model_entries:\n    echo: {}\n",
    );
    let options = ServerOptions {
        aws_config: Some(moto.aws_config()),
        ..Default::default()
    };
    let server = TestServer::builder(settings).options(options).start().await;
    let queue = unique_queue("after-outage");
    moto.stop();
    let accepted = submit_async(
        &client(),
        &server.base_url,
        (0..200).map(|i| format!("o{i}")),
        &queue,
        "",
        0,
    )
    .await;
    assert_eq!(accepted.len(), 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    moto.restart();
    let bodies = collect_messages(&moto.sqs(), &queue, 200, Duration::from_secs(90)).await;
    assert_eq!(
        echoes(&bodies),
        accepted,
        "every accepted result arrived after the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_past_the_retry_budget_are_dead_lettered() {
    let mut moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let dlq = dir.path().join("dead.jsonl");
    let settings = settings_from_yaml(&format!(
        "app_settings:\n  app_prefix: budget\n  queue_config: {{backend: sqs, max_attempts: 3, initial_backoff_ms: 50, max_backoff_ms: 100, max_delivery_seconds: 2, dead_letter_path: '{}'}}\nmodel_settings:\n  model_entries:\n    echo: {{}}\n",
        dlq.display()
    ));
    let options = ServerOptions {
        aws_config: Some(moto.aws_config()),
        ..Default::default()
    };
    let server = TestServer::builder(settings).options(options).start().await;
    moto.stop();
    let queue = unique_queue("never");
    let http = client();
    let mut job_ids = Vec::new();
    let mut accepted = BTreeSet::new();
    for i in 0..30 {
        let body = json!({"message": {"text": format!("d{i}")}, "success_queue": queue});
        let (status, reply) = post_json(&http, &server.url("/predict_async"), &body).await;
        assert_eq!(status, 200);
        job_ids.push(reply["job_id"].as_str().unwrap().to_owned());
        accepted.insert(format!("D{i}"));
    }
    let started = Instant::now();
    for id in &job_ids {
        loop {
            let job: Value = get_json(&http, &server.url(&format!("/jobs/{id}"))).await;
            if job["status"] == "succeeded" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "delivery never gave up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let records = dead_letters(&dlq);
    assert_eq!(records.len(), 30);
    let lettered: BTreeSet<String> = records
        .iter()
        .map(|r| {
            assert_eq!(r["queue"], queue.as_str());
            assert!(r["attempts"].as_u64().unwrap() >= 1);
            assert!(!r["error"].as_str().unwrap().is_empty());
            r["message"]["echo"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(lettered, accepted);
}

fn write_config(dir: &Path, yaml: &str) -> std::path::PathBuf {
    let path = dir.join("modalkit.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_async_load_ends_every_job_in_a_queue_or_the_dead_letter_file() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let dlq = dir.path().join("dead.jsonl");
    // A short grace: the drain cannot compute everything, so some items fail
    // (their DelayedFailure goes to the failure queue) and the rest succeed.
    let config = write_config(
        dir.path(),
        &format!(
            "app_settings:\n  app_prefix: term\n  batch_config: {{max_batch_size: 4, wait_ms: 0}}\n  queue_config: {{backend: sqs, dead_letter_path: '{}'}}\n  server_config: {{shutdown_grace_seconds: 0.6}}\nmodel_settings:\n  model_entries:\n    echo: {{}}\n",
            dlq.display()
        ),
    );
    let mut server = ServerProcess::spawn(
        BINARY.as_ref(),
        &config,
        &moto.process_env(),
        dir.path().join("server.log"),
    );
    let (ok, err) = (unique_queue("term-ok"), unique_queue("term-err"));
    let accepted = submit_async(
        &client(),
        &server.base_url,
        (0..100).map(|i| format!("t{i}")),
        &ok,
        &err,
        50,
    )
    .await;
    server.signal("TERM");
    assert_eq!(
        server.wait_exit(Duration::from_secs(60)),
        Some(0),
        "log:\n{}",
        server.log_text()
    );

    let successes = echoes(&collect_messages(&moto.sqs(), &ok, 100, Duration::from_secs(5)).await);
    let failures: BTreeSet<String> =
        collect_messages(&moto.sqs(), &err, 100, Duration::from_secs(5))
            .await
            .iter()
            .map(|b| {
                let failure: Value = serde_json::from_str(b).unwrap();
                assert!(
                    failure["error"].as_str().unwrap().contains("shut down"),
                    "{failure}"
                );
                failure["original_message"]["message"]["text"]
                    .as_str()
                    .unwrap()
                    .to_uppercase()
            })
            .collect();
    // A dead-lettered record is a success output (echo) or a DelayedFailure.
    let lettered: BTreeSet<String> = dead_letters(&dlq)
        .iter()
        .map(|r| match r["message"]["echo"].as_str() {
            Some(echo) => echo.to_owned(),
            None => r["message"]["original_message"]["message"]["text"]
                .as_str()
                .unwrap()
                .to_uppercase(),
        })
        .collect();
    let counts = format!(
        "{} succeeded, {} failed, {} dead-lettered",
        successes.len(),
        failures.len(),
        lettered.len()
    );
    assert!(
        !successes.is_empty(),
        "some jobs finished during the drain: {counts}\n{}",
        server.log_text()
    );
    assert!(
        !failures.is_empty(),
        "the grace period cut the drain short: {counts}"
    );
    let ended: BTreeSet<String> = successes
        .union(&failures)
        .chain(lettered.iter())
        .cloned()
        .collect();
    assert_eq!(
        ended, accepted,
        "every accepted job ended in a queue or the dead-letter file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_sqs_down_dead_letters_what_is_left() {
    let mut moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let dlq = dir.path().join("dead.jsonl");
    let config = write_config(
        dir.path(),
        &format!(
            "app_settings:\n  app_prefix: down\n  queue_config: {{backend: sqs, max_attempts: 100, max_delivery_seconds: 600, dead_letter_path: '{}'}}\n  server_config: {{shutdown_grace_seconds: 2}}\nmodel_settings:\n  model_entries:\n    echo: {{}}\n",
            dlq.display()
        ),
    );
    let mut server = ServerProcess::spawn(
        BINARY.as_ref(),
        &config,
        &moto.process_env(),
        dir.path().join("server.log"),
    );
    moto.stop();
    let accepted = submit_async(
        &client(),
        &server.base_url,
        (0..20).map(|i| format!("x{i}")),
        &unique_queue("gone"),
        "",
        0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("TERM");
    let started = Instant::now();
    assert_eq!(
        server.wait_exit(Duration::from_secs(30)),
        Some(0),
        "log:\n{}",
        server.log_text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the drain respected its grace period"
    );
    let lettered: BTreeSet<String> = dead_letters(&dlq)
        .iter()
        .map(|r| r["message"]["echo"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        lettered, accepted,
        "every undelivered result was dead-lettered at shutdown"
    );
}
