//! SQS against a real SQS-API server (moto): `SqsQueue` sends and creates
//! queues, FIFO queues get group and deduplication ids, oversized messages
//! fail clearly, `/predict_async` results land in the named queues, and the
//! API key is read from SSM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use modalkit_queue::{
    Backoff, DeadLetterFile, Delivery, Labels, QueueBackend, QueueError, RetryPolicy, SqsQueue,
};
use modalkit_server::ServerOptions;
use modalkit_tests::moto::{Moto, collect_messages, unique_queue};
use modalkit_tests::support::{TestServer, client, post_json, settings_from_yaml};
use serde_json::{Value, json};

async fn queue_url(client: &aws_sdk_sqs::Client, name: &str) -> Option<String> {
    client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .ok()
        .and_then(|o| o.queue_url().map(str::to_owned))
}

/// Sends `body` as a message with an id of its own (FIFO queues deduplicate
/// by it), as the SQS backend's callers do.
/// An echo server whose results go to SQS on `moto`.
async fn sqs_server(moto: &Moto) -> TestServer {
    let settings = settings_from_yaml(
        "app_settings:\n  app_prefix: sqs\n  queue_config: {backend: sqs}\nmodel_settings:\n  model_entries:\n    echo: {}\n",
    );
    let options = ServerOptions {
        aws_config: Some(moto.aws_config()),
        ..Default::default()
    };
    TestServer::builder(settings).options(options).start().await
}

async fn send(sqs: &SqsQueue, queue: &str, body: &str) -> Result<(), QueueError> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    sqs.send(queue, body, &Labels::message(&id)).await
}

