//! Durable async jobs while their infrastructure goes away mid-load: a
//! server process (SQS input queue, DynamoDB job store, SQS result queues)
//! reaches SQS and DynamoDB through fault proxies in front of moto, and a
//! test stops one or both for a few seconds while jobs are submitted or
//! consumed. The rules they show (docs/async-jobs.md):
//! - a submit is accepted only once the job store and the input queue both
//!   hold it; while either is away, 503 with `Retry-After` and nothing kept;
//! - a consumer that cannot reach SQS backs off and resumes; a result that
//!   cannot be sent waits (up to `max_delivery_seconds`);
//! - a job's input message stays on the queue until its end is recorded, so
//!   with DynamoDB away a job may run twice but is never lost.
//!
//! Each prints accepted, refused, delivered, duplicates and time to
//! recover (kept in target/test-reports/ for the CI log).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use modalkit_tests::fault_proxy::FaultProxy;
use modalkit_tests::moto::{Moto, drain_labelled, unique_queue};
use modalkit_tests::support::{ServerProcess, client, write_report};
use serde_json::{Value, json};
use tokio::sync::Mutex;

const BINARY: &str = env!("CARGO_BIN_EXE_modalkit-test-server");

/// One scenario at a time: they share moto and the machine's cores.
static SERIAL: Mutex<()> = Mutex::const_new(());

