//! Client connections admitted within limits: so many open from one client address at
//! most, and so many in all.
//!
//! Every open client connection holds a descriptor and a worker's buffers. Without a
//! limit, one client that opens connections and sends nothing holds them until they
//! time out, and enough of them exhaust the descriptors of the process, which in `paas
//! up` are also the controller's, the log aggregator's and the etcd client's (`EMFILE`
//! for all of them). As nginx's `limit_conn` and `worker_connections` do:
//! - a connection from a client address already holding its limit is closed at once
//!   (counted in `router_connections_refused_total`, logged once per episode). IPv6
//!   addresses count by /64, the block one subscriber usually holds whole;
//! - at the total limit, the accept loops stop accepting until a connection closes: new
//!   connections wait in the kernel's backlog instead of taking descriptors. Meanwhile
//!   the router is [`Admission::pressed`], and connections silent for a quarter of the
//!   idle timeout are closed ([`crate::idle::quiet`]), as nginx reuses idle keep-alive
//!   connections when it runs out.
//!
//! The counts change once per connection, never per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// How often waiting at the total is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Whom a per-client limit counts: an IPv4 address, or an IPv6 /64 (IPv4-mapped IPv6
/// addresses count as their IPv4 address). Pure.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// The default total of client connections: two fifths of the process's open-file
/// limit. Another two fifths are the backend connections' (their requests use one each,
/// [`crate::upstream::BackendConns`]), and a fifth is left for the rest of the process
/// (in `paas up`: the controller, the log aggregator's inputs, etcd).
pub fn default_total() -> usize {
    open_file_limit() / 5 * 2
}

/// The process's open-file limit (its soft limit, as raised at start), at least 160.
pub fn open_file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    soft.max(160)
}

/// The connection limits and the counts they are checked against, shared by the accept
/// loops and the workers.
pub struct Admission {
    per_client: usize,
    total: usize,
    counts: Mutex<Counts>,
    /// Signalled when a connection closes, for an accept loop waiting at the total.
    freed: Notify,
    /// Whether an accept loop waits at the total (read by silent connections).
    pressed: AtomicBool,
    open: Gauge,
    refused: Counter,
}

#[derive(Default)]
struct Counts {
    open: usize,
    /// Whether the accept loops were told to wait, and have not accepted since.
    waiting: bool,
    /// When waiting at the total was last logged: at most once per [`LOG_EVERY`], as
    /// under a flood the loops go from waiting to accepting one and back all the time.
    logged: Option<Instant>,
    by_client: HashMap<IpAddr, ClientCount>,
}

#[derive(Default)]
struct ClientCount {
    open: usize,
    /// Whether this client's refusal was logged since it last went under its limit.
    warned: bool,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("per_client", &self.per_client)
            .field("total", &self.total)
            .field("open", &self.lock().open)
            .finish()
    }
}

impl Admission {
    /// Limits of `per_client` connections per client address and `total` in all (each
    /// at least 1); `open` gauges the connections open, `refused` counts those closed
    /// for their client's limit.
    pub fn new(per_client: usize, total: usize, open: Gauge, refused: Counter) -> Arc<Self> {
        Arc::new(Admission {
            per_client: per_client.max(1),
            total: total.max(1),
            counts: Mutex::new(Counts::default()),
            freed: Notify::new(),
            pressed: AtomicBool::new(false),
            open,
            refused,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves while fewer than the total are open: at once, or when one closes. An
    /// accept loop waits for it before it accepts. (The loops do not reserve, so at the
    /// total each may take one more: a connection per listener beyond it, at most.)
    pub async fn room(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut counts = self.lock();
                if counts.open < self.total {
                    counts.waiting = false;
                    self.pressed.store(false, Ordering::Relaxed);
                    return;
                }
                if !counts.waiting {
                    counts.waiting = true;
                    self.pressed.store(true, Ordering::Relaxed);
                }
                if counts.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                    counts.logged = Some(Instant::now());
                    tracing::warn!(
                        open = counts.open,
                        limit = self.total,
                        "the router holds its most client connections: accepting again when one closes"
                    );
                }
            }
            freed.await;
        }
    }

