//! The leader-following endpoint against a real etcd and two real TCP backends.

use std::net::SocketAddr;
use std::time::Duration;

use paas_coord::{Batch, Coord};
use paas_router::tcp::{EndpointConfig, LeaderRecord, TcpEndpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that greets each connection with its name and then echoes.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                socket.write_all(name.as_bytes()).await.unwrap();
                let mut buf = [0u8; 64];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn put<T: serde::Serialize>(coord: &Coord, key: &str, value: &T) {
    let mut batch = Batch::new();
    batch.put(key, value).unwrap();
    coord.commit(batch).await.unwrap();
}

async fn set_leader(coord: &Coord, key: &str, member: &str, addr: SocketAddr) {
    let record = LeaderRecord {
        member: member.into(),
        addr,
    };
    put(coord, key, &record).await;
}

/// Connects through the endpoint and returns the stream and the greeting read from it.
async fn greeting(endpoint: SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(endpoint).await.unwrap();
    let mut buf = [0u8; 1];
    let n = stream.read(&mut buf).await.unwrap();
    assert_eq!(
        n, 1,
        "endpoint closed the connection before the backend greeted"
    );
    (stream, String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test]
async fn follows_the_leader_key_and_closes_connections_to_a_deposed_leader() {
    let etcd_server = paas_it::EtcdServer::start().expect("etcd");
    let etcd = Coord::connect(&[etcd_server.endpoint()], "paas", Duration::from_secs(5))
        .await
        .unwrap();
    let key = "test/leader";
    let (a, b) = (backend("A").await, backend("B").await);

    let endpoint = TcpEndpoint::start(
        "127.0.0.1:0".parse().unwrap(),
        EndpointConfig {
            coord: etcd.clone(),
            leader_key: key.into(),
            no_leader_wait: Duration::from_secs(30),
        },
    )
    .await
    .unwrap();
    let addr = endpoint.local_addr();

    // A connection made while no one leads waits for the first leader.
    let waiting = tokio::spawn(greeting(addr));
    tokio::time::sleep(Duration::from_millis(200)).await;
    set_leader(&etcd, key, "a", a).await;
    let (mut first, name) = waiting.await.unwrap();
    assert_eq!(name, "A");

    // Bytes flow both ways through the endpoint.
    first.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    first.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");

    // Leadership moves: the open connection is closed, a reconnect lands on B.
    set_leader(&etcd, key, "b", b).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), first.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "connection to the deposed leader stayed open"
    );
    let (_second, name) = greeting(addr).await;
    assert_eq!(name, "B");
    assert_eq!(endpoint.current_leader(), Some(b));

    // The key disappears (lease expired): the connection to B is closed too.
    let mut batch = Batch::new();
    batch.remove(key);
    etcd.commit(batch).await.unwrap();
    let mut second = _second;
    let closed = tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "connection stayed open after the leader key vanished"
    );

    // Garbage in the key is refused as "no leader" and the endpoint keeps running.
    put(&etcd, key, &"not a leader record").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(endpoint.current_leader(), None);
    set_leader(&etcd, key, "a", a).await;
    let (_third, name) = greeting(addr).await;
    assert_eq!(name, "A");
}
