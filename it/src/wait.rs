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
