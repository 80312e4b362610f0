//! The SQS input consumer with real server processes against moto: two
//! processes share 500 messages and leave none behind; malformed messages
//! end in the failure queue (or the dead-letter file) and are deleted; a
//! message whose result this binary cannot deliver is refused and left on
//! the queue; a process killed mid-batch leaves its messages to the other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use modalkit_tests::moto::{Moto, collect_messages, unique_queue};
use modalkit_tests::support::{ServerProcess, echoes, metric_value};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_modalkit-test-server");

fn config(dir: &Path, input_queue: &str, visibility: u32) -> PathBuf {
    let path = dir.join("modalkit.yaml");
    std::fs::write(
        &path,
        format!(
            "app_settings:\n  app_prefix: consumer\n  batch_config: {{max_batch_size: 8, wait_ms: 2}}\n  queue_config:\n    backend: sqs\n    input_queue: {input_queue}\n    input_visibility_timeout_seconds: {visibility}\n    input_wait_seconds: 1\n    dead_letter_path: '{}'\nmodel_settings:\n  model_entries:\n    echo: {{}}\n",
            dir.join("dead.jsonl").display()
        ),
    )
    .unwrap();
    path
}

async fn create_queue(client: &aws_sdk_sqs::Client, name: &str) -> String {
    client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned()
}

async fn send_bodies(client: &aws_sdk_sqs::Client, url: &str, bodies: &[String]) {
    for (chunk_index, chunk) in bodies.chunks(10).enumerate() {
        let entries: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, body)| {
                SendMessageBatchRequestEntry::builder()
                    .id(format!("m{chunk_index}-{i}"))
                    .message_body(body)
                    .build()
                    .unwrap()
            })
            .collect();
        let sent = client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
        assert!(sent.failed().is_empty(), "{:?}", sent.failed());
    }
}

