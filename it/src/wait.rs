//! Waiting in tests for a running system to reach a state, by polling.

use std::future::Future;
use std::time::Duration;

/// How often [`wait_for`] checks.
const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it returns true; panics naming `what` once `limit` has passed.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// How long [`patiently`] retries a failing read before giving up.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Runs `read` until it succeeds and returns its value; each failure is printed and
/// retried after a short pause, and the last one panics naming `what` once
/// [`PATIENCE`] has passed.
///
/// For a test's own observations of the system (its etcd records, say): on a loaded
/// machine one such read can time out (a single etcd stalled on `fdatasync` behind a
/// database's start-up writes), which says nothing about the system under test, whose
/// own reads retry the same way.
pub async fn patiently<T, E, F, Fut>(what: &str, mut read: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match read().await {
            Ok(value) => return value,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("{what} failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what} failed for {PATIENCE:?}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn patiently_retries_until_the_read_succeeds() {
        let mut failures = 3;
        let value = patiently("a read", || {
            let fail = failures > 0;
            failures -= 1;
            async move {
                if fail {
                    Err("timeout")
                } else {
                    Ok(7)
                }
            }
        })
        .await;
        assert_eq!(value, 7);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "a read failed for 30s: timeout")]
    async fn patiently_gives_up_after_its_patience() {
        patiently::<(), _, _, _>("a read", || async { Err("timeout") }).await;
    }
}
