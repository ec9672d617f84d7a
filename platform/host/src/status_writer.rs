//! One writer for the keys every job task of a host publishes (`job-status/<job>`,
//! `services/<app>-<type>/<job>`), so a burst of job starts costs a few etcd
//! transactions instead of one per status change.
//!
//! Job tasks hand over the state they want a key in (a document or absent); the writer
//! keeps only the newest wish per key and commits up to [`OPS_PER_TXN`] of them per
//! transaction, on the host lease current at that moment. One transaction is in flight
//! at a time, so two wishes for one key are never applied out of order. A failed commit
//! keeps its wishes (unless newer ones replaced them) and is retried.
//!
//! Why: after a host loss the surviving agents each start hundreds of jobs at once; with
//! a transaction per status change, their ~2,000 writes queued behind each other in etcd
//! and the last job reported Up seconds after it started.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use paas_coord::{Batch, LeaseState};
use tokio::sync::mpsc;

use crate::Shared;

/// Keys written per transaction: within etcd's default limit of 128 operations.
pub(crate) const OPS_PER_TXN: usize = 100;

/// Pause after a failed commit before the next attempt.
const RETRY_DELAY: Duration = Duration::from_millis(250);

/// A key's wanted state: a JSON document, or absent.
type Wish = Option<serde_json::Value>;

/// The handle job tasks write through; cloning it is cheap.
#[derive(Clone)]
pub(crate) struct StatusWriter {
    tx: mpsc::UnboundedSender<(String, Wish)>,
}

impl StatusWriter {
    /// Starts the writer task; it ends once every handle is dropped and what it holds is
    /// written (or no lease is left to write it on).
    pub(crate) fn start(shared: Arc<Shared>) -> StatusWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(shared, rx));
        StatusWriter { tx }
    }

    /// Wants `key` to hold `value` on the host lease.
    pub(crate) fn put<T: serde::Serialize>(&self, key: &str, value: &T) {
        match serde_json::to_value(value) {
            Ok(v) => {
                let _ = self.tx.send((key.to_string(), Some(v)));
            }
            Err(e) => tracing::error!(%key, error = %e, "cannot encode a job document"),
        }
    }

    /// Wants `key` gone.
    pub(crate) fn remove(&self, key: &str) {
        let _ = self.tx.send((key.to_string(), None));
    }
}

/// Takes up to `n` wishes out of `pending`, in key order.
pub(crate) fn take_batch(pending: &mut BTreeMap<String, Wish>, n: usize) -> Vec<(String, Wish)> {
    let keys: Vec<String> = pending.keys().take(n).cloned().collect();
    keys.into_iter()
        .map(|k| {
            let wish = pending.remove(&k).expect("key just listed");
            (k, wish)
        })
        .collect()
}

/// Puts back the wishes of a failed commit that no newer wish replaced meanwhile.
pub(crate) fn restore(pending: &mut BTreeMap<String, Wish>, failed: Vec<(String, Wish)>) {
    for (key, wish) in failed {
        pending.entry(key).or_insert(wish);
    }
}

async fn write_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<(String, Wish)>) {
    let mut pending: BTreeMap<String, Wish> = BTreeMap::new();
    let mut open = true;
    let mut failures = 0u32;
    loop {
        if pending.is_empty() {
            if !open {
                return;
            }
            match rx.recv().await {
                Some((key, wish)) => {
                    pending.insert(key, wish);
                }
                None => return,
            }
        }
        // Everything already queued joins this round: newest wish per key.
        if open {
            open = drain(&mut rx, &mut pending);
        }
        // A lost lease counts as none: keys written on it would vanish with it.
        let lease = shared
            .lease
            .read()
            .expect("lease lock")
            .clone()
            .filter(|l| !matches!(l.state(), LeaseState::Lost(_)));
        let Some(lease) = lease else {
            if !open {
                // Shutting down: the lease is revoked (or lost), and its keys with it.
                return;
            }
            // Wait for the agent to register on a new one.
            tokio::time::sleep(RETRY_DELAY).await;
            continue;
        };
        let batch_wishes = take_batch(&mut pending, OPS_PER_TXN);
        let mut batch = Batch::new();
        for (key, wish) in &batch_wishes {
            match wish {
                Some(doc) => {
                    if let Err(e) = batch.put_leased(key, doc, &lease) {
                        tracing::error!(%key, error = %e, "cannot encode a job document");
                    }
                }
                None => {
                    batch.remove(key);
                }
            }
        }
        match shared.coord.commit(batch).await {
            Ok(_) => {
                if failures > 0 {
                    tracing::info!(
                        failed_attempts = failures,
                        "writing job statuses works again"
                    );
                }
                failures = 0;
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, keys = batch_wishes.len(), "writing job statuses failed; retrying");
                } else {
                    tracing::debug!(error = %e, "writing job statuses failed");
                }
                failures += 1;
                restore(&mut pending, batch_wishes);
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }
}

/// Moves what is queued into `pending`; false once every handle is gone.
fn drain(
    rx: &mut mpsc::UnboundedReceiver<(String, Wish)>,
    pending: &mut BTreeMap<String, Wish>,
) -> bool {
    loop {
        match rx.try_recv() {
            Ok((key, wish)) => {
                pending.insert(key, wish);
            }
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wish(n: u64) -> Wish {
        Some(serde_json::json!(n))
    }

    #[test]
    fn batches_take_at_most_n_in_key_order() {
        let mut pending: BTreeMap<String, Wish> =
            (0..5).map(|i| (format!("k{i}"), wish(i))).collect();
        let first = take_batch(&mut pending, 3);
        assert_eq!(
            first.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["k0", "k1", "k2"]
        );
        assert_eq!(pending.len(), 2);
        assert_eq!(take_batch(&mut pending, 3).len(), 2);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_failed_batch_never_overwrites_a_newer_wish() {
        let mut pending: BTreeMap<String, Wish> = BTreeMap::new();
        pending.insert("a".into(), wish(1));
        pending.insert("b".into(), wish(1));
        let failed = take_batch(&mut pending, 10);
        // While the commit was in flight, `a` was removed.
        pending.insert("a".into(), None);
        restore(&mut pending, failed);
        assert_eq!(pending["a"], None, "the newer wish (removal) stays");
        assert_eq!(pending["b"], wish(1), "the failed put is retried");
    }
}
