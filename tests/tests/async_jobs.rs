//! Async jobs through the real server: cancel (embedded and durable),
//! idempotent submits (one process, and two sharing a DynamoDB table), the
//! job stores' TTL, and dead letters to an SQS queue with the file as the
//! fallback. SQS and DynamoDB are moto's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use modalkit_core::settings::AppSettings;
use modalkit_server::ServerOptions;
use modalkit_tests::moto::{Moto, collect_messages, unique_queue};
use modalkit_tests::support::{
    TestServer, client, config_yaml, echo_settings, echo_settings_with, free_port, post_json,
    settings_from_yaml,
};
use serde_json::{Value, json};

const CANCELLED: &str = "the job was cancelled before it was computed";

async fn submit(http: &reqwest::Client, server: &TestServer, body: &Value) -> String {
    let (status, reply) = post_json(http, &server.url("/predict_async"), body).await;
    assert_eq!(status, 200, "{reply}");
    reply["job_id"].as_str().unwrap().to_owned()
}

async fn job(http: &reqwest::Client, server: &TestServer, id: &str) -> (u16, Value) {
    let reply = http
        .get(server.url(&format!("/jobs/{id}")))
        .send()
        .await
        .unwrap();
    (reply.status().as_u16(), reply.json().await.unwrap())
}

/// Polls until the job's status is one of `wanted`.
async fn wait_for(http: &reqwest::Client, server: &TestServer, id: &str, wanted: &[&str]) -> Value {
    let started = Instant::now();
    loop {
        let (status, record) = job(http, server, id).await;
        if status == 200 && wanted.contains(&record["status"].as_str().unwrap_or_default()) {
            return record;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "job {id} stayed {record}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cancel(http: &reqwest::Client, server: &TestServer, id: &str) -> (u16, Value) {
    let reply = http
        .post(server.url(&format!("/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    (reply.status().as_u16(), reply.json().await.unwrap())
}

async fn submit_with_key(
    http: &reqwest::Client,
    server: &TestServer,
    key: &str,
    body: &Value,
) -> (u16, Value) {
    let reply = http
        .post(server.url("/predict_async"))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    (reply.status().as_u16(), reply.json().await.unwrap())
}

fn one_at_a_time(app: &mut AppSettings) {
    app.batch_config.max_batch_size = 1;
    app.batch_config.wait_ms = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_cancel_withdraws_a_queued_job_and_refuses_a_running_one() {
    let server = TestServer::start(echo_settings_with("echo", one_at_a_time)).await;
    let http = client();
    let queues = json!({"success_queue": "done", "failure_queue": "failed"});
    let envelope = |message: Value| {
        let mut body = queues.clone();
        body["message"] = message;
        body
    };
    let slow = submit(
        &http,
        &server,
        &envelope(json!({"text": "slow", "sleep_ms": 700})),
    )
    .await;
    wait_for(&http, &server, &slow, &["running"]).await;
    let queued = submit(&http, &server, &envelope(json!({"text": "never"}))).await;
    assert_eq!(job(&http, &server, &queued).await.1["status"], "queued");

    let (status, record) = cancel(&http, &server, &queued).await;
    assert_eq!(
        (status, record["status"].as_str()),
        (200, Some("cancelled")),
        "{record}"
    );
    assert_eq!(record["error"], CANCELLED);
    let (status, body) = cancel(&http, &server, &slow).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "job_conflict");
    assert_eq!(body["error"]["details"]["status"], "running");

    let done = wait_for(&http, &server, &slow, &["succeeded"]).await;
    assert_eq!(done["output"]["echo"], "SLOW");
    let (status, body) = cancel(&http, &server, &slow).await;
    assert_eq!(
        (status, body["error"]["details"]["status"].as_str()),
        (409, Some("succeeded"))
    );
    assert_eq!(
        job(&http, &server, &queued).await.1["status"],
        "cancelled",
        "cancelled is final"
    );

    // The cancelled job was never computed: one success, one cancellation.
    let successes = server.queue.peek("done");
    assert_eq!(successes.len(), 1, "{successes:?}");
    let failures = server.queue.peek("failed");
    assert_eq!(failures.len(), 1, "{failures:?}");
    let failure: Value = serde_json::from_str(&failures[0]).unwrap();
    assert_eq!(failure["status"], "error");
    assert_eq!(failure["error"], CANCELLED);
    assert_eq!(failure["original_message"]["message"]["text"], "never");

    let (status, body) = cancel(&http, &server, "6f1c1d8e-7d0a-4a43-9a53-1f1a8c1f0b11").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("job_not_found"))
    );
    let (status, body) = cancel(&http, &server, "nope").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_job_id"))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_job_and_computes_once() {
    let server = TestServer::start(echo_settings(&["echo"])).await;
    let http = client();
    let body = json!({"message": {"text": "once"}, "success_queue": "once"});
    let (status, first) = submit_with_key(&http, &server, "order-42", &body).await;
    assert_eq!(status, 200, "{first}");
    let (status, second) = submit_with_key(&http, &server, "order-42", &body).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(
        first["job_id"], second["job_id"],
        "same key, same body: same job"
    );
    let id = first["job_id"].as_str().unwrap();
    wait_for(&http, &server, id, &["succeeded"]).await;
    let (_, third) = submit_with_key(&http, &server, "order-42", &body).await;
    assert_eq!(third["job_id"], first["job_id"], "also after it ended");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server.queue.peek("once").len(),
        1,
        "computed and delivered once"
    );

    let other = json!({"message": {"text": "twice"}, "success_queue": "once"});
    let (status, reply) = submit_with_key(&http, &server, "order-42", &other).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"]["code"], "idempotency_key_reused");
    assert_eq!(reply["error"]["details"]["job_id"], first["job_id"]);
    let (status, reply) = submit_with_key(&http, &server, &"k".repeat(256), &other).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (400, Some("invalid_idempotency_key"))
    );
    // A request the body check refuses does not use up its key.
    let (status, _) =
        submit_with_key(&http, &server, "fresh", &json!({"message": {"text": ""}})).await;
    assert_eq!(status, 422);
    let (status, _) = submit_with_key(&http, &server, "fresh", &other).await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn the_memory_store_forgets_a_job_after_its_ttl() {
    let server = TestServer::start(echo_settings_with("echo", |app| {
        app.server_config.job_ttl_seconds = 1;
    }))
    .await;
    let http = client();
    let id = submit(&http, &server, &json!({"message": {"text": "short-lived"}})).await;
    let record = wait_for(&http, &server, &id, &["succeeded"]).await;
    assert!(record["created_at"].as_f64().unwrap() <= record["updated_at"].as_f64().unwrap());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, body) = job(&http, &server, &id).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("job_not_found"))
    );
    server.shutdown().await;
}

