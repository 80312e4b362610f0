//! moto's SQS/SSM server for tests: the one `scripts/test.sh` started
//! (`MODALKIT_TEST_MOTO_ENDPOINT`), or a private one a test can stop and
//! restart. moto is installed by `scripts/moto.sh install`.
#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::config::Credentials;
use serde_json::Value;

use crate::support::free_port;

/// A moto server.
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    port: u16,
    child: Option<Child>,
}

fn moto_binary() -> PathBuf {
    if let Ok(path) = std::env::var("MODALKIT_TEST_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-moto/bin/moto_server");
    assert!(
        path.is_file(),
        "moto is not installed: run `scripts/moto.sh install` (scripts/test.sh does) — looked for {}",
        path.display()
    );
    path
}

impl Moto {
    /// The shared server: the script's if it started one, else one started
    /// for this test binary.
    pub fn shared() -> &'static Moto {
        static SHARED: OnceLock<Moto> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var("MODALKIT_TEST_MOTO_ENDPOINT") {
            Ok(endpoint) => Moto {
                port: endpoint
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0),
                endpoint,
                child: None,
            },
            Err(_) => Moto::start_watched(),
        })
    }

    /// A server that exits with this test process (statics are never
    /// dropped, so the shared one must not outlive its binary).
    fn start_watched() -> Moto {
        let port = free_port();
        let watchdog = r#"trap 'kill $child 2>/dev/null' EXIT; "$0" -H 127.0.0.1 -p "$1" >/dev/null 2>&1 & child=$!; while kill -0 "$2" 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 0.5; done"#;
        let child = Command::new("bash")
            .args(["-c", watchdog])
            .arg(moto_binary())
            .arg(port.to_string())
            .arg(std::process::id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            child: Some(child),
        };
        moto.wait_until_up();
        moto
    }

    fn wait_until_up(&self) {
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "moto did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A private server on a free port.
    pub fn start() -> Moto {
        let port = free_port();
        let mut moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            child: None,
        };
        moto.restart();
        moto
    }

    /// Stops the server (its queues are lost).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        self.child = Some(child);
        self.wait_until_up();
    }

    /// An AWS configuration pointing at this server.
    pub fn aws_config(&self) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_sqs::config::SharedCredentialsProvider::new(
                Credentials::new("testing", "testing", None, None, "moto"),
            ))
            .build()
    }

    /// Environment variables that point a server process at this moto.
    pub fn process_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
    }

    /// An SQS client for this server.
    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.aws_config())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A queue name no other test uses.
pub fn unique_queue(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Receives until `want` messages (counting duplicates once by body) have
/// arrived or `limit` passes; returns the bodies, deleting what it read.
pub async fn collect_messages(
    client: &aws_sdk_sqs::Client,
    queue: &str,
    want: usize,
    limit: Duration,
) -> Vec<String> {
    let started = Instant::now();
    let mut bodies: Vec<String> = Vec::new();
    let mut url = None;
    while started.elapsed() < limit {
        if url.is_none() {
            url = client
                .get_queue_url()
                .queue_name(queue)
                .send()
                .await
                .ok()
                .and_then(|o| o.queue_url().map(str::to_owned));
            if url.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let queue_url = url.clone().expect("url");
        let received = match client
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
        {
            Ok(received) => received,
            Err(_) => {
                url = None;
                continue;
            }
        };
        for message in received.messages() {
            if let Some(body) = message.body() {
                bodies.push(body.to_owned());
            }
            if let Some(handle) = message.receipt_handle() {
                let _ = client
                    .delete_message()
                    .queue_url(&queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await;
            }
        }
        let distinct: std::collections::BTreeSet<&String> = bodies.iter().collect();
        if distinct.len() >= want {
            break;
        }
    }
    bodies
}

/// Every message in `queue` (read until it stays empty), as
/// (job id attribute, body), deleting what it read.
pub async fn drain_labelled(client: &aws_sdk_sqs::Client, queue: &str) -> Vec<(String, Value)> {
    let url = client
        .get_queue_url()
        .queue_name(queue)
        .send()
        .await
        .expect("moto answers")
        .queue_url()
        .expect("moto answers")
        .to_owned();
    let mut messages = Vec::new();
    let mut empty_polls = 0;
    while empty_polls < 2 {
        let received = client
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .expect("moto answers");
        if received.messages().is_empty() {
            empty_polls += 1;
            continue;
        }
        empty_polls = 0;
        for message in received.messages() {
            let job_id = message
                .message_attributes()
                .and_then(|a| a.get("job_id"))
                .and_then(|v| v.string_value())
                .unwrap_or_default()
                .to_owned();
            let body: Value =
                serde_json::from_str(message.body().expect("moto answers")).expect("moto answers");
            messages.push((job_id, body));
            client
                .delete_message()
                .queue_url(&url)
                .receipt_handle(message.receipt_handle().expect("moto answers"))
                .send()
                .await
                .expect("moto answers");
        }
    }
    messages
}
