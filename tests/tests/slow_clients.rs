//! Connections that stall or crowd the server, over real sockets: thousands
//! of half-open (a partial request line), slow-body (headers, then a trickle)
//! and silent connections are closed by the header and body read timeouts
//! while a normal client keeps being served; an idle keep-alive connection
//! is closed by the idle timeout; past `max_connections` new connections get
//! 503 with `Retry-After` and are counted. Each case is checked in
//! `/metrics` too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use modalkit_tests::support::{
    TestServer, client, echo_settings_with, metric_value, post_json, scrape,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// The tests read process-wide metrics: one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// A counter or gauge in `/metrics` (0 when not yet recorded).
async fn metric(server: &TestServer, series: &str) -> f64 {
    metric_value(&scrape(&server.base_url).await, series)
}

fn address(server: &TestServer) -> String {
    server.base_url.trim_start_matches("http://").to_owned()
}

/// Opens `count` connections and writes `prefix` on each.
async fn open(server: &TestServer, count: usize, prefix: &[u8]) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(address(server)).await.expect("connect");
        if !prefix.is_empty() {
            stream.write_all(prefix).await.expect("write");
        }
        streams.push(stream);
    }
    streams
}

/// Reads until the server closes the connection (or resets it); returns what
/// was read, or `None` if it stayed open past `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&received).into_owned())
}

/// Checks the process may hold what a test opens (both ends of every
/// connection live in this process).
fn needs_descriptors(wanted: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let hard = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(4))
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    assert!(
        hard >= wanted,
        "this test holds {wanted} descriptors; the hard open-files limit is {hard}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_while_normal_clients_are_served() {
    let _serial = SERIAL.lock().await;
    const HALF_OPEN: usize = 1_500;
    const SLOW_BODY: usize = 1_000;
    const SILENT: usize = 500;
    needs_descriptors(2 * (HALF_OPEN + SLOW_BODY + SILENT) as u64 + 512);
    let server = TestServer::start(echo_settings_with("echo", |app| {
        app.server_config.header_read_timeout_seconds = 2.0;
        app.server_config.body_read_timeout_seconds = 2.0;
        app.server_config.idle_timeout_seconds = 3.0;
        app.server_config.max_connections = 10_000;
    }))
    .await;
    let timed_out =
        |kind: &str| format!("modalkit_http_connections_timed_out_total{{timeout=\"{kind}\"}}");
    let header_before = metric(&server, &timed_out("header")).await;
    let body_before = metric(&server, &timed_out("body")).await;
    let idle_before = metric(&server, &timed_out("idle")).await;

    let mut half_open = open(&server, HALF_OPEN, b"POST /predict_sync HTT").await;
    let mut slow_body = open(
        &server,
        SLOW_BODY,
        b"POST /predict_sync HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"text\": \"",
    )
    .await;
    let mut silent = open(&server, SILENT, b"").await;
    // An idle keep-alive connection: one whole request, then nothing.
    let mut idle = open(&server, 1, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .remove(0);
    let opened = tokio::time::Instant::now();

    // Meanwhile a normal client is served, on new connections each time.
    let open_gauge = metric(&server, "modalkit_http_connections_open").await;
    assert!(
        open_gauge >= (HALF_OPEN + SLOW_BODY + SILENT) as f64,
        "every stalled connection is open and counted: {open_gauge}"
    );
    for round in 0..5 {
        let normal = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let (status, body) = post_json(
            &normal,
            &server.url("/predict_sync"),
            &json!({"text": format!("round {round}")}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every stalled connection is closed by its timeout (2 s, checked by a
    // watchdog), well within 6 s of opening.
    let within = Duration::from_secs(6).saturating_sub(opened.elapsed());
    for stream in &mut half_open {
        let reply = read_until_closed(stream, within).await;
        assert!(reply.is_some(), "a half-open connection stayed open");
    }
    for stream in &mut silent {
        let reply = read_until_closed(stream, within).await;
        assert_eq!(
            reply.as_deref(),
            Some(""),
            "a silent connection is closed without a reply"
        );
    }
    for stream in &mut slow_body {
        let reply = read_until_closed(stream, within)
            .await
            .expect("a slow-body connection stayed open");
        assert!(reply.starts_with("HTTP/1.1 408"), "slow body: {reply}");
        assert!(
            reply.contains("\"code\":\"body_read_timeout\""),
            "slow body: {reply}"
        );
        assert!(
            reply.to_ascii_lowercase().contains("connection: close"),
            "slow body: {reply}"
        );
    }
    let health = read_until_closed(&mut idle, Duration::from_secs(6))
        .await
        .expect("the idle keep-alive connection stayed open");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let header = metric(&server, &timed_out("header")).await - header_before;
    let body = metric(&server, &timed_out("body")).await - body_before;
    let idle_closed = metric(&server, &timed_out("idle")).await - idle_before;
    assert!(
        header >= (HALF_OPEN + SILENT) as f64,
        "header timeouts counted: {header}"
    );
    assert!(body >= SLOW_BODY as f64, "body timeouts counted: {body}");
    assert!(idle_closed >= 1.0, "idle timeouts counted: {idle_closed}");
    let open_now = metric(&server, "modalkit_http_connections_open").await;
    assert!(
        open_now < 10.0,
        "connections still open after the timeouts: {open_now}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_get_503_and_the_cap_frees_as_they_close() {
    let _serial = SERIAL.lock().await;
    const CAP: usize = 50;
    let server = TestServer::start(echo_settings_with("echo", |app| {
        app.server_config.max_connections = CAP;
        app.server_config.header_read_timeout_seconds = 30.0;
    }))
    .await;
    let refused_before = metric(&server, "modalkit_http_connections_refused_total").await;
    // The cap is taken by silent connections (a scrape may hold one more
    // for a moment: wait until the cap is full).
    let holders = open(&server, CAP, b"").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    for _ in 0..20 {
        let mut stream = open(&server, 1, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .remove(0);
        let reply = read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .expect("a refused connection is closed");
        assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
        let lower = reply.to_ascii_lowercase();
        assert!(lower.contains("retry-after: 1"), "{reply}");
        assert!(lower.contains("connection: close"), "{reply}");
        assert!(
            reply.contains("\"code\":\"too_many_connections\""),
            "{reply}"
        );
        assert!(reply.contains(&format!("\"limit\":{CAP}")), "{reply}");
    }
    // A client library sees the 503 too.
    let response = client()
        .get(server.url("/health"))
        .send()
        .await
        .expect("a reply, not a reset");
    assert_eq!(response.status(), 503);

    drop(holders);
    // Closed connections give their slots back.
    let mut served = false;
    for _ in 0..50 {
        if let Ok(response) = client().get(server.url("/health")).send().await
            && response.status() == 200
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the server serves again once the holders closed");
    let refused = metric(&server, "modalkit_http_connections_refused_total").await - refused_before;
    assert!(refused >= 21.0, "refusals counted: {refused}");
    server.shutdown().await;
}
