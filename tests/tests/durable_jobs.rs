//! Durable async jobs with real server processes against moto (SQS +
//! DynamoDB): `/predict_async` puts each job on the SQS input queue, every
//! process consumes it, records live in one DynamoDB table. Two processes
//! take 300 jobs; one is killed with SIGKILL mid-load and started again;
//! every accepted job ends exactly once in the store, its result is in the
//! success or failure queue, and it is polled through the process that did
//! not take it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use modalkit_tests::moto::{Moto, drain_labelled, unique_queue};
use modalkit_tests::support::{ServerProcess, client, write_report};
use serde_json::{Value, json};
use tokio::sync::Mutex;

const BINARY: &str = env!("CARGO_BIN_EXE_modalkit-test-server");

const JOBS: usize = 300;

fn config(dir: &Path, input_queue: &str, table: &str) -> PathBuf {
    let path = dir.join("modalkit.yaml");
    std::fs::write(
        &path,
        format!(
            "app_settings:\n  app_prefix: durable\n  batch_config: {{max_batch_size: 8, wait_ms: 2}}\n  queue_config:\n    backend: sqs\n    input_queue: {input_queue}\n    input_visibility_timeout_seconds: 3\n    input_wait_seconds: 1\n    input_max_in_flight: 16\n    job_store: dynamodb\n    job_table: {table}\n    dead_letter_path: '{}'\n  server_config: {{max_queue_depth: 8}}\nmodel_settings:\n  model_entries:\n    echo: {{}}\n",
            dir.join("dead.jsonl").display()
        ),
    )
    .unwrap();
    path
}

/// Messages received by a consumer and not yet deleted.
async fn in_flight(client: &aws_sdk_sqs::Client, queue: &str) -> String {
    let url = client
        .get_queue_url()
        .queue_name(queue)
        .send()
        .await
        .unwrap();
    let attributes = client
        .get_queue_attributes()
        .queue_url(url.queue_url().unwrap())
        .attribute_names(
            aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        )
        .send()
        .await
        .unwrap();
    attributes
        .attributes()
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .cloned()
        })
        .unwrap_or_default()
}

