//! What wakes a supervisor's tick before its idle wait is over: a change of the
//! cluster's records made by someone else, or a new (or lost) lease.
//!
//! An engine whose cluster is steady may tick rarely ([`crate::supervisor::Engine::next_wait`])
//! because everything that calls for a decision either changes a record (a leader key
//! deleted or expired, a state document written, a member joining, leaving or changing
//! its status) or the member's own lease; this module turns those into a wake-up. The
//! records are followed with a paas-coord prefix watch (one stream per member instead of
//! a read per tick); the member's own registration is left out, since the member wrote
//! it itself. Only the local server is still looked at by the idle tick.
//!
//! The watch is started lazily and restarted after it died; a failed start is retried
//! after [`RETRY`]. Starting or restarting it wakes the tick once, since a change may
//! have happened while nothing watched. Whether a change matters is [`relevant`], pure.

use std::collections::BTreeMap;
use std::time::Duration;

use paas_coord::{Coord, DocWatch};
use serde_json::Value;
use tokio::sync::watch;

use crate::lease::LeaseState;
use crate::records::{Keys, REQUEST_TIMEOUT};

/// Pause before trying again to start a watch that could not start.
const RETRY: Duration = Duration::from_secs(1);

/// Whether the documents differ outside the member's own registration `own` (a key
/// relative to the cluster's prefix). Pure.
pub fn relevant(
    before: &BTreeMap<String, Value>,
    after: &BTreeMap<String, Value>,
    own: &str,
) -> bool {
    fn without<'a>(
        docs: &'a BTreeMap<String, Value>,
        own: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Value)> {
        docs.iter().filter(move |(key, _)| key.as_str() != own)
    }
    !without(before, own).eq(without(after, own))
}

/// Follows the cluster's records and the member's lease; [`Wake::changed`] resolves on
/// the next change that matters.
pub struct Wake {
    coord: Coord,
    base: String,
    own: String,
    watch: Option<DocWatch<Value>>,
    seen: BTreeMap<String, Value>,
    lease: watch::Receiver<Option<LeaseState>>,
    lease_id: Option<i64>,
}

impl Wake {
    /// Follows the records at `keys` (all but member `me`'s registration) through
    /// `coord`, and the lease published on `lease`.
    pub fn new(
        coord: Coord,
        keys: &Keys,
        me: &str,
        lease: watch::Receiver<Option<LeaseState>>,
    ) -> Self {
        let base = keys.base().to_string();
        let own = keys
            .member(me)
            .strip_prefix(&base)
            .expect("a member key is under its cluster's prefix")
            .to_string();
        let lease_id = lease.borrow().map(|l| l.id);
        Wake {
            coord,
            base,
            own,
            watch: None,
            seen: BTreeMap::new(),
            lease,
            lease_id,
        }
    }

    /// Resolves when another member's record, the state document or the leader key
    /// changed, when the lease was replaced or lost, or when the watch (re)started.
    /// Cancel-safe: nothing seen is lost when the future is dropped.
    pub async fn changed(&mut self) {
        loop {
            if self.watch.is_none() {
                tokio::select! {
                    started = tokio::time::timeout(REQUEST_TIMEOUT, self.coord.watch_prefix::<Value>(&self.base)) => {
                        match started {
                            Ok(Ok(watch)) => {
                                self.seen = watch.current().docs;
                                self.watch = Some(watch);
                                return;
                            }
                            Ok(Err(err)) => tracing::debug!(error = %err, "cannot watch the cluster's records yet"),
                            Err(_) => tracing::debug!("watching the cluster's records timed out"),
                        }
                    }
                    () = Self::lease_changed(&mut self.lease, &mut self.lease_id) => return,
                }
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => continue,
                    () = Self::lease_changed(&mut self.lease, &mut self.lease_id) => return,
                }
            }
            let watch = self.watch.as_mut().expect("started above");
            tokio::select! {
                snapshot = watch.changed() => match snapshot {
                    Some(snapshot) => {
                        let wake = relevant(&self.seen, &snapshot.docs, &self.own);
                        self.seen = snapshot.docs;
                        if wake {
                            return;
                        }
                    }
                    None => self.watch = None,
                },
                () = Self::lease_changed(&mut self.lease, &mut self.lease_id) => return,
            }
        }
    }

    /// Resolves when the lease id differs from `seen` (a renewal of the same lease is no
    /// change); pends forever once the lease keeper is gone.
    async fn lease_changed(
        lease: &mut watch::Receiver<Option<LeaseState>>,
        seen: &mut Option<i64>,
    ) {
        loop {
            if lease.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            let id = lease.borrow_and_update().map(|l| l.id);
            if id != *seen {
                *seen = id;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn docs(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn only_changes_by_others_matter() {
        let before = docs(&[
            ("state", json!({"generation": 1})),
            ("leader", json!({"member": "r0"})),
            ("members/r0", json!({"offset": 1})),
            ("members/r1", json!({"offset": 1})),
        ]);
        let mut mine = before.clone();
        mine.insert("members/r0".into(), json!({"offset": 9}));
        assert!(!relevant(&before, &mine, "members/r0"));
        assert!(!relevant(&before, &before, "members/r0"));

        let mut other = before.clone();
        other.insert("members/r1".into(), json!({"offset": 9}));
        assert!(relevant(&before, &other, "members/r0"));

        let mut no_leader = before.clone();
        no_leader.remove("leader");
        assert!(relevant(&before, &no_leader, "members/r0"));

        let mut joined = before.clone();
        joined.insert("members/r2".into(), json!({}));
        assert!(relevant(&before, &joined, "members/r0"));

        let mut mine_gone = before.clone();
        mine_gone.remove("members/r0");
        assert!(!relevant(&before, &mine_gone, "members/r0"));
    }
}
