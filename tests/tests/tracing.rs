//! OpenTelemetry traces from real server processes to an OTLP/HTTP
//! collector in this test (protobuf decoded with the OTLP types): the span
//! tree of a sync request under the caller's `traceparent`, per-item stage
//! spans of a batch, an async job's tree continued across its webhook (the
//! `traceparent` header names the delivery span) and across SQS (moto: the
//! input message's attribute carries the request's context to the consumer,
//! the result message carries the delivery span's), and a collector that
//! refuses connections failing no request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::MessageSystemAttributeName;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use modalkit_tests::moto::{Moto, unique_queue};
use modalkit_tests::support::{ServerProcess, client, free_port, write_report};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use serde_json::json;

const BINARY: &str = env!("CARGO_BIN_EXE_modalkit-test-server");

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    kind: i32,
    start: u64,
    end: u64,
    attributes: BTreeMap<String, String>,
    service: String,
}

const SERVER: i32 = 2;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

type Spans = Arc<Mutex<Vec<Span>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&any_value::Value>) -> String {
    match value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

async fn collect(State(spans): State<Spans>, headers: HeaderMap, body: Bytes) -> StatusCode {
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/x-protobuf")
    );
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
    let mut spans = spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(Span {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    kind: span.kind,
                    start: span.start_time_unix_nano,
                    end: span.end_time_unix_nano,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
                            (kv.key.clone(), text(value))
                        })
                        .collect(),
                    service: service.clone(),
                });
            }
        }
    }
    StatusCode::OK
}

/// A local OTLP/HTTP collector: its base URL and what it received.
async fn start_collector() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/traces", post(collect))
        .with_state(Arc::clone(&spans));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), spans)
}

/// The webhook receiver: the `traceparent` of each POST.
async fn hook(State(seen): State<Arc<Mutex<Vec<String>>>>, headers: HeaderMap) -> StatusCode {
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    seen.lock().unwrap().push(traceparent);
    StatusCode::OK
}

/// Waits until `done` holds for the collected spans (at most 20 s).
async fn spans_until(spans: &Spans, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let started = Instant::now();
    loop {
        let now = spans.lock().unwrap().clone();
        if done(&now) || started.elapsed() > Duration::from_secs(20) {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn of_trace<'a>(spans: &'a [Span], trace_id: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.trace_id == trace_id).collect()
}

fn named<'a>(spans: &[&'a Span], name: &str) -> Vec<&'a Span> {
    spans.iter().copied().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &[&'a Span], name: &str) -> &'a Span {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "one '{name}' span in {spans:#?}");
    found[0]
}

/// Asserts `stage` spans under `parent`: queue_wait, preprocess, predict,
/// postprocess, back to back, inside `outer` (when given).
fn assert_stages(trace: &[&Span], parent: &Span, outer: Option<&Span>) {
    let children: Vec<&Span> = trace
        .iter()
        .copied()
        .filter(|s| s.parent == parent.span_id)
        .collect();
    let stage = |name: &str| one(&children, name);
    let (queue, pre, predict, post) = (
        stage("queue_wait"),
        stage("preprocess"),
        stage("predict"),
        stage("postprocess"),
    );
    assert!(queue.start <= queue.end && queue.end <= pre.start + 1_000);
    assert!(pre.end == predict.start && predict.end == post.start && post.start <= post.end);
    assert!(
        predict.attributes["modalkit.batch_size"]
            .parse::<u32>()
            .unwrap()
            >= 1
    );
    if let Some(outer) = outer {
        // Converted from monotonic time: allow a millisecond of skew.
        assert!(
            queue.start + 1_000_000 >= outer.start && post.end <= outer.end + 1_000_000,
            "stages inside {outer:?}: {queue:?} .. {post:?}"
        );
    }
}

/// The tree under `root`, one span per line, indented by depth, with its
/// kind, duration and ids.
fn render(trace: &[&Span], root: &Span, depth: usize, out: &mut String) {
    let kind = match root.kind {
        SERVER => "server",
        CONSUMER => "consumer",
        PRODUCER => "producer",
        _ => "internal",
    };
    out.push_str(&format!(
        "{:indent$}{} ({kind}, {:.3} ms) span {} parent {}\n",
        "",
        root.name,
        (root.end.saturating_sub(root.start)) as f64 / 1e6,
        root.span_id,
        if root.parent.is_empty() {
            "-"
        } else {
            &root.parent
        },
        indent = depth * 2
    ));
    let mut children: Vec<&Span> = trace
        .iter()
        .copied()
        .filter(|s| s.parent == root.span_id)
        .collect();
    children.sort_by_key(|s| s.start);
    for child in children {
        render(trace, child, depth + 1, out);
    }
}

fn write_config(dir: &Path, queue_config: &str) -> PathBuf {
    let path = dir.join("modalkit.yaml");
    std::fs::write(
        &path,
        format!(
            "app_settings:\n  app_prefix: traced\n  batch_config: {{max_batch_size: 8, wait_ms: 2}}\n  queue_config:\n{queue_config}\nmodel_settings:\n  model_entries:\n    echo: {{}}\n"
        ),
    )
    .unwrap();
    path
}

