//! Client connections on which nothing moves are closed.
//!
//! hyper closes an HTTP/1 connection whose next request head does not arrive within its
//! header-read timeout, but only once it knows the connection speaks HTTP/1: one that
//! sends no byte at all waits in hyper-util's protocol detection (HTTP/1, or HTTP/2's
//! preface) with no deadline, an HTTP/2 connection without streams has none either, and
//! a client that stops reading its response holds the connection (and the backend's)
//! forever, as hyper has no write timeout. Each one held a descriptor until the client
//! let go.
//!
//! [`Watched`] counts the reads and writes of a client's socket; [`quiet`] resolves once
//! none happened for a whole timeout while no request of the connection was waiting for
//! its backend's answer ([`Pending`]: that silence is the backend's, and the backend
//! timeout ends it with a 504; counting it as the client's cut requests on backends
//! slower than twice the idle timeout, and under pressure those slower than half of it). The connection is then shut down gracefully (idle:
//! closed at once; a request in progress still gets its response), and dropped if it
//! stays silent for another timeout (nginx's `client_header_timeout` and `send_timeout`
//! do the same, 60 s each by default). The connection's places in the router's limits
//! (its `admission` slot and permit; a backend connection's count) live in its socket's
//! wrapper, so they are held for as long as the socket is open, an upgraded (websocket)
//! connection's included.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Checks of the activity count per idle timeout: a silent connection is found silent
/// between one timeout and a quarter more after its last byte.
const CHECKS: u32 = 4;

/// A socket, counting the reads and writes that move bytes, and holding `H` (the
/// connection's places in the router's connection limits) until it is dropped.
pub struct Watched<S, H> {
    inner: S,
    activity: Arc<AtomicU64>,
    _holds: H,
}

impl<S, H> Watched<S, H> {
    /// `inner`, counted, holding `holds` until it is dropped.
    pub fn new(inner: S, holds: H) -> Self {
        Watched {
            inner,
            activity: Arc::new(AtomicU64::new(0)),
            _holds: holds,
        }
    }

    /// The count of reads and writes that moved bytes, for [`quiet`].
    pub fn activity(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.activity)
    }

    fn moved(&self) {
        // One task polls a connection's socket: a plain increment, no locked one.
        let n = self.activity.load(Ordering::Relaxed);
        self.activity.store(n.wrapping_add(1), Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin, H: Unpin> AsyncRead for Watched<S, H> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin, H: Unpin> AsyncWrite for Watched<S, H> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        polled
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

/// The requests of one connection that wait for their backend's response head.
#[derive(Debug, Default)]
pub struct Pending(AtomicUsize);

impl Pending {
    /// Counts one request until the guard drops (answered, or given up).
    pub fn enter(&self) -> Entered<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Entered(&self.0)
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

/// One request counted in a [`Pending`] until dropped.
#[derive(Debug)]
pub struct Entered<'a>(&'a AtomicUsize);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once `activity` has not changed for `timeout` (checked [`CHECKS`] times per
/// timeout, so between `timeout` and a quarter more after the last change), or for one
/// check while `pressed` says the router is out of connections; a check that finds a
/// request `pending` counts as a change.
pub async fn quiet(
    activity: &AtomicU64,
    pending: &Pending,
    timeout: Duration,
    pressed: impl Fn() -> bool,
) {
    let step = timeout / CHECKS;
    let mut seen = activity.load(Ordering::Relaxed);
    let mut unchanged = 0;
    loop {
        tokio::time::sleep(step).await;
        let now = activity.load(Ordering::Relaxed);
        if now == seen && !pending.any() {
            unchanged += 1;
            if unchanged >= CHECKS || pressed() {
                return;
            }
        } else {
            seen = now;
            unchanged = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Admission;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn quiet_waits_for_a_whole_timeout_without_activity() {
        let activity = Arc::new(AtomicU64::new(0));
        let timeout = Duration::from_millis(400);
        let started = tokio::time::Instant::now();
        let watcher = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { quiet(&activity, &Pending::default(), timeout, || false).await }
        });
        // Activity at 200 ms: silence is counted from then.
        tokio::time::sleep(Duration::from_millis(200)).await;
        activity.fetch_add(1, Ordering::Relaxed);
        watcher.await.unwrap();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(600), "{took:?}");
    }

    #[tokio::test]
    async fn under_pressure_one_silent_check_is_enough() {
        let activity = AtomicU64::new(0);
        let timeout = Duration::from_secs(8);
        let started = tokio::time::Instant::now();
        quiet(&activity, &Pending::default(), timeout, || true).await;
        let took = started.elapsed();
        assert!(took >= timeout / CHECKS && took < timeout, "{took:?}");
    }

    #[tokio::test]
    async fn a_request_waiting_for_its_backend_is_not_silence() {
        let activity = AtomicU64::new(0);
        let pending = Pending::default();
        let timeout = Duration::from_millis(200);
        let waiting = pending.enter();
        let started = tokio::time::Instant::now();
        let quiet = quiet(&activity, &pending, timeout, || true);
        tokio::pin!(quiet);
        // Even under pressure: nothing resolves while the request waits.
        assert!(
            tokio::time::timeout(timeout * 3, quiet.as_mut())
                .await
                .is_err(),
            "quiet while a request waited"
        );
        drop(waiting);
        quiet.await;
        assert!(started.elapsed() >= timeout * 3);
    }

    #[tokio::test]
    async fn reads_and_writes_that_move_bytes_count_and_the_places_go_with_the_socket() {
        let admission = Admission::new(1, 10, Gauge::default(), Counter::default());
        let (client, server) = tokio::io::duplex(64);
        let slot = admission.slot();
        let permit = admission.client("192.0.2.1".parse().unwrap());
        let mut watched = Watched::new(server, (slot, permit));
        let activity = watched.activity();
        let mut client = client;
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        watched.read_exact(&mut buf).await.unwrap();
        watched.write_all(b"pong").await.unwrap();
        assert_eq!(activity.load(Ordering::Relaxed), 2);
        assert_eq!(admission.open(), 1);
        assert!(admission.client("192.0.2.1".parse().unwrap()).is_none());
        drop(watched);
        assert_eq!(admission.open(), 0);
        assert!(admission.client("192.0.2.1".parse().unwrap()).is_some());
    }
}
