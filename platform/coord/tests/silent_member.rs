//! A lease whose keep-alive connection goes silent (an etcd member on a machine that
//! died, or behind a cut link: nothing answers, nothing is closed) is still renewed,
//! over a new connection, before it can expire.
//!
//! A relay in front of a real etcd stands for the network: `silence` makes every
//! connection it carries so far stop forwarding in both directions, as a dead peer
//! would, while connections opened later are carried normally.

use std::sync::atomic::{AtomicUsize, Ordering};
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
}

impl Relay {
    async fn start(to: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let silent_below = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (silent, count) = (silent_below.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
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
        }
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
    // Three TTLs: without a new connection the lease would be lost within one (HTTP/2
    // keep-alive pings notice the silence only after about 8 s).
    let watch = observer
        .watch_service::<String>("web")
        .await
        .expect("watch");
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