fn otel_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ]
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_embedded_jobs_export_their_span_trees() {
    let (endpoint, spans) = start_collector().await;
    let hooks: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/done", post(hook))
        .with_state(Arc::clone(&hooks));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("    backend: memory\n    webhook_allowed_hosts: ['{receiver}']"),
    );
    let mut env = otel_env(&endpoint);
    env.push(("OTEL_SERVICE_NAME", "traced-echo".to_owned()));
    let server = ServerProcess::spawn(Path::new(BINARY), &config, &env, dir.path().join("s.log"));
    let http = client();

    // Sync, under the caller's trace.
    let reply = http
        .post(format!("{}/predict_sync", server.base_url))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .json(&json!({"text": "traced"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let collected = spans_until(&spans, |s| of_trace(s, CALLER_TRACE).len() >= 5).await;
    let trace = of_trace(&collected, CALLER_TRACE);
    let request = one(&trace, "POST /predict_sync");
    assert_eq!(
        (request.parent.as_str(), request.kind),
        (CALLER_SPAN, SERVER)
    );
    assert_eq!(request.attributes["http.response.status_code"], "200");
    assert_eq!(request.attributes["http.route"], "/predict_sync");
    assert_eq!(request.service, "traced-echo");
    assert_stages(&trace, request, Some(request));

    // A batch of three: each item's stages under the request, numbered.
    let batch_trace = "0af7651916cd43dd8448eb211c80319c";
    let reply = http
        .post(format!("{}/predict_batch", server.base_url))
        .header(
            "traceparent",
            format!("00-{batch_trace}-b7ad6b7169203331-01"),
        )
        .json(&json!([{"text": "a"}, {"text": "b"}, {"text": "c"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let collected = spans_until(&spans, |s| of_trace(s, batch_trace).len() >= 13).await;
    let trace = of_trace(&collected, batch_trace);
    let request = one(&trace, "POST /predict_batch");
    let mut items: Vec<String> = named(&trace, "predict")
        .iter()
        .map(|s| s.attributes["modalkit.item"].clone())
        .collect();
    items.sort();
    assert_eq!(items, ["0", "1", "2"], "{trace:#?}");
    assert!(
        trace
            .iter()
            .all(|s| s.span_id == request.span_id || s.parent == request.span_id)
    );

    // Async (embedded): request -> job -> stages + delivery -> webhook.
    let async_trace = "5b8aa5a2d2c872e8321cf37308d69df2";
    let reply = http
        .post(format!("{}/predict_async", server.base_url))
        .header("traceparent", format!("00-{async_trace}-051581bf3cb55c13-01"))
        .json(&json!({"message": {"text": "later"}, "success_queue": format!("http://{receiver}/done")}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let job_id = reply.json::<serde_json::Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let collected = spans_until(&spans, |s| of_trace(s, async_trace).len() >= 7).await;
    let trace = of_trace(&collected, async_trace);
    let request = one(&trace, "POST /predict_async");
    let job = one(&trace, "job");
    assert_eq!(
        (job.parent.as_str(), job.kind),
        (request.span_id.as_str(), CONSUMER)
    );
    assert_eq!(job.attributes["modalkit.job_id"], job_id);
    assert_stages(&trace, job, Some(job));
    let delivery = one(&trace, "delivery");
    assert_eq!(
        (delivery.parent.as_str(), delivery.kind),
        (job.span_id.as_str(), PRODUCER)
    );
    assert_eq!(
        hooks.lock().unwrap().clone(),
        [format!("00-{async_trace}-{}-01", delivery.span_id)],
        "the webhook continues the delivery span"
    );

    // Kept for the CI log (scripts/test.sh prints it): the trees checked.
    let mut report =
        String::from("Span trees an OTLP collector received (tests/tests/tracing.rs):\n");
    for (trace_id, root) in [
        (CALLER_TRACE, "POST /predict_sync"),
        (async_trace, "POST /predict_async"),
    ] {
        let all = collected_all(&spans);
        let refs = of_trace(&all, trace_id);
        report.push_str(&format!("trace {trace_id}\n"));
        render(&refs, one(&refs, root), 1, &mut report);
    }
    report.push_str(&format!(
        "webhook traceparent: {}\n",
        hooks.lock().unwrap()[0]
    ));
    println!("{report}");
    write_report("tracing.txt", &report);
}

fn collected_all(spans: &Spans) -> Vec<Span> {
    spans.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_job_continues_its_trace_across_sqs() {
    let moto = Moto::shared();
    let sqs = moto.sqs();
    let (endpoint, spans) = start_collector().await;
    let (input, success) = (unique_queue("traced-in"), unique_queue("traced-ok"));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "    backend: sqs\n    input_queue: {input}\n    input_wait_seconds: 1\n    job_store: memory"
        ),
    );
    let mut env = otel_env(&endpoint);
    env.extend(moto.process_env());
    let server = ServerProcess::spawn(Path::new(BINARY), &config, &env, dir.path().join("d.log"));
    let trace_id = "d4cda95b652f4a1592b449d5929fda1b";
    let reply = client()
        .post(format!("{}/predict_async", server.base_url))
        .header("traceparent", format!("00-{trace_id}-6e0c63257de34c92-01"))
        .json(&json!({"message": {"text": "durable"}, "success_queue": success}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200, "{}", server.log_text());

    let collected = spans_until(&spans, |s| {
        of_trace(s, trace_id).iter().any(|s| s.name == "delivery")
    })
    .await;
    let trace = of_trace(&collected, trace_id);
    let request = one(&trace, "POST /predict_async");
    let job = one(&trace, "job");
    assert_eq!(
        job.parent, request.span_id,
        "the consumer's job span continues the request's context from the message attribute"
    );
    assert_stages(&trace, job, Some(job));
    let delivery = one(&trace, "delivery");
    assert_eq!(delivery.parent, job.span_id);
    assert_eq!(delivery.attributes["messaging.destination.name"], success);

    let queue_url = sqs
        .get_queue_url()
        .queue_name(&success)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let received = sqs
        .receive_message()
        .queue_url(&queue_url)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .wait_time_seconds(5)
        .send()
        .await
        .unwrap();
    let message = received.messages().first().expect("the result message");
    let attribute = |name: &str| {
        message
            .message_attributes()
            .and_then(|a| a.get(name))
            .and_then(|v| v.string_value())
            .map(str::to_owned)
    };
    assert_eq!(
        attribute("traceparent"),
        Some(format!("00-{trace_id}-{}-01", delivery.span_id))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "    backend: memory");
    // Nobody listens there; a short export timeout keeps retries brief.
    let mut env = otel_env(&format!("http://127.0.0.1:{}", free_port()));
    env.push(("OTEL_EXPORTER_OTLP_TIMEOUT", "200".to_owned()));
    let server = ServerProcess::spawn(Path::new(BINARY), &config, &env, dir.path().join("x.log"));
    let http = client();
    let started = Instant::now();
    for i in 0..50 {
        let reply = http
            .post(format!("{}/predict_sync", server.base_url))
            .json(&json!({"text": format!("n{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "50 requests took {:?}",
        started.elapsed()
    );
    assert!(
        server
            .log_text()
            .contains("exporting traces over OTLP/HTTP"),
        "tracing was on: {}",
        server.log_text()
    );
}

/// A streamed generation (the `generate` example on `config/generate.yaml`):
/// the request's span has a `sequence` child, ended with the stream, that
/// records its tokens, how it ended and its time to first token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_generation_exports_a_sequence_span_under_its_request() {
    let model = modalkit_tests::model::smollm2_folder();
    let binary = modalkit_tests::support::build_example("generate");
    let (endpoint, spans) = start_collector().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = otel_env(&endpoint);
    env.push((
        "MODALKIT_MODEL_SETTINGS__LOCAL_MODEL_REPOSITORY_FOLDER",
        model.parent().unwrap().display().to_string(),
    ));
    let config = modalkit_tests::model::workspace_root().join("config/generate.yaml");
    let server = ServerProcess::spawn(&binary, &config, &env, dir.path().join("s.log"));
    let http = client();
    let ready =
        modalkit_tests::support::wait_until_ready(&http, &server.base_url, Duration::from_secs(60))
            .await;
    assert!(ready, "never ready:\n{}", server.log_text());

    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let reply = http
        .post(format!("{}/predict_stream", server.base_url))
        .header("traceparent", format!("00-{trace_id}-{CALLER_SPAN}-01"))
        .json(&json!({"prompt": "Hello", "max_tokens": 5, "temperature": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let body = reply.text().await.unwrap();
    assert!(body.contains("event: end"), "{body}");

    let collected = spans_until(&spans, |s| {
        let trace = of_trace(s, trace_id);
        !named(&trace, "sequence").is_empty() && !named(&trace, "POST /predict_stream").is_empty()
    })
    .await;
    let trace = of_trace(&collected, trace_id);
    let request = one(&trace, "POST /predict_stream");
    assert_eq!(request.parent, CALLER_SPAN);
    let sequence = one(&trace, "sequence");
    assert_eq!(sequence.parent, request.span_id, "{trace:#?}");
    assert_eq!(sequence.attributes["modalkit.model"], "smollm2");
    assert_eq!(sequence.attributes["modalkit.tokens"], "5");
    assert_eq!(sequence.attributes["modalkit.end"], "length");
    let first_us: u64 = sequence.attributes["modalkit.time_to_first_token_us"]
        .parse()
        .unwrap();
    assert!(first_us > 0 && first_us * 1000 < sequence.end - sequence.start);
    assert!(sequence.start >= request.start);
}
