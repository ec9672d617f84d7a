//! When to tick: watches on the prefixes the scheduler's view is made of (apps,
//! formations, hosts, placements, job statuses). Any change ends
//! [`Triggers::changed`]; the tick then reads the view fresh, so nothing here needs to
//! be decoded or kept. A watcher that fails to start or dies only costs reaction time:
//! the loop still ticks every interval.

use futures::future::select_all;
use paas_coord::{Coord, DocWatch};
use serde::de::IgnoredAny;
use tokio::sync::watch;

use paas_model::keys;

/// One snapshot receiver per watched prefix, and the watches that feed them.
pub(crate) struct Triggers {
    receivers: Vec<watch::Receiver<paas_coord::Snapshot<IgnoredAny>>>,
    _watches: Vec<DocWatch<IgnoredAny>>,
}

impl Triggers {
    /// Starts a watch on every prefix of the view; a prefix whose watch cannot start is
    /// logged and left to the periodic tick.
    pub(crate) async fn start(coord: &Coord) -> Triggers {
        let mut watches = Vec::new();
        for prefix in [
            keys::apps(),
            keys::formations(),
            keys::hosts(),
            keys::placements(),
            keys::job_statuses(),
        ] {
            match coord.watch_prefix::<IgnoredAny>(&prefix).await {
                Ok(w) => watches.push(w),
                Err(e) => {
                    tracing::warn!(%prefix, error = %e, "scheduler: cannot watch; relying on the periodic tick")
                }
            }
        }
        Triggers {
            receivers: watches.iter().map(DocWatch::subscribe).collect(),
            _watches: watches,
        }
    }

    /// Waits until any watched prefix changes. Never returns if no watch is alive.
    pub(crate) async fn changed(&mut self) {
        while !self.receivers.is_empty() {
            let waits = self.receivers.iter_mut().map(|rx| Box::pin(rx.changed()));
            let (result, index, _) = select_all(waits).await;
            match result {
                Ok(()) => return,
                Err(_) => {
                    // The watcher is gone (only if it panicked): stop waiting on it.
                    self.receivers.remove(index);
                }
            }
        }
        std::future::pending::<()>().await;
    }
}
