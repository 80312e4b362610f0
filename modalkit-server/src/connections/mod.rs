//! The HTTP listener: accepts connections up to a cap and serves each with
//! hyper's HTTP/1, closing those that stall. A connection must send its
//! first request head within `header_read_timeout_seconds` (from its first
//! byte, or from being accepted), may wait `idle_timeout_seconds` between
//! requests, and must send a request body within `body_read_timeout_seconds`
//! of its head (else 408). Past `max_connections` a new connection gets 503
//! with `Retry-After` and is closed. `axum::serve` does none of this: a
//! thousand half-open connections stayed open there for good.
//!
//! Metrics: `modalkit_http_connections_open`,
//! `modalkit_http_connections_accepted_total`,
//! `modalkit_http_connections_refused_total` and
//! `modalkit_http_connections_timed_out_total{timeout="header|idle|body"}`.

mod activity;
mod descriptors;
mod request;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use modalkit_core::settings::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

use crate::error::ApiError;
use activity::{Activity, PhaseTimeouts, WatchedIo};
use request::RequestWatch;

pub(crate) use request::body_timeout_in;

/// What the listener serves: the router, cloned per connection.
pub(crate) trait Router:
    tower::Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Router for S where
    S: tower::Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The connection limits of `server_config`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    timeouts: PhaseTimeouts,
    body_read_timeout: Duration,
    max_connections: usize,
}

impl ConnectionLimits {
    pub(crate) fn new(config: &ServerConfig) -> Self {
        ConnectionLimits {
            timeouts: PhaseTimeouts {
                header_read: Duration::from_secs_f64(config.header_read_timeout_seconds),
                idle: Duration::from_secs_f64(config.idle_timeout_seconds),
            },
            body_read_timeout: Duration::from_secs_f64(config.body_read_timeout_seconds),
            max_connections: config.max_connections,
        }
    }
}

/// Serves `service` on `listener` until `stop` resolves; then stops
/// accepting, closes idle connections, lets those serving a request finish
/// it, and returns once every connection is closed.
pub(crate) async fn serve<S: Router>(
    listener: TcpListener,
    service: S,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
) {
    let cap = descriptors::connection_cap(limits.max_connections);
    let permits = Arc::new(Semaphore::new(cap));
    let lingering = Arc::new(Semaphore::new(LINGERING));
    let connections = TaskTracker::new();
    let (shutdown, shutdown_requested) = watch::channel(false);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // Out of descriptors or memory: let other connections close
                // before trying again, as axum and hyper's examples do.
                tracing::warn!(%err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        metrics::counter!("modalkit_http_connections_accepted_total").increment(1);
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                let open = OpenConnection::count();
                let service = service.clone();
                let shutdown_requested = shutdown_requested.clone();
                connections.spawn(async move {
                    serve_connection(stream, service, limits, shutdown_requested).await;
                    drop((open, permit));
                });
            }
            Err(_) => refuse(stream, cap, &lingering),
        }
    }
    drop(listener);
    let _ = shutdown.send(true);
    connections.close();
    connections.wait().await;
}

/// Serves one connection under its watchdog.
async fn serve_connection<S: Router>(
    stream: TcpStream,
    service: S,
    limits: ConnectionLimits,
    mut shutdown_requested: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let io = TokioIo::new(WatchedIo::new(stream, Arc::clone(&activity)));
    let service = TowerToHyperService::new(RequestWatch {
        inner: service,
        activity: Arc::clone(&activity),
        body_read_timeout: limits.body_read_timeout,
    });
    let connection = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::pin!(connection);
    let mut shutting_down = false;
    loop {
        let deadline = activity.deadline(limits.timeouts);
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(err) = served {
                    tracing::debug!(%err, "connection ended with an error");
                }
                return;
            }
            () = activity.changed() => {}
            () = sleep_until(deadline.map(|(at, _)| at)) => {
                // The phase may have changed since the deadline was read.
                if let Some((at, expiry)) = activity.deadline(limits.timeouts)
                    && at <= tokio::time::Instant::now()
                {
                    metrics::counter!("modalkit_http_connections_timed_out_total", "timeout" => expiry.label())
                        .increment(1);
                    tracing::debug!(timeout = expiry.label(), "closing a stalled connection");
                    return;
                }
            }
            _ = shutdown_requested.changed(), if !shutting_down => {
                shutting_down = true;
                if !activity.is_busy() {
                    return;
                }
                // Finish the request in flight, then close.
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Answers a connection past the cap with 503 and closes it. The reply
/// follows the request head (a client library takes a reply that comes
/// before its request for a broken connection), read for at most a second;
/// then the write side is shut and what else the client sends is dropped
/// for up to a second, since closing with unread bytes resets the
/// connection and can destroy the reply before the client reads it. At
/// most `LINGERING` refused connections are handled at once; past that
/// they are closed at once, so refusals stay bounded in descriptors too.
fn refuse(stream: TcpStream, cap: usize, lingering: &Arc<Semaphore>) {
    metrics::counter!("modalkit_http_connections_refused_total").increment(1);
    let Ok(permit) = Arc::clone(lingering).try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let mut stream = stream;
        let mut head = Vec::with_capacity(1024);
        let mut buffer = [0u8; 4096];
        let read_head = tokio::time::timeout(Duration::from_secs(1), async {
            while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
            }
            true
        });
        if matches!(read_head.await, Ok(true)) {
            let reply = ApiError::TooManyConnections(cap).raw_reply();
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&reply)).await;
            let _ = stream.shutdown().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while matches!(stream.read(&mut buffer).await, Ok(n) if n > 0) {}
            })
            .await;
        }
        drop(permit);
    });
}

/// Most refused connections lingering at once (see [`refuse`]).
const LINGERING: usize = 256;

/// Counts a connection in `modalkit_http_connections_open` while alive.
struct OpenConnection;

impl OpenConnection {
    fn count() -> OpenConnection {
        metrics::gauge!("modalkit_http_connections_open").increment(1.0);
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("modalkit_http_connections_open").decrement(1.0);
    }
}
