//! Async results POSTed to webhook URLs, against a real local receiver: the
//! body is the queue message's bytes, signed per Standard Webhooks (checked
//! here with an independent HMAC), retried after a 503 with the same
//! `webhook-id`, dead-lettered after a 4xx; hosts off the allow-list are
//! refused at submit; a redirect is never followed; internal addresses are
//! reached only when listed by name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use modalkit_tests::support::{TestServer, client, post_json, settings_from_yaml};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the receiver saw: (path, webhook-id, signature valid, body, answered).
type Seen = Arc<Mutex<Vec<(String, String, bool, String, u16)>>>;

fn valid_signature(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let key = STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

async fn receive(
    State(seen): State<Seen>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_owned();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut seen = seen.lock().unwrap();
    let earlier = seen
        .iter()
        .filter(|(p, i, ..)| *p == path && *i == id)
        .count();
    // /flaky answers 503 once per message, /gone always 410.
    let status = match (path.as_str(), earlier) {
        ("/flaky", 0) => StatusCode::SERVICE_UNAVAILABLE,
        ("/gone", _) => StatusCode::GONE,
        _ => StatusCode::OK,
    };
    let valid = valid_signature(&headers, &body);
    seen.push((
        path,
        id,
        valid,
        String::from_utf8_lossy(&body).into_owned(),
        status.as_u16(),
    ));
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_signed_posts_retried_after_503_and_dead_lettered_after_4xx() {
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/{*path}", post(receive))
        .with_state(Arc::clone(&seen));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.jsonl");
    let yaml = format!(
        "app_settings:\n  app_prefix: hooks\n  batch_config: {{max_batch_size: 1, wait_ms: 0}}\n  queue_config:\n    backend: memory\n    webhook_secret: {SECRET}\n    webhook_allowed_hosts: ['{receiver}']\n    initial_backoff_ms: 50\n    max_attempts: 4\n    dead_letter_path: '{}'\nmodel_settings:\n  model_entries:\n    echo: {{}}\n",
        dead.display()
    );
    let server = TestServer::start(settings_from_yaml(&yaml)).await;
    let http = client();
    let hook = |path: &str| format!("http://{receiver}{path}");
    let body = json!({"message": {"text": "hooked"}, "success_queue": hook("/flaky"), "failure_queue": hook("/flaky"), "meta": {"n": 1}});
    let (status, reply) = post_json(&http, &server.url("/predict_async"), &body).await;
    assert_eq!(status, 200, "{reply}");
    let job_id = reply["job_id"].as_str().unwrap().to_owned();
    let failing =
        json!({"message": {"text": "bad", "fail": "item"}, "failure_queue": hook("/gone")});
    let (status, _) = post_json(&http, &server.url("/predict_async"), &failing).await;
    assert_eq!(status, 200);

    let started = Instant::now();
    while (seen.lock().unwrap().len() < 3 || !dead.exists())
        && started.elapsed() < Duration::from_secs(15)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let flaky: Vec<_> = seen.iter().filter(|(p, ..)| p == "/flaky").collect();
    assert_eq!(flaky.len(), 2, "one 503, then delivered: {seen:?}");
    assert_eq!((flaky[0].4, flaky[1].4), (503, 200));
    assert!(
        flaky
            .iter()
            .all(|(_, id, valid, ..)| *valid && *id == job_id),
        "signed, and the id is the job's on every attempt: {flaky:?}"
    );
    assert_eq!(
        flaky[1].3,
        r#"{"status":"success","echo":"HOOKED","batch_size":1,"worker":0,"meta":{"n":1}}"#
    );

    let gone: Vec<_> = seen.iter().filter(|(p, ..)| p == "/gone").collect();
    assert_eq!(gone.len(), 1, "a 4xx is final: no retry: {seen:?}");
    let record: Value = serde_json::from_str(
        std::fs::read_to_string(&dead)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(record["queue"], hook("/gone"));
    assert!(
        record["error"].as_str().unwrap().contains("410"),
        "{record}"
    );

    // A host off the allow-list is refused when the job is submitted.
    let elsewhere =
        json!({"message": {"text": "x"}, "success_queue": "http://169.254.169.254/latest"});
    let (status, reply) = post_json(&http, &server.url("/predict_async"), &elsewhere).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"]["details"]["path"], "success_queue");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("webhook_allowed_hosts"),
        "{reply}"
    );
    server.shutdown().await;
}

/// A receiver that counts the POSTs it gets and answers each with `answer`.
async fn counting_receiver(
    bind: &str,
    answer: impl Fn() -> axum::response::Response + Clone + Send + Sync + 'static,
) -> (std::net::SocketAddr, Arc<Mutex<usize>>) {
    let hits = Arc::new(Mutex::new(0usize));
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let address = listener.local_addr().unwrap();
    let counter = Arc::clone(&hits);
    let app = Router::new().route(
        "/{*path}",
        post(move || {
            let counter = Arc::clone(&counter);
            let answer = answer.clone();
            async move {
                *counter.lock().unwrap() += 1;
                answer()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, hits)
}

/// Waits until the dead-letter file holds a record, and returns it.
async fn dead_letter(path: &std::path::Path) -> Value {
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(line) = text.lines().next()
        {
            return serde_json::from_str(line).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing was dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Submits an async job whose result goes to `success_queue`.
async fn submit(
    http: &reqwest::Client,
    server: &TestServer,
    text: &str,
    success_queue: impl Into<String>,
) -> (u16, Value) {
    let body = json!({"message": {"text": text}, "success_queue": success_queue.into()});
    post_json(http, &server.url("/predict_async"), &body).await
}

fn hooks_yaml(allowed: &str, dead_letters: &std::path::Path) -> String {
    format!(
        "app_settings:\n  app_prefix: hooks\n  batch_config: {{max_batch_size: 1, wait_ms: 0}}\n  queue_config:\n    backend: memory\n    webhook_allowed_hosts: {allowed}\n    initial_backoff_ms: 20\n    max_attempts: 3\n    dead_letter_path: '{}'\nmodel_settings:\n  model_entries:\n    echo: {{}}\n",
        dead_letters.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_off_the_allow_list_is_not_followed() {
    // B (127.0.0.2, not listed) would receive the result if the server
    // followed A's redirect; A (listed) answers every POST with a 307 to B.
    let (elsewhere, elsewhere_hits) =
        counting_receiver("127.0.0.2:0", || StatusCode::OK.into_response()).await;
    let target = format!("http://{elsewhere}/stolen");
    let (allowed, allowed_hits) = counting_receiver("127.0.0.1:0", move || {
        (
            StatusCode::TEMPORARY_REDIRECT,
            [(axum::http::header::LOCATION, target.clone())],
        )
            .into_response()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.jsonl");
    let server = TestServer::start(settings_from_yaml(&hooks_yaml(
        &format!("['{allowed}']"),
        &dead,
    )))
    .await;
    let http = client();
    // Straight to B: refused at submit.
    let (status, body) = submit(&http, &server, "x", format!("http://{elsewhere}/direct")).await;
    assert_eq!(status, 422, "{body}");
    // Through A's redirect: accepted, never delivered to B.
    let (status, body) = submit(
        &http,
        &server,
        "secret output",
        format!("http://{allowed}/hook"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let record = dead_letter(&dead).await;
    assert_eq!(
        *elsewhere_hits.lock().unwrap(),
        0,
        "the redirect was followed"
    );
    assert_eq!(
        *allowed_hits.lock().unwrap(),
        1,
        "a redirect is final, not retried"
    );
    assert!(
        record["error"].as_str().unwrap().contains("redirect"),
        "{record}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_addresses_need_an_explicit_listing() {
    let (receiver, hits) =
        counting_receiver("127.0.0.1:0", || StatusCode::OK.into_response()).await;
    let port = receiver.port();
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.jsonl");
    // `*` allows any public host, not loopback, private or link-local ones.
    let server = TestServer::start(settings_from_yaml(&hooks_yaml("['*']", &dead))).await;
    let http = client();
    for internal in [
        format!("http://127.0.0.1:{port}/hook"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://10.1.2.3/hook".to_owned(),
        "http://[::1]:9/hook".to_owned(),
    ] {
        let (status, body) = submit(&http, &server, "x", internal.clone()).await;
        assert_eq!(status, 422, "{internal}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("internal address"),
            "{body}"
        );
    }
    // A name that resolves to loopback: refused when it is sent, and
    // dead-lettered, never POSTed.
    let (status, body) = submit(&http, &server, "x", format!("http://localhost:{port}/hook")).await;
    assert_eq!(status, 200, "{body}");
    let record = dead_letter(&dead).await;
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("internal address"),
        "{record}"
    );
    assert_eq!(*hits.lock().unwrap(), 0);
    server.shutdown().await;

    // Listed explicitly, the same loopback receiver is called.
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.jsonl");
    let server = TestServer::start(settings_from_yaml(&hooks_yaml(
        &format!("['localhost:{port}']"),
        &dead,
    )))
    .await;
    let (status, body) = submit(&http, &server, "x", format!("http://localhost:{port}/hook")).await;
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    while *hits.lock().unwrap() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!dead.exists(), "nothing dead-lettered");
    server.shutdown().await;
}