    /// Counts an accepted connection among the open ones, until the slot is dropped.
    pub fn slot(self: &Arc<Self>) -> Slot {
        let mut counts = self.lock();
        counts.open += 1;
        self.open.set(counts.open as i64);
        Slot(Arc::clone(self))
    }

    /// The client at `ip` may hold one more connection (returned), or holds its limit
    /// (`None`: close the connection).
    pub fn client(self: &Arc<Self>, ip: IpAddr) -> Option<ClientPermit> {
        let key = client_key(ip);
        let mut counts = self.lock();
        let count = counts.by_client.entry(key).or_default();
        if count.open >= self.per_client {
            self.refused.inc();
            if !count.warned {
                count.warned = true;
                tracing::warn!(client = %key, limit = self.per_client,
                    "a client holds its most connections: closing its new ones until one closes");
            }
            return None;
        }
        count.open += 1;
        Some(ClientPermit {
            admission: Arc::clone(self),
            key,
        })
    }

    /// Whether an accept loop waits at the total: silent connections then make room.
    pub fn pressed(&self) -> bool {
        self.pressed.load(Ordering::Relaxed)
    }

    /// Connections open now (the total the slots count).
    pub fn open(&self) -> usize {
        self.lock().open
    }
}

/// One of the total's places, held by a connection from its accept until it closes.
pub struct Slot(Arc<Admission>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.0.lock();
        counts.open = counts.open.saturating_sub(1);
        self.0.open.set(counts.open as i64);
        drop(counts);
        self.0.freed.notify_one();
    }
}

/// One of a client's places, held by its connection until it closes.
pub struct ClientPermit {
    admission: Arc<Admission>,
    key: IpAddr,
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        let mut counts = self.admission.lock();
        if let Some(count) = counts.by_client.get_mut(&self.key) {
            count.open = count.open.saturating_sub(1);
            if count.open == 0 {
                counts.by_client.remove(&self.key);
            } else if count.open < self.admission.per_client {
                count.warned = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn admission(per_client: usize, total: usize) -> Arc<Admission> {
        Admission::new(per_client, total, Gauge::default(), Counter::default())
    }

    #[test]
    fn clients_count_by_ipv4_address_and_ipv6_slash_64() {
        let key = |s: &str| client_key(s.parse().unwrap()).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    #[test]
    fn a_client_at_its_limit_is_refused_until_one_of_its_connections_closes() {
        let refused = Counter::default();
        let a = Admission::new(2, 100, Gauge::default(), refused.clone());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let first = a.client(ip).expect("first");
        let _second = a.client(ip).expect("second");
        assert!(a.client(ip).is_none(), "a third from the same address");
        assert!(
            a.client("2001:db8::1".parse().unwrap()).is_some(),
            "another client is not counted against it"
        );
        assert_eq!(refused.get(), 1);
        drop(first);
        assert!(a.client(ip).is_some(), "a place came free");
    }

    #[test]
    fn a_client_with_no_connection_left_is_forgotten() {
        let a = admission(3, 100);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        drop((a.client(ip), a.client(ip)));
        assert!(a.lock().by_client.is_empty());
    }

    #[tokio::test]
    async fn at_the_total_room_waits_until_a_connection_closes() {
        let open = Gauge::default();
        let a = Admission::new(10, 2, open.clone(), Counter::default());
        a.room().await;
        let first = a.slot();
        a.room().await;
        let _second = a.slot();
        assert_eq!((a.open(), open.get()), (2, 2));
        let waiting = tokio::spawn({
            let a = Arc::clone(&a);
            async move { a.room().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "room for a third while two are open"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("room once the first closed")
            .unwrap();
        assert_eq!((a.open(), open.get()), (1, 1));
        assert!(!a.pressed());
    }
}
