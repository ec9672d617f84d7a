//! A worker's stop signal for its connections: [`StopSignal`] and its [`Stopped`]
//! future, which a connection task waits on beside its HTTP connection.
//!
//! Why not a `CancellationToken`: a connection task polls every future of its `select!`
//! whenever it wakes, several times per request, and each poll of a token's
//! `cancelled()` future takes the token's lock to refresh its waker (0.6% of the
//! router's CPU samples under `wrk`). A [`Stopped`] future reads one atomic flag per
//! poll and takes the signal's lock only when its task's waker changed, which for a
//! tokio task is once; the lock is taken again when the connection ends, and at stop.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Tells the connections of a worker to stop: each waits on a [`Stopped`] from
/// [`StopSignal::subscribe`].
#[derive(Debug, Default)]
pub struct StopSignal {
    stopped: AtomicBool,
    next_key: AtomicU64,
    /// The waker of every waiting connection, by its key.
    wakers: Mutex<HashMap<u64, Waker>>,
}

impl StopSignal {
    /// A signal not yet given.
    pub fn new() -> Arc<StopSignal> {
        Arc::new(StopSignal::default())
    }

    /// A future that completes once [`StopSignal::stop`] was called (at once if it was).
    pub fn subscribe(self: &Arc<Self>) -> Stopped {
        Stopped {
            signal: Arc::clone(self),
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            waker: None,
        }
    }

    /// Gives the signal: every [`Stopped`], waiting or future, completes.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let wakers: Vec<Waker> = self.lock().drain().map(|(_, w)| w).collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Whether [`StopSignal::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Connections waiting now (for tests).
    pub fn waiting(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Waker>> {
        self.wakers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Completes when its [`StopSignal`] is given.
#[derive(Debug)]
pub struct Stopped {
    signal: Arc<StopSignal>,
    key: u64,
    /// The waker registered with the signal, if any.
    waker: Option<Waker>,
}

impl Future for Stopped {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.is_stopped() {
            return Poll::Ready(());
        }
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let waker = cx.waker().clone();
            self.signal.lock().insert(self.key, waker.clone());
            self.waker = Some(waker);
            // A stop between the check above and the registration drained the wakers
            // before this one went in: look again.
            if self.signal.is_stopped() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if self.waker.is_some() {
            self.signal.lock().remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_connections_complete_at_stop_and_later_ones_at_once() {
        let signal = StopSignal::new();
        let waiting: Vec<_> = (0..3).map(|_| tokio::spawn(signal.subscribe())).collect();
        tokio::task::yield_now().await;
        while signal.waiting() < 3 {
            tokio::task::yield_now().await;
        }
        signal.stop();
        for w in waiting {
            w.await.unwrap();
        }
        assert_eq!(signal.waiting(), 0);
        signal.subscribe().await;
    }

    #[tokio::test]
    async fn a_finished_connection_leaves_no_waker_behind() {
        let signal = StopSignal::new();
        {
            let mut stopped = signal.subscribe();
            let polled = futures_poll_once(&mut stopped).await;
            assert!(polled.is_pending());
            assert_eq!(signal.waiting(), 1);
        }
        assert_eq!(signal.waiting(), 0);
        assert!(!signal.is_stopped());
    }

    /// Polls `f` once in the current task.
    async fn futures_poll_once(f: &mut Stopped) -> Poll<()> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }
}