async fn messages_left(client: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    let attributes = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let map = attributes.attributes().unwrap();
    let get = |name: QueueAttributeName| {
        map.get(&name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    (
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

async fn wait_until_empty(client: &aws_sdk_sqs::Client, url: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        let left = messages_left(client, url).await;
        if left == (0, 0) {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "messages left in the input queue: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn batches_run(metrics: &str) -> f64 {
    metric_value(metrics, "modalkit_batch_size_count{model=\"echo\"}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_consume_500_messages_and_leave_none_behind() {
    let moto = Moto::shared();
    let client = moto.sqs();
    let (input, output) = (unique_queue("in"), unique_queue("out"));
    let input_url = create_queue(&client, &input).await;
    let bodies: Vec<String> = (0..500)
        .map(|i| {
            json!({"message": {"text": format!("c{i}"), "sleep_ms": 2}, "success_queue": output})
                .to_string()
        })
        .collect();
    send_bodies(&client, &input_url, &bodies).await;

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &input, 30);
    let a = ServerProcess::spawn(
        BINARY.as_ref(),
        &config,
        &moto.process_env(),
        dir.path().join("a.log"),
    );
    let b = ServerProcess::spawn(
        BINARY.as_ref(),
        &config,
        &moto.process_env(),
        dir.path().join("b.log"),
    );

    let results = collect_messages(&client, &output, 500, Duration::from_secs(120)).await;
    let echoes = echoes(&results);
    let expected: BTreeSet<String> = (0..500).map(|i| format!("C{i}")).collect();
    assert_eq!(echoes, expected, "500 results, none missing");
    wait_until_empty(&client, &input_url, Duration::from_secs(30)).await;

    let http = reqwest::Client::new();
    for server in [&a, &b] {
        let metrics = http
            .get(format!("{}/metrics", server.base_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            batches_run(&metrics) > 0.0,
            "a process did no work; the queue was not shared"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_messages_go_to_the_failure_queue_or_dead_letters_and_are_deleted() {
    let moto = Moto::shared();
    let client = moto.sqs();
    let (input, failed) = (unique_queue("in-bad"), unique_queue("failed"));
    let input_url = create_queue(&client, &input).await;
    let bodies = vec![
        json!({"message": {"text": 5}, "failure_queue": failed, "meta": {"case": "wrong type"}}).to_string(),
        json!({"message": {"text": ""}, "failure_queue": failed, "meta": {"case": "invalid"}}).to_string(),
        json!({"mesage": {"text": "typo"}, "failure_queue": failed, "meta": {"case": "not an AsyncInput"}}).to_string(),
        "this is not JSON at all".to_owned(),
    ];
    send_bodies(&client, &input_url, &bodies).await;
    let dir = tempfile::tempdir().unwrap();
    let _server = ServerProcess::spawn(
        BINARY.as_ref(),
        &config(dir.path(), &input, 30),
        &moto.process_env(),
        dir.path().join("s.log"),
    );

    let failures = collect_messages(&client, &failed, 3, Duration::from_secs(60)).await;
    let mut cases: Vec<(String, String)> = failures
        .iter()
        .map(|f| {
            let failure: Value = serde_json::from_str(f).unwrap();
            assert_eq!(failure["status"], "error");
            (
                failure["meta"]["case"].as_str().unwrap().to_owned(),
                failure["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 3, "{cases:?}");
    assert_eq!(cases[0].0, "invalid");
    assert!(cases[0].1.contains("text"), "{cases:?}");
    assert_eq!(cases[1].0, "not an AsyncInput");
    assert!(cases[1].1.contains("malformed message"), "{cases:?}");
    assert_eq!(cases[2].0, "wrong type");
    assert!(cases[2].1.contains("message.text"), "{cases:?}");

    let started = Instant::now();
    let dead = loop {
        let text = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap_or_default();
        if !text.is_empty() || started.elapsed() > Duration::from_secs(30) {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let record: Value = serde_json::from_str(
        dead.lines()
            .next()
            .expect("the non-JSON body was dead-lettered"),
    )
    .unwrap();
    assert_eq!(record["message"], "this is not JSON at all");
    assert_eq!(record["queue"], input.as_str());
    wait_until_empty(&client, &input_url, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_this_binary_cannot_deliver_is_refused_and_left_on_the_queue() {
    // No webhook host is allowed, so a message naming a URL cannot be
    // delivered here: it must be neither run nor dead-lettered, but left
    // for a container that can (or the queue's redrive policy), while the
    // message beside it runs.
    let moto = Moto::shared();
    let client = moto.sqs();
    let (input, output) = (unique_queue("in-refused"), unique_queue("out-refused"));
    let input_url = create_queue(&client, &input).await;
    let bodies = vec![
        json!({"message": {"text": "hooked"}, "success_queue": "http://169.254.169.254/latest"})
            .to_string(),
        json!({"message": {"text": "plain"}, "success_queue": output}).to_string(),
    ];
    send_bodies(&client, &input_url, &bodies).await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(
        BINARY.as_ref(),
        &config(dir.path(), &input, 2),
        &moto.process_env(),
        dir.path().join("s.log"),
    );
    let results = collect_messages(&client, &output, 1, Duration::from_secs(60)).await;
    assert_eq!(echoes(&results), BTreeSet::from(["PLAIN".to_owned()]));

    // Refused once, then again after its visibility timeout: it came back.
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let metrics = http
            .get(format!("{}/metrics", server.base_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metric_value(&metrics, "modalkit_input_messages_refused_total") >= 2.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the message was not refused twice:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (visible, hidden) = messages_left(&client, &input_url).await;
    assert_eq!(visible + hidden, 1, "the refused message is still queued");
    assert!(
        !dir.path().join("dead.jsonl").exists(),
        "nothing is dead-lettered for a refused message"
    );
    assert!(
        server.log_text().contains("webhook_allowed_hosts"),
        "the log says why: {}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_killed_mid_batch_leaves_its_messages_to_the_other() {
    let moto = Moto::shared();
    let client = moto.sqs();
    let (input, output) = (unique_queue("in-kill"), unique_queue("out-kill"));
    let input_url = create_queue(&client, &input).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &input, 3);
    let mut first = ServerProcess::spawn(
        BINARY.as_ref(),
        &config,
        &moto.process_env(),
        dir.path().join("first.log"),
    );

    let bodies: Vec<String> = (0..8)
        .map(|i| {
            json!({"message": {"text": format!("k{i}"), "sleep_ms": 4000}, "success_queue": output})
                .to_string()
        })
        .collect();
    send_bodies(&client, &input_url, &bodies).await;
    // Wait until the first process holds every message (they are invisible).
    let started = Instant::now();
    while messages_left(&client, &input_url).await != (0, 8) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the first process never took the messages"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // mid-batch: the 4 s predict is running
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));

    let _second = ServerProcess::spawn(
        BINARY.as_ref(),
        &config,
        &moto.process_env(),
        dir.path().join("second.log"),
    );
    let results = collect_messages(&client, &output, 8, Duration::from_secs(90)).await;
    let echoes = echoes(&results);
    assert_eq!(
        echoes,
        (0..8).map(|i| format!("K{i}")).collect::<BTreeSet<_>>()
    );
    wait_until_empty(&client, &input_url, Duration::from_secs(30)).await;
}