#[tokio::test]
async fn sqs_queue_creates_a_missing_queue_and_sends() {
    let moto = Moto::shared();
    let sqs = SqsQueue::from_config(&moto.aws_config());
    let name = unique_queue("results");
    assert!(
        queue_url(&moto.sqs(), &name).await.is_none(),
        "the queue does not exist yet"
    );
    send(&sqs, &name, r#"{"n":1}"#).await.unwrap();
    send(&sqs, &name, r#"{"n":2}"#).await.unwrap();
    assert!(
        queue_url(&moto.sqs(), &name).await.is_some(),
        "the queue was created"
    );
    let mut bodies = collect_messages(&moto.sqs(), &name, 2, Duration::from_secs(20)).await;
    bodies.sort();
    assert_eq!(bodies, vec![r#"{"n":1}"#, r#"{"n":2}"#]);
}

#[tokio::test]
async fn a_deleted_queue_is_recreated_on_the_next_send() {
    let moto = Moto::shared();
    let sqs = SqsQueue::from_config(&moto.aws_config());
    let name = unique_queue("vanishing");
    send(&sqs, &name, "first").await.unwrap();
    let url = queue_url(&moto.sqs(), &name).await.unwrap();
    moto.sqs()
        .delete_queue()
        .queue_url(&url)
        .send()
        .await
        .unwrap();
    send(&sqs, &name, "second").await.unwrap();
    assert_eq!(
        collect_messages(&moto.sqs(), &name, 1, Duration::from_secs(20)).await,
        vec!["second"]
    );
}

#[tokio::test]
async fn fifo_queues_get_group_and_deduplication_ids_and_keep_order() {
    let moto = Moto::shared();
    let sqs = SqsQueue::from_config(&moto.aws_config());
    let name = format!("{}.fifo", unique_queue("ordered"));
    for i in 0..5 {
        send(&sqs, &name, &format!("m{i}")).await.unwrap();
    }
    let client = moto.sqs();
    let url = queue_url(&client, &name).await.unwrap();
    let attributes = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::FifoQueue)
        .send()
        .await
        .unwrap();
    assert_eq!(
        attributes.attributes().unwrap()[&QueueAttributeName::FifoQueue],
        "true"
    );
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let received = client
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for message in received.messages() {
            let attrs = message.attributes().unwrap();
            assert_eq!(
                attrs[&MessageSystemAttributeName::MessageGroupId],
                modalkit_queue::FIFO_MESSAGE_GROUP
            );
            assert!(!attrs[&MessageSystemAttributeName::MessageDeduplicationId].is_empty());
            seen.push(message.body().unwrap().to_owned());
            client
                .delete_message()
                .queue_url(&url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    assert_eq!(seen, vec!["m0", "m1", "m2", "m3", "m4"]);
}

#[tokio::test]
async fn an_oversized_message_fails_clearly_and_is_dead_lettered_at_once() {
    let moto = Moto::shared();
    let sqs = std::sync::Arc::new(SqsQueue::from_config(&moto.aws_config()));
    let name = unique_queue("big");
    let huge = "x".repeat(300_000);
    match send(&sqs, &name, &huge).await {
        Err(
            err @ QueueError::TooLarge {
                size: 300_000,
                limit: 262_144,
                ..
            },
        ) => {
            assert!(!err.is_retryable());
            assert!(
                err.to_string().contains("exceeds the 262144-byte limit"),
                "{err}"
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    let dlq = dir.path().join("dead.jsonl");
    let policy = RetryPolicy {
        max_attempts: 5,
        backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(1)),
        max_total: Duration::from_secs(30),
    };
    let delivery = Delivery::new(sqs, policy, DeadLetterFile::new(&dlq));
    let started = std::time::Instant::now();
    let outcome = delivery
        .deliver(&name, &huge, &Labels::message("huge"))
        .await;
    assert_eq!(outcome, modalkit_queue::Outcome::DeadLettered);
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "no retries for a message that cannot fit"
    );
    let record: Value = serde_json::from_str(
        std::fs::read_to_string(&dlq)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(record["queue"], name);
    assert_eq!(record["attempts"], 1);
    assert!(record["error"].as_str().unwrap().contains("exceeds"));
}

#[tokio::test]
async fn predict_async_results_land_in_the_named_sqs_queues() {
    let moto = Moto::shared();
    let server = sqs_server(moto).await;
    let (ok_queue, err_queue) = (unique_queue("ok"), unique_queue("err"));
    let http = client();
    let good = json!({"message": {"text": "queued"}, "success_queue": ok_queue, "failure_queue": err_queue, "meta": {"id": "g"}});
    let bad = json!({"message": {"text": "sunk", "fail": "item"}, "success_queue": ok_queue, "failure_queue": err_queue, "meta": {"id": "b"}});
    assert_eq!(
        post_json(&http, &server.url("/predict_async"), &good)
            .await
            .0,
        200
    );
    assert_eq!(
        post_json(&http, &server.url("/predict_async"), &bad)
            .await
            .0,
        200
    );

    let successes = collect_messages(&moto.sqs(), &ok_queue, 1, Duration::from_secs(30)).await;
    assert_eq!(successes.len(), 1);
    let success: Value = serde_json::from_str(&successes[0]).unwrap();
    // Byte for byte as modalkit's model_dump_json(exclude={"error"}).
    assert_eq!(
        successes[0],
        format!(
            r#"{{"status":"success","echo":"QUEUED","batch_size":{},"worker":0,"meta":{{"id":"g"}}}}"#,
            success["batch_size"]
        )
    );
    let failures = collect_messages(&moto.sqs(), &err_queue, 1, Duration::from_secs(30)).await;
    assert_eq!(failures.len(), 1);
    // An item that failed alone: its error output, as modalkit sends it.
    assert_eq!(
        failures[0],
        r#"{"status":"error","error":"item 'sunk' was asked to fail","meta":{"id":"b"}}"#
    );
}

#[tokio::test]
async fn the_api_key_from_ssm_is_enforced_on_the_http_routes() {
    let moto = Moto::shared();
    let parameter = format!("/modalkit/{}/api-key", uuid::Uuid::new_v4().simple());
    let ssm = aws_sdk_ssm::Client::new(&moto.aws_config());
    ssm.put_parameter()
        .name(&parameter)
        .value("key-from-ssm-0042")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let settings = settings_from_yaml(&format!(
        "app_settings:\n  app_prefix: ssm\n  auth_config: {{ssm_key: '{parameter}'}}\nmodel_settings:\n  model_entries:\n    echo: {{}}\n"
    ));
    let options = ServerOptions {
        aws_config: Some(moto.aws_config()),
        ..Default::default()
    };
    let server = TestServer::builder(settings).options(options).start().await;
    let http = client();
    let without = http
        .post(server.url("/predict_sync"))
        .json(&json!({"text": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), 401);
    let wrong = http
        .post(server.url("/predict_sync"))
        .header("x-api-key", "key-from-yaml")
        .json(&json!({"text": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = http
        .post(server.url("/predict_sync"))
        .header("x-api-key", "key-from-ssm-0042")
        .json(&json!({"text": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(
        http.get(server.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn a_missing_ssm_parameter_fails_start_up_clearly() {
    let moto = Moto::shared();
    let mut settings = settings_from_yaml(
        "app_settings:\n  app_prefix: ssm\nmodel_settings:\n  model_entries:\n    echo: {}\n",
    );
    settings.app_settings.auth_config.ssm_key = Some("/modalkit/does-not-exist".into());
    let options = ServerOptions {
        aws_config: Some(moto.aws_config()),
        ..Default::default()
    };
    let error = match modalkit_server::Server::<modalkit_tests::pipeline::EchoPipeline>::build(
        settings, options,
    )
    .await
    {
        Ok(_) => panic!("start-up must fail without the parameter"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("/modalkit/does-not-exist"), "{error}");
}

#[tokio::test]
async fn a_queue_name_sqs_refuses_is_a_422_at_submit_and_a_dead_letter_at_once_on_send() {
    let moto = Moto::shared();
    let server = sqs_server(moto).await;
    for (field, name) in [("success_queue", "my results"), ("failure_queue", "x.y")] {
        let mut body = json!({"message": {"text": "never run"}, "success_queue": "fine"});
        body[field] = json!(name);
        let (status, reply) = post_json(&client(), &server.url("/predict_async"), &body).await;
        assert_eq!(status, 422, "{reply}");
        assert_eq!(reply["error"]["code"], "invalid_queue_name", "{reply}");
        assert_eq!(reply["error"]["details"]["path"], field, "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not a valid SQS queue name"),
            "{reply}"
        );
    }

    // A name that reaches a send anyway (a consumed message names it) is
    // refused for good: dead-lettered at the first attempt.
    let sqs = std::sync::Arc::new(SqsQueue::from_config(&moto.aws_config()));
    let err = send(&sqs, "no spaces allowed", "{}").await.unwrap_err();
    assert!(
        matches!(err, QueueError::Rejected { .. }) && !err.is_retryable(),
        "{err:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = RetryPolicy {
        max_attempts: 5,
        backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(1)),
        max_total: Duration::from_secs(30),
    };
    let delivery = Delivery::new(
        sqs,
        policy,
        DeadLetterFile::new(dir.path().join("dead.jsonl")),
    );
    let outcome = delivery
        .deliver("no spaces allowed", "{}", &Labels::message("m"))
        .await;
    assert_eq!(outcome, modalkit_queue::Outcome::DeadLettered);
}