/// Which process took a job: 0 or 1.
type Taken = BTreeMap<String, (usize, usize)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_jobs_survive_a_killed_process_and_are_visible_from_both() {
    let moto = Moto::shared();
    let sqs = moto.sqs();
    let dir = tempfile::tempdir().unwrap();
    let (input, success, failure) = (
        unique_queue("durable-in"),
        unique_queue("durable-ok"),
        unique_queue("durable-err"),
    );
    let table = unique_queue("jobs");
    let config = config(dir.path(), &input, &table);
    let env = moto.process_env();
    let spawn =
        |name: &str| ServerProcess::spawn(Path::new(BINARY), &config, &env, dir.path().join(name));
    let first = spawn("a.log");
    let second = spawn("b.log");
    let urls = Arc::new(Mutex::new([
        first.base_url.clone(),
        second.base_url.clone(),
    ]));
    let mut processes = [Some(first), Some(second)];
    let http = client();

    // Every 10th job fails in postprocess: its result goes to the failure queue.
    let body = |i: usize| {
        let mut message = json!({"text": format!("job{i}"), "sleep_ms": 40});
        if i % 10 == 7 {
            message["fail"] = json!("item");
        }
        json!({"message": message, "success_queue": success, "failure_queue": failure})
    };
    let taken = Arc::new(Mutex::new(Taken::new()));
    let refused = Arc::new(Mutex::new(BTreeSet::<usize>::new()));
    let submit = |range: std::ops::Range<usize>| {
        let (http, urls, taken, refused) = (
            http.clone(),
            Arc::clone(&urls),
            Arc::clone(&taken),
            Arc::clone(&refused),
        );
        let bodies: Vec<(usize, Value)> = range.map(|i| (i, body(i))).collect();
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for chunk in bodies.chunks(8) {
                for (i, body) in chunk.iter().cloned() {
                    let (http, urls, taken, refused) = (
                        http.clone(),
                        Arc::clone(&urls),
                        Arc::clone(&taken),
                        Arc::clone(&refused),
                    );
                    tasks.spawn(async move {
                        let process = i % 2;
                        let url = urls.lock().await[process].clone();
                        let reply = http
                            .post(format!("{url}/predict_async"))
                            .json(&body)
                            .send()
                            .await;
                        match reply {
                            Ok(reply) if reply.status().is_success() => {
                                let reply: Value = reply.json().await.unwrap();
                                let id = reply["job_id"].as_str().unwrap().to_owned();
                                taken.lock().await.insert(id, (process, i));
                            }
                            // The killed process: not accepted, so not promised.
                            _ => {
                                refused.lock().await.insert(i);
                            }
                        }
                    });
                }
                while tasks.join_next().await.is_some() {}
            }
        })
    };

    let load = submit(0..JOBS);
    // Kill process 0 mid-load, while its consumer holds jobs in flight.
    while taken.lock().await.len() < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let in_flight = in_flight(&sqs, &input).await;
    let killed_at = Instant::now();
    let mut victim = processes[0].take().unwrap();
    victim.signal("KILL");
    victim.wait_exit(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = spawn("a2.log");
    urls.lock().await[0] = restarted.base_url.clone();
    processes[0] = Some(restarted);
    load.await.unwrap();

    let taken = taken.lock().await.clone();
    let accepted = taken.len();
    let refused_indices = refused.lock().await.clone();
    let refused = refused_indices.len();
    assert_eq!(accepted + refused, JOBS);
    assert!(accepted >= 200, "most jobs are accepted: {accepted}");

    // Every accepted job ends, polled through the process that did not take it.
    let urls = urls.lock().await.clone();
    let started = Instant::now();
    let mut records: BTreeMap<String, Value> = BTreeMap::new();
    while records.len() < accepted {
        for (id, (process, _)) in &taken {
            if records.contains_key(id) {
                continue;
            }
            let other = &urls[1 - process];
            let reply = http.get(format!("{other}/jobs/{id}")).send().await.unwrap();
            assert_eq!(
                reply.status(),
                200,
                "job {id} is known to the other process"
            );
            let record: Value = reply.json().await.unwrap();
            if matches!(record["status"].as_str(), Some("succeeded" | "failed")) {
                records.insert(id.clone(), record);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} of {accepted} jobs ended; logs:\n{}",
            records.len(),
            processes[1].as_ref().unwrap().log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered_after = killed_at.elapsed();

    // Each job's result is in the queue its outcome names, labelled with its id.
    let delivered_ok = drain_labelled(&sqs, &success).await;
    let delivered_err = drain_labelled(&sqs, &failure).await;
    let mut deliveries: BTreeMap<String, usize> = BTreeMap::new();
    let mut unanswered = 0;
    for (job_id, body) in delivered_ok.iter().chain(&delivered_err) {
        if !taken.contains_key(job_id) {
            // SQS had the job when the process was killed, before its reply
            // left: it still runs, though its client saw an error.
            let text = body["echo"]
                .as_str()
                .or(body["original_message"]["message"]["text"].as_str())
                // An item that failed alone: "item 'job7' was asked to fail".
                .or(body["error"].as_str().and_then(|e| e.split('\'').nth(1)))
                .unwrap_or_default()
                .to_lowercase();
            let i: usize = text.trim_start_matches("job").parse().unwrap_or(usize::MAX);
            assert!(
                refused_indices.contains(&i),
                "a delivery for an unknown job {job_id}: {body}"
            );
            unanswered += 1;
            continue;
        }
        *deliveries.entry(job_id.clone()).or_default() += 1;
    }
    for (id, (_, i)) in &taken {
        let record = &records[id];
        let expect_failure = i % 10 == 7;
        let status = record["status"].as_str().unwrap();
        assert_eq!(
            status,
            if expect_failure {
                "failed"
            } else {
                "succeeded"
            },
            "{record}"
        );
        assert!(
            deliveries.contains_key(id),
            "job {id} ({status}) was never delivered"
        );
        if !expect_failure {
            assert_eq!(record["output"]["echo"], json!(format!("JOB{i}")));
        }
    }
    for (job_id, body) in delivered_ok.iter().filter(|(id, _)| taken.contains_key(id)) {
        let i = taken[job_id].1;
        assert_eq!(
            body["echo"],
            json!(format!("JOB{i}")),
            "the delivery matches its job"
        );
    }
    let duplicates: usize = deliveries.values().map(|n| n - 1).sum();
    let missing: BTreeSet<&String> = taken
        .keys()
        .filter(|id| !deliveries.contains_key(*id))
        .collect();
    assert!(missing.is_empty());
    let report = format!(
        "durable kill test: {JOBS} submitted, {accepted} accepted ({refused} refused while a process was down), \
         {in_flight} messages in flight at the kill, \
         {} delivered ({} success, {} failure, {unanswered} of jobs whose reply the kill cut off), \
         {duplicates} duplicates (same job id), \
         all ended {:.1}s after the kill",
        delivered_ok.len() + delivered_err.len(),
        delivered_ok.len(),
        delivered_err.len(),
        recovered_after.as_secs_f64()
    );

    println!("{report}");
    write_report("durable-kill.txt", &report);
}
