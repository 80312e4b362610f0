//! The HTTP API end to end: a real server on 127.0.0.1 and a real client.
//! Happy paths of every endpoint, bad requests with their exact 4xx and
//! JSON error, overload, deadlines, auth and metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use modalkit_core::settings::AppSettings;
use modalkit_tests::support::{
    TestServer, client, echo_settings, echo_settings_with, get_json, post_json, settings_from_yaml,
};
use serde_json::{Value, json};

async fn server(model: &str, adjust: impl FnOnce(&mut AppSettings)) -> TestServer {
    TestServer::start(echo_settings_with(model, adjust)).await
}

/// The server's `/metrics` text.
async fn scrape(client: &reqwest::Client, server: &TestServer) -> String {
    client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A per-model metric's value in `metrics`, e.g. `modalkit_queue_depth`.
fn model_metric(metrics: &str, name: &str, model: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{model=\"{model}\"}}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
}

async fn poll_job(client: &reqwest::Client, server: &TestServer, job_id: &str) -> Value {
    for _ in 0..200 {
        let job: Value = get_json(client, &server.url(&format!("/jobs/{job_id}"))).await;
        if job["status"] == "succeeded" || job["status"] == "failed" {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {job_id} never finished");
}

#[tokio::test]
async fn predict_sync_returns_modalkit_output() {
    let server = server("echo", |_| {}).await;
    let (status, body) = post_json(
        &client(),
        &server.url("/predict_sync"),
        &json!({"text": "hi", "repeat": 2}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": "success", "error": null, "echo": "HIHI", "batch_size": 1, "worker": 0})
    );
    // model_name may be given explicitly too.
    let (status, body) = post_json(
        &client(),
        &server.url("/predict_sync?model_name=echo"),
        &json!({"text": "x"}),
    )
    .await;
    assert_eq!((status, body["echo"].clone()), (200, json!("X")));
}

#[tokio::test]
async fn predict_sync_item_error_is_200_with_status_error_and_batch_failure_is_500() {
    let server = server("echo-fail", |_| {}).await;
    let (status, body) = post_json(
        &client(),
        &server.url("/predict_sync"),
        &json!({"text": "bad", "fail": "item"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": "error", "error": "item 'bad' was asked to fail"})
    );
    let (status, body) = post_json(
        &client(),
        &server.url("/predict_sync"),
        &json!({"text": "bad", "fail": "batch"}),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(body["error"]["code"], "pipeline_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad item")
    );
}

#[tokio::test]
async fn predict_batch_returns_results_in_order_and_isolates_failures() {
    let server = server("echo-batch", |app| {
        app.batch_config.max_batch_size = 8;
        app.batch_config.wait_ms = 50;
    })
    .await;
    let messages: Vec<Value> = (0..20)
        .map(|i| {
            if i == 7 {
                json!({"text": format!("m{i}"), "fail": "batch"})
            } else if i == 11 {
                json!({"text": format!("m{i}"), "fail": "item"})
            } else {
                json!({"text": format!("m{i}")})
            }
        })
        .collect();
    let (status, body) = post_json(
        &client(),
        &server.url("/predict_batch"),
        &Value::Array(messages),
    )
    .await;
    assert_eq!(status, 200);
    let results = body.as_array().unwrap();
    assert_eq!(results.len(), 20);
    for (i, result) in results.iter().enumerate() {
        match i {
            7 => assert_eq!(result["status"], "error", "{result}"),
            11 => assert_eq!(result["error"], "item 'm11' was asked to fail"),
            _ => {
                assert_eq!(result["status"], "success", "{i}: {result}");
                assert_eq!(result["echo"], format!("M{i}"));
            }
        }
    }
    assert!(
        results
            .iter()
            .any(|r| r["batch_size"].as_u64().unwrap_or(0) > 1),
        "items were batched"
    );
    let (status, body) = post_json(&client(), &server.url("/predict_batch"), &json!([])).await;
    assert_eq!((status, body), (200, json!([])));
}

#[tokio::test]
async fn predict_async_delivers_success_and_failure_and_tracks_the_job() {
    let server = server("echo-async", |_| {}).await;
    let http = client();
    let request = json!({"message": {"text": "later"}, "success_queue": "ok-q", "failure_queue": "err-q", "meta": {"trace": 42}});
    let (status, body) = post_json(&http, &server.url("/predict_async"), &request).await;
    assert_eq!(status, 200);
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    let job = poll_job(&http, &server, &job_id).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["model"], "echo-async");
    assert_eq!(job["output"]["echo"], "LATER");
    let delivered = server.queue.drain("ok-q");
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        delivered[0],
        r#"{"status":"success","echo":"LATER","batch_size":1,"worker":0,"meta":{"trace":42}}"#,
        "modalkit's bytes: no error field, meta last"
    );
    assert!(server.queue.peek("err-q").is_empty());

    let failing = json!({"message": {"text": "doomed", "fail": "item"}, "success_queue": "ok-q", "failure_queue": "err-q", "meta": {"n": 1}});
    let (status, body) = post_json(&http, &server.url("/predict_async"), &failing).await;
    assert_eq!(status, 200);
    let job = poll_job(&http, &server, body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"], "item 'doomed' was asked to fail");
    let failures = server.queue.drain("err-q");
    assert_eq!(failures.len(), 1);
    assert_eq!(
        failures[0],
        r#"{"status":"error","error":"item 'doomed' was asked to fail","meta":{"n":1}}"#,
        "an item that failed alone sends its error output"
    );
    assert!(server.queue.peek("ok-q").is_empty());

    // No queue named: the job is still tracked, nothing is sent.
    let (_, body) = post_json(
        &http,
        &server.url("/predict_async"),
        &json!({"message": {"text": "quiet"}}),
    )
    .await;
    let job = poll_job(&http, &server, body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded");
    assert!(server.queue.snapshot().is_empty());
}

#[tokio::test]
async fn health_ready_metrics_openapi_and_docs_answer() {
    let server = server("echo-meta", |_| {}).await;
    let http = client();
    let health = http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = http.get(server.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["device"], "cpu");
    assert_eq!(ready["models"]["echo-meta"]["state"], "serving");

    post_json(
        &http,
        &server.url("/predict_sync"),
        &json!({"text": "count me"}),
    )
    .await;
    let metrics = scrape(&http, &server).await;
    assert!(
        metrics.contains(r#"modalkit_batch_size_count{model="echo-meta"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"modalkit_http_requests_total{route="/predict_sync",method="POST",status="200"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("modalkit_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"modalkit_stage_duration_seconds_count{model="echo-meta",stage="predict"}"#
        )
    );
    assert!(metrics.contains(r#"modalkit_queue_wait_seconds_count{model="echo-meta"}"#));

    let doc: Value = get_json(&http, &server.url("/openapi.json")).await;
    assert_eq!(doc["openapi"], "3.1.0");
    // No key is configured: the document asks for none.
    let text = doc.to_string();
    assert!(!text.contains("securitySchemes"), "{text}");
    assert!(!text.contains("\"security\""), "{text}");
    assert!(doc["paths"]["/predict_sync"]["post"]["responses"]["401"].is_null());
    for path in [
        "/predict_sync",
        "/predict_batch",
        "/predict_async",
        "/jobs/{job_id}",
        "/ready",
    ] {
        assert!(doc["paths"][path].is_object(), "missing {path}");
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let input = schemas.get("EchoInput").expect("input schema");
    assert!(input["properties"]["text"].is_object());
    assert!(
        input["required"]
            .as_array()
            .unwrap()
            .contains(&json!("text"))
    );
    let docs = http.get(server.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("openapi.json"));
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let server = server("echo-rid", |_| {}).await;
    let http = client();
    let given = http
        .get(server.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "abc-123");
    let generated = http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(
        generated.headers()["x-request-id"].to_str().unwrap().len(),
        36
    );
}

/// One bad request: what is sent and the exact answer expected.
struct Bad {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    api_key: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// A field path the error must name, if any.
    names: Option<&'static str>,
}

fn bad(
    what: &'static str,
    path: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Bad {
    Bad {
        what,
        method: "POST",
        path,
        content_type: Some("application/json"),
        api_key: Some("test-api-key-123"),
        body: body.into(),
        status,
        code,
        names: None,
    }
}

fn bad_requests() -> Vec<Bad> {
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let deep_meta = format!(r#"{{"message": {{"text": "a"}}, "meta": {{"k": {deep}}}}}"#);
    let huge_array =
        Value::Array((0..51).map(|i| json!({"text": format!("t{i}")})).collect()).to_string();
    let oversized = json!({"text": "x".repeat(5000)}).to_string();
    let mut invalid_utf8 = br#"{"text": ""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    invalid_utf8.extend_from_slice(br#""}"#);
    let with = |mut b: Bad, f: &dyn Fn(&mut Bad)| {
        f(&mut b);
        b
    };
    vec![
        bad(
            "malformed JSON",
            "/predict_sync",
            r#"{"text": "#,
            400,
            "invalid_json",
        ),
        bad(
            "not JSON at all",
            "/predict_sync",
            "hello there",
            400,
            "invalid_json",
        ),
        bad(
            "trailing garbage",
            "/predict_sync",
            r#"{"text": "a"} extra"#,
            400,
            "invalid_json",
        ),
        bad("empty body", "/predict_sync", "", 400, "invalid_json"),
        bad(
            "whitespace body",
            "/predict_sync",
            "   \n ",
            400,
            "invalid_json",
        ),
        bad(
            "invalid UTF-8",
            "/predict_sync",
            invalid_utf8,
            400,
            "invalid_json",
        ),
        bad(
            "deeply nested JSON",
            "/predict_batch",
            deep,
            400,
            "invalid_json",
        ),
        bad(
            "deeply nested async meta",
            "/predict_async",
            deep_meta,
            400,
            "invalid_json",
        ),
        with(
            bad(
                "wrong type",
                "/predict_sync",
                r#"{"text": 5}"#,
                422,
                "invalid_body",
            ),
            &|b| b.names = Some("text"),
        ),
        bad(
            "missing field",
            "/predict_sync",
            r#"{"repeat": 2}"#,
            422,
            "invalid_body",
        ),
        with(
            bad(
                "unknown field in message",
                "/predict_sync",
                r#"{"text": "a", "txet": "b"}"#,
                422,
                "invalid_body",
            ),
            &|b| b.names = Some("txet"),
        ),
        bad("null body", "/predict_sync", "null", 422, "invalid_body"),
        with(
            bad(
                "array to predict_sync",
                "/predict_sync",
                r#"[{"text": "a"}]"#,
                422,
                "invalid_body",
            ),
            &|b| b.names = None,
        ),
        with(
            bad(
                "garde: empty text",
                "/predict_sync",
                r#"{"text": ""}"#,
                422,
                "validation_failed",
            ),
            &|b| b.names = Some("text"),
        ),
        with(
            bad(
                "garde: repeat too big",
                "/predict_sync",
                r#"{"text": "a", "repeat": 11}"#,
                422,
                "validation_failed",
            ),
            &|b| b.names = Some("repeat"),
        ),
        with(
            bad(
                "garde: sleep too long",
                "/predict_sync",
                r#"{"text": "a", "sleep_ms": 20000}"#,
                422,
                "validation_failed",
            ),
            &|b| b.names = Some("sleep_ms"),
        ),
        with(
            bad(
                "bad enum value",
                "/predict_sync",
                r#"{"text": "a", "fail": "sometimes"}"#,
                422,
                "invalid_body",
            ),
            &|b| b.names = Some("fail"),
        ),
        with(
            bad(
                "extra field on async",
                "/predict_async",
                r#"{"message": {"text": "a"}, "priority": 1}"#,
                422,
                "invalid_body",
            ),
            &|b| b.names = Some("priority"),
        ),
        bad(
            "async without message",
            "/predict_async",
            r#"{"success_queue": "q"}"#,
            422,
            "invalid_body",
        ),
        with(
            bad(
                "async message wrong type",
                "/predict_async",
                r#"{"message": {"text": 1}}"#,
                422,
                "invalid_body",
            ),
            &|b| b.names = Some("message.text"),
        ),
        with(
            bad(
                "async queue wrong type",
                "/predict_async",
                r#"{"message": {"text": "a"}, "success_queue": 3}"#,
                422,
                "invalid_body",
            ),
            &|b| b.names = Some("success_queue"),
        ),
        with(
            bad(
                "garde in async message",
                "/predict_async",
                r#"{"message": {"text": ""}}"#,
                422,
                "validation_failed",
            ),
            &|b| b.names = Some("message.text"),
        ),
        with(
            bad(
                "garde in a batch item",
                "/predict_batch",
                r#"[{"text": "ok"}, {"text": ""}]"#,
                422,
                "validation_failed",
            ),
            &|b| b.names = Some("[1].text"),
        ),
        with(
            bad(
                "wrong type in a batch item",
                "/predict_batch",
                r#"[{"text": "ok"}, {"text": []}]"#,
                422,
                "invalid_body",
            ),
            &|b| b.names = Some("[1].text"),
        ),
        bad(
            "batch body not an array",
            "/predict_batch",
            r#"{"text": "a"}"#,
            422,
            "invalid_body",
        ),
        bad(
            "huge array on predict_batch",
            "/predict_batch",
            huge_array,
            413,
            "too_many_items",
        ),
        bad(
            "oversized body",
            "/predict_sync",
            oversized,
            413,
            "body_too_large",
        ),
        with(
            bad(
                "text/plain content type",
                "/predict_sync",
                r#"{"text": "a"}"#,
                415,
                "unsupported_media_type",
            ),
            &|b| b.content_type = Some("text/plain"),
        ),
        with(
            bad(
                "form content type",
                "/predict_async",
                "message=a",
                415,
                "unsupported_media_type",
            ),
            &|b| b.content_type = Some("application/x-www-form-urlencoded"),
        ),
        with(
            bad(
                "no content type",
                "/predict_sync",
                r#"{"text": "a"}"#,
                415,
                "unsupported_media_type",
            ),
            &|b| b.content_type = None,
        ),
        bad(
            "unknown model",
            "/predict_sync?model_name=nope",
            r#"{"text": "a"}"#,
            404,
            "unknown_model",
        ),
        bad(
            "bad percent-encoding in model_name",
            "/predict_sync?model_name=%ff%fe",
            r#"{"text": "a"}"#,
            400,
            "invalid_query",
        ),
        with(
            bad("bad job id", "/jobs/not-a-uuid", "", 400, "invalid_job_id"),
            &|b| b.method = "GET",
        ),
        with(
            bad(
                "unknown job id",
                "/jobs/6f1c1d8e-7d0a-4a43-9a53-1f1a8c1f0b11",
                "",
                404,
                "job_not_found",
            ),
            &|b| b.method = "GET",
        ),
        with(
            bad(
                "missing API key",
                "/predict_sync",
                r#"{"text": "a"}"#,
                401,
                "unauthorized",
            ),
            &|b| b.api_key = None,
        ),
        with(
            bad(
                "wrong API key",
                "/predict_sync",
                r#"{"text": "a"}"#,
                401,
                "unauthorized",
            ),
            &|b| b.api_key = Some("test-api-key-124"),
        ),
        with(
            bad(
                "API key on jobs route missing",
                "/jobs/6f1c1d8e-7d0a-4a43-9a53-1f1a8c1f0b11",
                "",
                401,
                "unauthorized",
            ),
            &|b| {
                b.method = "GET";
                b.api_key = None;
            },
        ),
        bad(
            "unknown route",
            "/predict",
            r#"{"text": "a"}"#,
            404,
            "not_found",
        ),
        with(
            bad(
                "wrong method",
                "/predict_sync",
                "",
                405,
                "method_not_allowed",
            ),
            &|b| b.method = "GET",
        ),
    ]
}

#[tokio::test]
async fn bad_requests_get_their_exact_4xx_and_a_json_error() {
    let server = server("echo-bad", |app| {
        app.auth_config.api_key = Some("test-api-key-123".to_owned());
        app.server_config.max_body_bytes = 4096;
        app.server_config.max_batch_request_items = 50;
    })
    .await;
    let http = client();
    let cases = bad_requests();
    assert!(cases.len() >= 25);
    let mut seen = std::collections::HashSet::new();
    for case in cases {
        assert!(seen.insert(case.what), "duplicate case {}", case.what);
        let url = server.url(case.path);
        let mut request = match case.method {
            "GET" => http.get(&url),
            _ => http.post(&url).body(case.body.clone()),
        };
        if let Some(ct) = case.content_type {
            request = request.header("content-type", ct);
        }
        if let Some(key) = case.api_key {
            request = request.header("x-api-key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, case.status, "{}: got {status} {text}", case.what);
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{}: body is not JSON: {text}", case.what));
        assert_eq!(body["error"]["code"], case.code, "{}: {text}", case.what);
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(!message.is_empty(), "{}: empty message", case.what);
        assert!(
            body["error"].get("details").is_some(),
            "{}: no details",
            case.what
        );
        if let Some(path) = case.names {
            assert!(
                text.contains(path),
                "{}: error does not name {path}: {text}",
                case.what
            );
        }
    }
}

#[tokio::test]
async fn several_models_need_model_name() {
    let server = TestServer::start(echo_settings(&["alpha", "beta"])).await;
    let (status, body) = post_json(
        &client(),
        &server.url("/predict_sync"),
        &json!({"text": "a"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "model_required");
    assert_eq!(body["error"]["details"]["models"], json!(["alpha", "beta"]));
    let (status, _) = post_json(
        &client(),
        &server.url("/predict_sync?model_name=beta"),
        &json!({"text": "a"}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn auth_leaves_health_ready_and_metrics_open() {
    let server = server("echo-auth", |app| {
        app.auth_config.api_key = Some("sekrit-key-42".to_owned());
        app.auth_config.auth_header = "x-modal-key".to_owned();
    })
    .await;
    let http = client();
    for path in ["/health", "/ready", "/metrics"] {
        assert_eq!(
            http.get(server.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    let ok = http
        .post(server.url("/predict_sync"))
        .header("x-modal-key", "sekrit-key-42")
        .json(&json!({"text": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let wrong_header = http
        .post(server.url("/predict_sync"))
        .header("x-api-key", "sekrit-key-42")
        .json(&json!({"text": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_header.status(), 401);
    // The document names the configured header and asks for it where the
    // server checks it.
    let doc: Value = get_json(&http, &server.url("/openapi.json")).await;
    assert_eq!(
        doc["components"]["securitySchemes"]["apiKey"]["name"],
        "x-modal-key"
    );
    assert_eq!(
        doc["paths"]["/predict_sync"]["post"]["security"],
        json!([{"apiKey": []}])
    );
    assert!(doc["paths"]["/health"]["get"]["security"].is_null());
}

#[tokio::test]
async fn a_request_past_its_deadline_gets_504() {
    let server = server("echo-slow", |app| {
        app.server_config.request_timeout_seconds = 0.2;
    })
    .await;
    let (status, body) = post_json(
        &client(),
        &server.url("/predict_sync"),
        &json!({"text": "a", "sleep_ms": 1000}),
    )
    .await;
    assert_eq!(status, 504);
    assert_eq!(body["error"]["code"], "deadline_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_returns_503_with_retry_after_while_admitted_requests_succeed() {
    let server = server("echo-overload", |app| {
        app.batch_config.max_batch_size = 1;
        app.batch_config.wait_ms = 0;
        app.server_config.max_queue_depth = 4;
    })
    .await;
    let http = client();
    let mut requests = Vec::new();
    for i in 0..24 {
        let http = http.clone();
        let url = server.url("/predict_sync");
        requests.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .json(&json!({"text": format!("r{i}"), "sleep_ms": 100}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = response.json().await.unwrap();
            (i, status, retry_after, body)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for request in requests {
        let (i, status, retry_after, body) = request.await.unwrap();
        match status {
            200 => {
                assert_eq!(body["echo"], format!("R{i}"));
                ok += 1;
            }
            503 => {
                assert_eq!(retry_after.as_deref(), Some("1"));
                assert_eq!(body["error"]["code"], "overloaded");
                refused += 1;
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(refused > 0, "the queue never filled");
    assert!(
        ok >= 4,
        "at least a full queue (4) was admitted and succeeded ({ok})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_show_batches_larger_than_one_under_concurrent_load() {
    let server = server("echo-load", |app| {
        app.batch_config.max_batch_size = 16;
        app.batch_config.wait_ms = 20;
    })
    .await;
    let http = client();
    let requests: Vec<_> = (0..48)
        .map(|i| {
            let http = http.clone();
            let url = server.url("/predict_sync");
            tokio::spawn(async move {
                post_json(
                    &http,
                    &url,
                    &json!({"text": format!("x{i}"), "sleep_ms": 10}),
                )
                .await
            })
        })
        .collect();
    // While items wait, /metrics shows them queued (the gauge is read at
    // scrape time).
    let mut deepest = 0f64;
    while !requests.iter().all(|r| r.is_finished()) {
        let metrics = scrape(&http, &server).await;
        deepest = deepest.max(model_metric(&metrics, "modalkit_queue_depth", "echo-load"));
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(deepest > 0.0, "no scrape saw a queued item");
    for request in requests {
        assert_eq!(request.await.unwrap().0, 200);
    }
    let metrics = scrape(&http, &server).await;
    let value = |name: &str| model_metric(&metrics, name, "echo-load");
    let (sum, count) = (
        value("modalkit_batch_size_sum"),
        value("modalkit_batch_size_count"),
    );
    assert_eq!(sum, 48.0);
    assert_eq!(value("modalkit_queue_depth"), 0.0, "nothing left queued");
    assert!(
        sum / count > 1.0,
        "mean batch size {} under load",
        sum / count
    );
}

#[tokio::test]
async fn an_input_the_pipeline_calls_invalid_is_422_alone_and_an_error_item_in_a_batch() {
    let server = server("echo", |_| {}).await;
    let client = client();
    let (status, body) = post_json(
        &client,
        &server.url("/predict_sync"),
        &json!({"text": "odd", "fail": "invalid"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_input");
    assert_eq!(body["error"]["message"], "item 'odd' is not a valid input");
    let (status, body) = post_json(
        &client,
        &server.url("/predict_batch"),
        &json!([{"text": "ok"}, {"text": "odd", "fail": "invalid"}]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["status"], "success");
    assert_eq!(
        body[1],
        json!({"status": "error", "error": "item 'odd' is not a valid input"})
    );
}

#[tokio::test]
async fn secure_deployments_leave_auth_to_modals_proxy_as_modalkit_does() {
    // modalkit: with secure: true the key is neither checked nor read from SSM.
    let server = server("echo-secure", |app| {
        app.auth_config.api_key = Some("sekrit-key-42".to_owned());
        app.auth_config.ssm_key = Some("/never/read".to_owned());
        app.deployment_config.secure = true;
    })
    .await;
    let (status, body) = post_json(
        &client(),
        &server.url("/predict_sync"),
        &json!({"text": "a"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn modalkits_default_backend_is_only_built_when_a_job_names_a_queue() {
    // No queue_config: the backend is sqs, as in modalkit. Its factory here
    // counts builds and hands out an in-memory queue: a job that names no
    // queue must not build it; the first job that names one builds it once.
    let yaml =
        "app_settings:\n  app_prefix: e2e\nmodel_settings:\n  model_entries:\n    echo: {}\n";
    let settings = settings_from_yaml(yaml);
    assert_eq!(settings.app_settings.queue_config.backend, "sqs");
    let builds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let queue = std::sync::Arc::new(modalkit_queue::InMemoryQueue::new(10));
    let mut registry = modalkit_queue::BackendRegistry::with_defaults();
    let (counter, backend) = (
        std::sync::Arc::clone(&builds),
        std::sync::Arc::clone(&queue),
    );
    registry.register("sqs", move |_config| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let backend =
            std::sync::Arc::clone(&backend) as std::sync::Arc<dyn modalkit_queue::QueueBackend>;
        async move { Ok(backend) }
    });
    let options = modalkit_server::ServerOptions {
        registry: Some(registry),
        ..Default::default()
    };
    let server = TestServer::builder(settings).options(options).start().await;
    let http = client();
    let (status, body) = post_json(
        &http,
        &server.url("/predict_async"),
        &json!({"message": {"text": "quiet"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let job = poll_job(&http, &server, body["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["output"]["echo"], "QUIET");
    assert_eq!(
        builds.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no queue named: never built"
    );
    for text in ["first", "second"] {
        let (status, body) = post_json(
            &http,
            &server.url("/predict_async"),
            &json!({"message": {"text": text}, "success_queue": "done"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        poll_job(&http, &server, body["job_id"].as_str().unwrap()).await;
    }
    assert_eq!(queue.peek("done").len(), 2);
    assert_eq!(
        builds.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "built on the first send, once"
    );
}

#[tokio::test]
async fn serve_refuses_a_config_with_no_models_that_check_accepts() {
    let yaml = "app_settings:\n  app_prefix: e2e\nmodel_settings:\n  model_entries: {}\n";
    let settings = settings_from_yaml(yaml);
    let err = modalkit_server::Server::<modalkit_tests::pipeline::EchoPipeline>::build(
        settings,
        modalkit_server::ServerOptions::default(),
    )
    .await
    .err()
    .expect("no models, nothing to serve");
    assert!(
        err.to_string()
            .contains("model_settings.model_entries: empty"),
        "{err}"
    );
}

#[tokio::test]
async fn ready_stays_503_while_the_model_warms_up_and_reports_the_phase() {
    let yaml = "app_settings:\n  app_prefix: e2e\n  queue_config: {backend: memory}\n  batch_config: {max_batch_size: 4, wait_ms: 0}\nmodel_settings:\n  model_entries:\n    echo: {warmup_ms: 1200}\n";
    let server = TestServer::start(settings_from_yaml(yaml)).await;
    let http = client();
    let response = http.get(server.url("/ready")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["phase"], "warming", "{body}");
    assert!(body["warmup_seconds"].is_null());
    // Requests are served while warming; only readiness waits.
    let (status, _) = post_json(
        &http,
        &server.url("/predict_sync"),
        &json!({"text": "early"}),
    )
    .await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    let body = loop {
        let response = http.get(server.url("/ready")).send().await.unwrap();
        if response.status() == 200 {
            break response.json::<Value>().await.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["phase"], "ready");
    let warmup = body["warmup_seconds"].as_f64().unwrap();
    assert!(warmup >= 1.1, "one full batch of 1.2 s ran first: {body}");
    assert!(body["load_seconds"].as_f64().unwrap() >= 0.0);
}

#[tokio::test]
async fn a_sync_reply_carries_its_queue_and_inference_times_and_batch_size() {
    let server = server("echo-timing", |app| {
        app.batch_config.max_batch_size = 8;
        app.batch_config.wait_ms = 0;
    })
    .await;
    let http = client();
    let reply = http
        .post(server.url("/predict_sync"))
        .json(&json!({"text": "t", "sleep_ms": 120}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let header = |name: &str| -> f64 { reply.headers()[name].to_str().unwrap().parse().unwrap() };
    let (queue, inference, total) = (
        header("x-queue-time"),
        header("x-inference-time"),
        header("x-total-time"),
    );
    assert!(
        inference >= 119.0,
        "the 120 ms predict is inference time: {inference}"
    );
    assert!(queue < 100.0, "an idle server queues briefly: {queue}");
    assert!(
        queue + inference <= total + 0.01,
        "{queue} + {inference} > {total}"
    );
    assert_eq!(header("x-batch-size"), 1.0);
}