fn durable_yaml(input: &str, table: &str, extra: &str) -> String {
    config_yaml(
        "echo",
        &format!(
            "  batch_config: {{max_batch_size: 1, wait_ms: 0}}\n  queue_config:\n    backend: sqs\n    input_queue: {input}\n    input_wait_seconds: 1\n    input_max_in_flight: 1\n    job_store: dynamodb\n    job_table: {table}\n{extra}"
        ),
    )
}

async fn durable_server(moto: &Moto, yaml: &str) -> TestServer {
    let options = ServerOptions {
        aws_config: Some(moto.aws_config()),
        ..Default::default()
    };
    TestServer::builder(settings_from_yaml(yaml))
        .options(options)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_cancel_skips_a_job_still_in_the_input_queue() {
    let moto = Moto::shared();
    let (input, table, done, failed) = (
        unique_queue("cancel-in"),
        unique_queue("cancel-jobs"),
        unique_queue("cancel-ok"),
        unique_queue("cancel-err"),
    );
    let server = durable_server(moto, &durable_yaml(&input, &table, "")).await;
    let http = client();
    let envelope = |message: Value| json!({"message": message, "success_queue": done, "failure_queue": failed});
    let slow = submit(
        &http,
        &server,
        &envelope(json!({"text": "slow", "sleep_ms": 1500})),
    )
    .await;
    wait_for(&http, &server, &slow, &["running"]).await;
    let queued = submit(&http, &server, &envelope(json!({"text": "never"}))).await;
    let (status, record) = cancel(&http, &server, &queued).await;
    assert_eq!(
        (status, record["status"].as_str()),
        (200, Some("cancelled")),
        "{record}"
    );
    let (status, body) = cancel(&http, &server, &slow).await;
    assert_eq!(
        (status, body["error"]["details"]["status"].as_str()),
        (409, Some("running"))
    );

    // The consumer takes the cancelled job's message, skips it and says so.
    let failures = collect_messages(&moto.sqs(), &failed, 1, Duration::from_secs(20)).await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    let failure: Value = serde_json::from_str(&failures[0]).unwrap();
    assert_eq!(
        (
            failure["error"].as_str(),
            failure["original_message"]["message"]["text"].as_str()
        ),
        (Some(CANCELLED), Some("never"))
    );
    wait_for(&http, &server, &slow, &["succeeded"]).await;
    let successes = collect_messages(&moto.sqs(), &done, 2, Duration::from_secs(3)).await;
    let echoes: Vec<Value> = successes
        .iter()
        .map(|b| serde_json::from_str::<Value>(b).unwrap()["echo"].clone())
        .collect();
    assert_eq!(
        echoes,
        vec![json!("SLOW")],
        "the cancelled job was never computed"
    );
    assert_eq!(job(&http, &server, &queued).await.1["status"], "cancelled");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_jobs_keys_and_expiry_through_dynamodb() {
    let moto = Moto::shared();
    let (input, table, done) = (
        unique_queue("shared-in"),
        unique_queue("shared-jobs"),
        unique_queue("shared-ok"),
    );
    let yaml = durable_yaml(&input, &table, "  server_config: {job_ttl_seconds: 2}");
    let first = durable_server(moto, &yaml).await;
    let second = durable_server(moto, &yaml).await;
    let http = client();
    let body = json!({"message": {"text": "shared"}, "success_queue": done});
    let (status, a) = submit_with_key(&http, &first, "shared-key", &body).await;
    assert_eq!(status, 200, "{a}");
    let (status, b) = submit_with_key(&http, &second, "shared-key", &body).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(
        a["job_id"], b["job_id"],
        "the other container knows the key"
    );
    let other = json!({"message": {"text": "other"}, "success_queue": done});
    let (status, reply) = submit_with_key(&http, &second, "shared-key", &other).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );

    let id = a["job_id"].as_str().unwrap();
    let record = wait_for(&http, &second, id, &["succeeded"]).await;
    assert_eq!(record["output"]["echo"], "SHARED");
    assert_eq!(
        job(&http, &first, id).await.1,
        record,
        "both containers read one record"
    );
    let delivered = collect_messages(&moto.sqs(), &done, 2, Duration::from_secs(4)).await;
    assert_eq!(delivered.len(), 1, "computed once: {delivered:?}");

    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(job(&http, &first, &unknown).await.0, 404);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    for server in [&first, &second] {
        let (status, body) = job(&http, server, id).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("job_not_found")),
            "expired after the TTL"
        );
    }
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test]
async fn dead_letters_go_to_the_queue_and_fall_back_to_the_file() {
    let moto = Moto::shared();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dead.jsonl");
    let dead_letters = unique_queue("dead");
    // The result goes to a webhook nobody listens on, with one attempt:
    // undeliverable at once.
    let unreachable = format!("127.0.0.1:{}", free_port());
    let yaml = |dead_letter_queue: &str| {
        config_yaml(
            "echo",
            &format!(
                "  queue_config: {{backend: sqs, max_attempts: 1, dead_letter_queue: '{dead_letter_queue}', dead_letter_path: '{}', webhook_allowed_hosts: ['{unreachable}']}}",
                file.display()
            ),
        )
    };
    let http = client();
    let destination = format!("http://{unreachable}/results");
    let body = json!({"message": {"text": "lost?"}, "success_queue": destination});

    let server = durable_server(moto, &yaml(&dead_letters)).await;
    let id = submit(&http, &server, &body).await;
    wait_for(&http, &server, &id, &["succeeded"]).await;
    let records = collect_messages(&moto.sqs(), &dead_letters, 1, Duration::from_secs(10)).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let record: Value = serde_json::from_str(&records[0]).unwrap();
    assert_eq!(record["queue"], json!(destination));
    assert_eq!(record["job_id"], json!(id));
    assert_eq!(record["message"]["echo"], "LOST?");
    assert!(!file.exists(), "the queue took it; the file stays empty");
    server.shutdown().await;

    // When the dead-letter queue itself refuses (SQS takes no such name),
    // the file keeps the record.
    let server = durable_server(moto, &yaml("also not valid!")).await;
    let id = submit(&http, &server, &body).await;
    wait_for(&http, &server, &id, &["succeeded"]).await;
    let started = Instant::now();
    while !file.exists() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (line["job_id"].as_str(), line["message"]["echo"].as_str()),
        (Some(id.as_str()), Some("LOST?"))
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_jobs_run_through_a_fifo_input_queue() {
    let moto = Moto::shared();
    let input = format!("{}.fifo", unique_queue("fifo-in"));
    let (table, done) = (unique_queue("fifo-jobs"), unique_queue("fifo-ok"));
    let server = durable_server(moto, &durable_yaml(&input, &table, "")).await;
    let http = client();
    let mut ids = Vec::new();
    for i in 0..5 {
        let body = json!({"message": {"text": format!("f{i}")}, "success_queue": done});
        ids.push(submit(&http, &server, &body).await);
    }
    for (i, id) in ids.iter().enumerate() {
        let record = wait_for(&http, &server, id, &["succeeded"]).await;
        assert_eq!(record["output"]["echo"], json!(format!("F{i}")));
    }
    let delivered = collect_messages(&moto.sqs(), &done, 5, Duration::from_secs(10)).await;
    assert_eq!(delivered.len(), 5, "{delivered:?}");
    server.shutdown().await;
}