#[derive(Debug, Clone, Copy, PartialEq)]
enum Away {
    Sqs,
    DynamoDb,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum During {
    /// While jobs are being submitted (and consumed).
    Submits,
    /// After every job was accepted, while they are consumed.
    Consumption,
}

struct Scenario {
    name: &'static str,
    away: Away,
    during: During,
    jobs: usize,
    outage: Duration,
}

/// What one submit got.
enum Submitted {
    Accepted(String),
    Refused,
}

async fn submit(http: &reqwest::Client, base: &str, body: &Value) -> Submitted {
    let reply = http
        .post(format!("{base}/predict_async"))
        .json(body)
        .send()
        .await
        .expect("the server answers");
    let status = reply.status();
    let retry_after = reply.headers().contains_key("retry-after");
    let body: Value = reply.json().await.expect("a JSON reply");
    match status.as_u16() {
        200 => Submitted::Accepted(body["job_id"].as_str().unwrap().to_owned()),
        503 => {
            assert!(retry_after, "a 503 carries Retry-After: {body}");
            assert_eq!(body["error"]["code"], "unavailable", "{body}");
            Submitted::Refused
        }
        other => panic!("a submit got {other}: {body}"),
    }
}

fn config(dir: &Path, input: &str, table: &str) -> PathBuf {
    let path = dir.join("modalkit.yaml");
    let yaml = format!(
        "app_settings:
  app_prefix: faults
  batch_config: {{max_batch_size: 8, wait_ms: 2}}
  queue_config:
    backend: sqs
    input_queue: {input}
    input_visibility_timeout_seconds: 3
    input_wait_seconds: 1
    input_max_in_flight: 16
    job_store: dynamodb
    job_table: {table}
    max_delivery_seconds: 120
    dead_letter_path: '{}'
model_settings:
  model_entries:
    echo: {{}}
",
        dir.join("dead.jsonl").display()
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn run(scenario: Scenario) {
    let _serial = SERIAL.lock().await;
    let moto = Moto::shared();
    let mut sqs_proxy = FaultProxy::start(&moto.endpoint);
    let mut dynamodb_proxy = FaultProxy::start(&moto.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let (input, success, table) = (
        unique_queue("faults-in"),
        unique_queue("faults-ok"),
        unique_queue("faults-jobs"),
    );
    let config = config(dir.path(), &input, &table);
    let mut env = moto.process_env();
    env.push(("AWS_ENDPOINT_URL_SQS", sqs_proxy.endpoint.clone()));
    env.push(("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_proxy.endpoint.clone()));
    let server = ServerProcess::spawn(
        Path::new(BINARY),
        &config,
        &env,
        dir.path().join("server.log"),
    );
    let http = client();
    let body = |i: usize| json!({"message": {"text": format!("job{i}"), "sleep_ms": 25}, "success_queue": success});

    // Submits, four at a time; the outage starts at a quarter of them
    // (During::Submits) or once all are accepted (During::Consumption).
    let accepted = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let refused = Arc::new(Mutex::new(BTreeSet::<usize>::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let outage_starts_at = match scenario.during {
        During::Submits => scenario.jobs / 4,
        During::Consumption => scenario.jobs,
    };
    let mut submitters = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (http, base, accepted, refused, next) = (
            http.clone(),
            server.base_url.clone(),
            Arc::clone(&accepted),
            Arc::clone(&refused),
            Arc::clone(&next),
        );
        let bodies: Vec<Value> = (0..scenario.jobs).map(body).collect();
        submitters.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(body) = bodies.get(i) else { break };
                match submit(&http, &base, body).await {
                    Submitted::Accepted(id) => {
                        accepted.lock().await.insert(id, i);
                    }
                    Submitted::Refused => {
                        refused.lock().await.insert(i);
                    }
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        });
    }
    while accepted.lock().await.len() < outage_starts_at {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused_before = refused.lock().await.len();
    let log_before = std::fs::read_to_string(&server.log).unwrap_or_default();
    if matches!(scenario.away, Away::Sqs | Away::Both) {
        sqs_proxy.stop();
    }
    if matches!(scenario.away, Away::DynamoDb | Away::Both) {
        dynamodb_proxy.stop();
    }
    tokio::time::sleep(scenario.outage).await;
    let accepted_in_outage = accepted.lock().await.len();
    sqs_proxy.resume();
    dynamodb_proxy.resume();
    let resumed = Instant::now();
    let receive_failures = server.log_text()[log_before.len()..]
        .matches("receiving from the input queue failed")
        .count();
    // Submits are taken again once the services are back: a probe is
    // submitted every 50 ms until one is accepted (the load itself may
    // have been refused to its end during the outage).
    let mut submits_recovered = None;
    let mut probes = 0;
    if scenario.during == During::Submits {
        while submits_recovered.is_none() {
            assert!(
                resumed.elapsed() < Duration::from_secs(30),
                "submits still refused 30 s after the outage"
            );
            let index = scenario.jobs + probes;
            probes += 1;
            match submit(&http, &server.base_url, &body(index)).await {
                Submitted::Accepted(id) => {
                    accepted.lock().await.insert(id, index);
                    submits_recovered = Some(resumed.elapsed());
                }
                Submitted::Refused => {
                    refused.lock().await.insert(index);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    while submitters.join_next().await.is_some() {}
    let accepted = accepted.lock().await.clone();
    let refused = refused.lock().await.clone();
    assert_eq!(accepted.len() + refused.len(), scenario.jobs + probes);
    if scenario.during == During::Submits {
        assert!(
            refused.len() > refused_before,
            "submits during the outage are refused (503), not accepted: {} refused",
            refused.len()
        );
    } else {
        assert!(
            refused.is_empty(),
            "every submit before the outage is accepted"
        );
    }

    // Every accepted job ends, succeeded, and its result is delivered.
    let mut ended: BTreeSet<String> = BTreeSet::new();
    while ended.len() < accepted.len() {
        for id in accepted.keys() {
            if ended.contains(id) {
                continue;
            }
            let reply = http
                .get(format!("{}/jobs/{id}", server.base_url))
                .send()
                .await
                .unwrap();
            let status = reply.status();
            let record: Value = reply.json().await.unwrap();
            assert_eq!(status, 200, "accepted job {id} is known: {record}");
            match record["status"].as_str() {
                Some("succeeded") => {
                    ended.insert(id.clone());
                }
                Some("queued" | "running") => {}
                other => panic!("job {id} ended {other:?}: {record}"),
            }
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(120),
            "{} of {} accepted jobs ended 120 s after the outage; log:\n{}",
            ended.len(),
            accepted.len(),
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_ended_after = resumed.elapsed();
    let delivered = drain_labelled(&moto.sqs(), &success).await;
    let mut deliveries: BTreeMap<&str, usize> = BTreeMap::new();
    for (job_id, body) in &delivered {
        assert_eq!(body["status"], "success", "{body}");
        *deliveries.entry(job_id.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = accepted
        .keys()
        .filter(|id| !deliveries.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "accepted jobs with no result: {missing:?}"
    );
    let unpromised = deliveries
        .keys()
        .filter(|id| !accepted.contains_key(**id))
        .count();
    let duplicates = delivered.len() - deliveries.len();
    let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap_or_default();
    assert!(
        dead.is_empty(),
        "results waited out the outage rather than being dead-lettered:\n{dead}"
    );
    let log = server.log_text();
    let rerun = log
        .matches("could not record the job's end; it will run again")
        .count();
    let dropped_duplicates = log
        .matches("job already ended; dropping its duplicate message")
        .count();
    assert!(
        sqs_proxy.connections() > 0
            && (scenario.away == Away::Sqs || dynamodb_proxy.connections() > 0),
        "the server reached the services through the proxies"
    );

    let report = format!(
        "durable fault '{}': {:?} away for {:.1}s during {:?}: {} submitted, {} accepted ({} during the outage), \
         {} refused with 503 ({} probes after it); {} results delivered for {} jobs ({} duplicates, {} for refused submits), \
         0 lost, 0 dead-lettered; {} receive failures logged during the outage (backoff); \
         {} job ends not recorded and run again, {} redelivered messages of ended jobs dropped; \
         submits taken again {} after, all jobs ended {:.1}s after the services came back",
        scenario.name,
        scenario.away,
        scenario.outage.as_secs_f64(),
        scenario.during,
        scenario.jobs + probes,
        accepted.len(),
        accepted_in_outage.saturating_sub(outage_starts_at),
        refused.len(),
        probes,
        delivered.len(),
        deliveries.len(),
        duplicates,
        unpromised,
        receive_failures,
        rerun,
        dropped_duplicates,
        submits_recovered.map_or("(n/a)".to_owned(), |d| format!("{:.2}s", d.as_secs_f64())),
        all_ended_after.as_secs_f64(),
    );
    println!("{report}");
    write_report(&format!("durable-fault-{}.txt", scenario.name), &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqs_away_during_submits_refuses_them_and_loses_nothing_accepted() {
    run(Scenario {
        name: "sqs-submits",
        away: Away::Sqs,
        during: During::Submits,
        jobs: 160,
        outage: Duration::from_secs(3),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqs_away_during_consumption_delays_jobs_and_loses_none() {
    run(Scenario {
        name: "sqs-consumption",
        away: Away::Sqs,
        during: During::Consumption,
        jobs: 120,
        outage: Duration::from_secs(4),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_away_refuses_submits_and_keeps_messages_until_recorded() {
    run(Scenario {
        name: "dynamodb",
        away: Away::DynamoDb,
        during: During::Submits,
        jobs: 160,
        outage: Duration::from_secs(4),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqs_and_dynamodb_away_together_lose_nothing_accepted() {
    run(Scenario {
        name: "both",
        away: Away::Both,
        during: During::Submits,
        jobs: 160,
        outage: Duration::from_secs(4),
    })
    .await;
}
