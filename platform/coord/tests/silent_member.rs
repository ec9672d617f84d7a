//! A lease whose keep-alive connection goes silent (an etcd member on a machine that
//! died, or behind a cut link: nothing answers, nothing is closed) is still renewed,
//! over a new connection, before it can expire; with several members, at another one
//! when its member also turns new connections away.
//!
//! Relays in front of a real etcd stand for the network and the members: `silence`
//! makes every connection a relay carries so far stop forwarding in both directions,
//! as a dead peer would, while connections opened later are carried normally, unless
//! the relay `refuse`s them (closes each at once).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use paas_coord::{Coord, LeaseState};
use paas_it::EtcdServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP relay to one address whose current connections can be silenced.
struct Relay {
    url: String,
    /// Connections with an index below this are silent.
    silent_below: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    refusing: Arc<AtomicBool>,
}

impl Relay {
    async fn start(to: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let silent_below = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let refusing = Arc::new(AtomicBool::new(false));
        let (silent, count, refuse) = (silent_below.clone(), accepted.clone(), refusing.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if refuse.load(Ordering::SeqCst) {
                    continue;
                }
                let index = count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(&to).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, index, silent.clone()));
                tokio::spawn(pump(sr, cw, index, silent.clone()));
            }
        });
        Relay {
            url,
            silent_below,
            accepted,
            refusing,
        }
    }

    /// Whether new connections are closed at once.
    fn refuse(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }

    /// Every connection carried so far stops forwarding, for good.
    fn silence(&self) {
        self.silent_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either ends, or forever holds what it read once
/// connection `index` is silenced.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    index: usize,
    silent_below: Arc<AtomicUsize>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if index < silent_below.load(Ordering::SeqCst) {
            // A dead peer: both sockets stay open (owned by this task) and nothing is
            // passed on.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_lease_outlives_its_keep_alive_connection_going_silent() {
    let etcd = EtcdServer::start().expect("etcd");
    let to = etcd.endpoint().trim_start_matches("http://").to_string();
    let relay = Relay::start(to).await;
    let via_relay = Coord::connect(&[relay.url.as_str()], "t", Duration::from_secs(5))
        .await
        .expect("connect through the relay");
    let observer = Coord::connect(&[etcd.endpoint()], "t", Duration::from_secs(5))
        .await
        .expect("connect");
    let ttl = Duration::from_secs(3);
    let registration = via_relay
        .register("web", "w1", &"10.0.0.1:80".to_string(), ttl)
        .await
        .expect("register");
    // The keeper opens its connection at the first renewal, a third of the TTL in.
    tokio::time::sleep(ttl / 3 + Duration::from_millis(700)).await;
    assert!(
        relay.accepted.load(Ordering::SeqCst) >= 2,
        "the keeper's connection is open"
    );

    relay.silence();
    let watch = observer
        .watch_service::<String>("web")
        .await
        .expect("watch");
    held_for_three_ttls(&registration, &watch, ttl).await;
}

#[tokio::test]
async fn a_lease_moves_to_another_member_when_its_member_stops_answering() {
    let etcd = EtcdServer::start().expect("etcd");
    let to = etcd.endpoint().trim_start_matches("http://").to_string();
    let (a, b) = (Relay::start(to.clone()).await, Relay::start(to).await);
    let via_relays = Coord::connect(
        &[a.url.as_str(), b.url.as_str()],
        "t",
        Duration::from_secs(5),
    )
    .await
    .expect("connect through the relays");
    let observer = Coord::connect(&[etcd.endpoint()], "t", Duration::from_secs(5))
        .await
        .expect("connect");
    let ttl = Duration::from_secs(3);
    let registration = via_relays
        .register("web", "w1", &"10.0.0.1:80".to_string(), ttl)
        .await
        .expect("register");
    let watch = observer
        .watch_service::<String>("web")
        .await
        .expect("watch");
    tokio::time::sleep(ttl / 3 + Duration::from_millis(700)).await;
    // Each member in turn dies: whichever the keeper was on, one of the two turns
    // makes it move.
    for (dead, alive) in [(&a, &b), (&b, &a)] {
        alive.refuse(false);
        dead.refuse(true);
        dead.silence();
        held_for_three_ttls(&registration, &watch, ttl).await;
    }
}

/// Checks every third of a TTL, for three TTLs, that the lease is held and its key is
/// in etcd.
async fn held_for_three_ttls(
    registration: &paas_coord::Registration,
    watch: &paas_coord::ServiceWatch<String>,
    ttl: Duration,
) {
    for _ in 0..9 {
        tokio::time::sleep(ttl / 3).await;
        assert!(
            matches!(registration.lease().state(), LeaseState::Held { .. }),
            "lease lost: {:?}",
            registration.lease().state()
        );
        assert!(
            watch.current().instances.contains_key("w1"),
            "the registration expired"
        );
    }
}

/// Requests go to one member at a time: when it dies (its connections silent, new ones
/// closed at once), reads move to the next member and none fails.
#[tokio::test]
async fn reads_go_on_when_one_member_dies() {
    let etcd = EtcdServer::start().expect("etcd");
    let to = etcd.endpoint().trim_start_matches("http://").to_string();
    let (a, b) = (Relay::start(to.clone()).await, Relay::start(to).await);
    // Each member in turn dies under a fresh client: one of the two turns kills the
    // member the client's requests were going to.
    for (dead, alive) in [(&a, &b), (&b, &a)] {
        dead.refuse(false);
        alive.refuse(false);
        let coord = Coord::connect(
            &[a.url.as_str(), b.url.as_str()],
            "t",
            Duration::from_secs(5),
        )
        .await
        .expect("connect through the relays");
        let mut batch = paas_coord::Batch::new();
        batch.put("k", &1u32).unwrap();
        coord.commit(batch).await.expect("put");
        dead.refuse(true);
        dead.silence();
        reads_all_succeed(&coord).await;
    }
}

/// 60 reads over about 6 s, all answered.
async fn reads_all_succeed(coord: &Coord) {
    let (mut failed, started) = (Vec::new(), std::time::Instant::now());
    for i in 0..60 {
        match coord.get::<u32>("k").await {
            Ok(Some((1, _))) => {}
            other => failed.push(format!("read {i} at {:?}: {other:?}", started.elapsed())),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        failed.is_empty(),
        "{} of 60 reads failed: {failed:#?}",
        failed.len()
    );
}
