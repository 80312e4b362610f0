//! The server as a real process: SIGTERM under load drains (every accepted
//! request answered, every accepted async job's result delivered, `/ready`
//! 503 meanwhile, exit 0); SIGHUP reloads volumes; a fatal device error
//! (candle's `Error::Cuda`) fails queued work, turns `/ready` 503 and exits
//! with code 3.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use modalkit_tests::support::{ServerProcess, client, post_json, wait_until_not_ready};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_modalkit-test-server");

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    dump: PathBuf,
    log: PathBuf,
}

fn setup(app_extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("modalkit.yaml");
    std::fs::write(
        &config,
        format!("app_settings:\n  app_prefix: proc\n{app_extra}\nmodel_settings:\n  model_entries:\n    echo: {{}}\n"),
    )
    .unwrap();
    Setup {
        dump: dir.path().join("queues.json"),
        log: dir.path().join("server.log"),
        config,
        _dir: dir,
    }
}

impl Setup {
    /// The server on this config, writing its in-memory queues to `dump` when it exits.
    fn spawn_dumping_queues(&self) -> ServerProcess {
        ServerProcess::spawn(
            BINARY.as_ref(),
            &self.config,
            &[("MODALKIT_TEST_QUEUE_DUMP", self.dump.display().to_string())],
            self.log.clone(),
        )
    }
}

fn read_dump(path: &PathBuf) -> BTreeMap<String, Vec<Value>> {
    let text = std::fs::read_to_string(path).expect("the server wrote its queue dump");
    let raw: BTreeMap<String, Vec<String>> = serde_json::from_str(&text).unwrap();
    raw.into_iter()
        .map(|(queue, messages)| {
            (
                queue,
                messages
                    .iter()
                    .map(|m| serde_json::from_str(m).unwrap())
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_drains_everything_and_exits_zero() {
    let s = setup(
        "  batch_config: {max_batch_size: 4, wait_ms: 5}\n  server_config: {shutdown_grace_seconds: 30}",
    );
    let mut server = s.spawn_dumping_queues();
    let http = client();
    let base = server.base_url.clone();

    let mut accepted_async = BTreeSet::new();
    for i in 0..40 {
        let body = json!({"message": {"text": format!("a{i}"), "sleep_ms": 25}, "success_queue": "done", "failure_queue": "failed"});
        let (status, reply) = post_json(&http, &format!("{base}/predict_async"), &body).await;
        assert_eq!(status, 200, "{reply}");
        accepted_async.insert(format!("A{i}"));
    }
    let sync_requests: Vec<_> = (0..40)
        .map(|i| {
            let http = http.clone();
            let url = format!("{base}/predict_sync");
            tokio::spawn(async move {
                post_json(
                    &http,
                    &url,
                    &json!({"text": format!("s{i}"), "sleep_ms": 25}),
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        http.get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.signal("TERM");

    // While draining, readiness is 503 but the process still answers.
    let not_ready = wait_until_not_ready(&http, &base, Duration::from_secs(5))
        .await
        .expect("/ready never reported 503 during the drain");
    assert_eq!(not_ready["shutting_down"], true);

    let (mut answered, mut refused) = (0, 0);
    for request in sync_requests {
        let (status, body) = request.await.unwrap();
        match status {
            200 => {
                assert_eq!(body["status"], "success");
                answered += 1;
            }
            // Arrived after shutdown began: refused, never accepted.
            503 => {
                assert_eq!(body["error"]["code"], "unavailable", "{body}");
                refused += 1;
            }
            other => panic!("sync request got {other}: {body}"),
        }
    }
    assert!(
        answered > 0,
        "no sync request was in flight at SIGTERM ({refused} refused)"
    );
    assert_eq!(
        server.wait_exit(Duration::from_secs(60)),
        Some(0),
        "log:\n{}",
        server.log_text()
    );

    let queues = read_dump(&s.dump);
    let delivered: BTreeSet<String> = queues
        .get("done")
        .map(|messages| {
            messages
                .iter()
                .map(|m| m["echo"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        delivered, accepted_async,
        "every accepted async job's result was delivered"
    );
    assert!(!queues.contains_key("failed"));
}

#[tokio::test]
async fn sighup_runs_on_volume_reload() {
    let s = setup("");
    let server = ServerProcess::spawn(BINARY.as_ref(), &s.config, &[], s.log.clone());
    server.signal("HUP");
    let mut reloaded = false;
    for _ in 0..100 {
        if server.log_text().contains("volume reloaded") {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        reloaded,
        "no reload after SIGHUP; log:\n{}",
        server.log_text()
    );
    let (status, _) = post_json(
        &client(),
        &format!("{}/predict_sync", server.base_url),
        &json!({"text": "still up"}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fatal_device_error_fails_queued_work_and_exits_with_code_3() {
    let s = setup("  batch_config: {max_batch_size: 1, wait_ms: 0}");
    let mut server = s.spawn_dumping_queues();
    let http = client();
    let base = server.base_url.clone();
    let fatal = json!({"message": {"text": "boom", "fail": "fatal", "sleep_ms": 300}, "failure_queue": "failed", "meta": {"n": 0}});
    assert_eq!(
        post_json(&http, &format!("{base}/predict_async"), &fatal)
            .await
            .0,
        200
    );
    for i in 1..=5 {
        let queued = json!({"message": {"text": format!("q{i}")}, "success_queue": "done", "failure_queue": "failed", "meta": {"n": i}});
        assert_eq!(
            post_json(&http, &format!("{base}/predict_async"), &queued)
                .await
                .0,
            200
        );
    }
    let not_ready = wait_until_not_ready(&http, &base, Duration::from_secs(5))
        .await
        .expect("/ready never turned 503 after the device failed");
    assert_eq!(
        not_ready["models"]["echo"]["state"], "failed",
        "{not_ready}"
    );
    assert_eq!(
        server.wait_exit(Duration::from_secs(30)),
        Some(3),
        "log:\n{}",
        server.log_text()
    );

    let queues = read_dump(&s.dump);
    assert!(
        !queues.contains_key("done"),
        "nothing ran after the fatal error"
    );
    let failures = &queues["failed"];
    assert_eq!(
        failures.len(),
        6,
        "every accepted job got its DelayedFailure: {failures:?}"
    );
    for failure in failures {
        assert_eq!(failure["status"], "error");
        assert!(
            failure["error"].as_str().unwrap().contains("CUDA error"),
            "{failure}"
        );
        assert!(failure["original_message"]["message"]["text"].is_string());
    }
}

#[test]
fn logs_are_plain_text_off_a_terminal_and_json_lines_on_request() {
    let setup = setup("");
    for format in ["", "json"] {
        let mut server = ServerProcess::spawn(
            BINARY.as_ref(),
            &setup.config,
            &[("MODALKIT_LOG_FORMAT", format.to_owned())],
            setup.log.clone(),
        );
        server.signal("TERM");
        assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
        let log = server.log_text();
        assert!(log.contains("serving"), "{log}");
        assert!(
            !log.contains('\u{1b}'),
            "escape codes in a log file:\n{log}"
        );
        if format == "json" {
            for line in log.lines().filter(|l| !l.trim().is_empty()) {
                let record: Value = serde_json::from_str(line)
                    .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line}"));
                assert!(
                    record["level"].is_string() && record["message"].is_string(),
                    "{line}"
                );
            }
        }
    }
}
