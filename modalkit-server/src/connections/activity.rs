//! What one connection is doing, as its watchdog needs to know: waiting for
//! a request, reading a request head, or serving requests. The socket
//! wrapper marks the first byte of a head, the request wrapper marks a
//! request's start and the end of its response; each change wakes the
//! watchdog, which closes the connection once the phase has lasted past its
//! timeout.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long each phase may last before the connection is closed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PhaseTimeouts {
    pub(crate) header_read: Duration,
    pub(crate) idle: Duration,
}

/// Why a watchdog closed a connection (the metric's `timeout` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// No whole request head in time (half-open or slow-header clients,
    /// and connections that never sent a byte).
    Header,
    /// A keep-alive connection with no new request in time.
    Idle,
}

impl Expiry {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Expiry::Header => "header",
            Expiry::Idle => "idle",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Accepted; not a byte read yet.
    Fresh(Instant),
    /// Between requests of a keep-alive connection.
    Idle(Instant),
    /// The first bytes of a request head arrived at this instant.
    Head(Instant),
    /// This many requests are being served (their responses not yet
    /// written); no connection timeout applies (the request's own deadline
    /// and the body read timeout do).
    Busy(u32),
}

/// One connection's phase and the watchdog's wake-up.
#[derive(Debug)]
pub(crate) struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            phase: Mutex::new(Phase::Fresh(Instant::now())),
            changed: Notify::new(),
        })
    }

    fn update(&self, change: impl FnOnce(Phase) -> Phase) {
        let mut phase = self
            .phase
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *phase = change(*phase);
        drop(phase);
        // A permit is stored when the watchdog is not waiting, so no change
        // is missed between its check and its wait.
        self.changed.notify_one();
    }

    fn current(&self) -> Phase {
        *self
            .phase
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes arrived: a request head starts unless one is being served.
    fn bytes_read(&self) {
        if matches!(self.current(), Phase::Fresh(_) | Phase::Idle(_)) {
            self.update(|phase| match phase {
                Phase::Fresh(_) | Phase::Idle(_) => Phase::Head(Instant::now()),
                other => other,
            });
        }
    }

    /// A request's head was read and its handling starts; the guard marks
    /// its end when dropped (with the response body, or the handler's
    /// future if that is dropped first).
    pub(crate) fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.update(|phase| match phase {
            Phase::Busy(requests) => Phase::Busy(requests + 1),
            _ => Phase::Busy(1),
        });
        RequestGuard {
            activity: Arc::clone(self),
        }
    }

    /// Whether a request is being served (shutdown waits for it).
    pub(crate) fn is_busy(&self) -> bool {
        matches!(self.current(), Phase::Busy(_))
    }

    /// When the current phase times out, and why; `None` while busy.
    pub(crate) fn deadline(&self, timeouts: PhaseTimeouts) -> Option<(Instant, Expiry)> {
        match self.current() {
            Phase::Fresh(since) | Phase::Head(since) => {
                Some((since + timeouts.header_read, Expiry::Header))
            }
            Phase::Idle(since) => Some((since + timeouts.idle, Expiry::Idle)),
            Phase::Busy(_) => None,
        }
    }

    /// Resolves at the next phase change.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Marks the end of one request when dropped.
#[derive(Debug)]
pub(crate) struct RequestGuard {
    activity: Arc<Activity>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.activity.update(|phase| match phase {
            Phase::Busy(requests) if requests > 1 => Phase::Busy(requests - 1),
            _ => Phase::Idle(Instant::now()),
        });
    }
}

/// The socket, reporting every read that brings bytes to its [`Activity`].
#[derive(Debug)]
pub(crate) struct WatchedIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> WatchedIo<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>) -> Self {
        WatchedIo { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: PhaseTimeouts = PhaseTimeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(75),
    };

    #[tokio::test]
    async fn phases_move_with_bytes_and_requests() {
        let activity = Activity::new();
        let (_, why) = activity
            .deadline(TIMEOUTS)
            .expect("a fresh connection has a deadline");
        assert_eq!(why, Expiry::Header);

        activity.bytes_read();
        let (head_deadline, why) = activity.deadline(TIMEOUTS).expect("head deadline");
        assert_eq!(why, Expiry::Header);
        // More bytes of the same head do not move its deadline.
        activity.bytes_read();
        assert_eq!(
            activity.deadline(TIMEOUTS).map(|d| d.0),
            Some(head_deadline)
        );

        let first = activity.request_started();
        let second = activity.request_started();
        assert!(activity.is_busy());
        assert!(activity.deadline(TIMEOUTS).is_none());
        drop(first);
        assert!(activity.is_busy(), "one of two requests still runs");
        drop(second);
        let (_, why) = activity.deadline(TIMEOUTS).expect("idle deadline");
        assert_eq!(why, Expiry::Idle);
        // The watchdog is woken by the changes (a stored permit).
        tokio::time::timeout(Duration::from_millis(100), activity.changed())
            .await
            .expect("changes wake the watchdog");
    }
}
