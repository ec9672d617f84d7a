//! Shared pieces of the backup tests: a real PostgreSQL with one provisioned app
//! database, its provider as a backup target, row snapshots, and a TCP proxy that can
//! cut an S3 server off in the middle of an upload.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use paas_backups::Target;
use paas_postgres::provision::{PostgresProvider, ProviderConfig, ResourceData};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A PostgreSQL server and the provider over it.
pub struct Pg {
    pub server: paas_it::PostgresServer,
    pub provider: Arc<PostgresProvider>,
}

impl Pg {
    pub fn start() -> Pg {
        let server = paas_it::PostgresServer::start().expect("postgres");
        let provider = Arc::new(PostgresProvider::new(ProviderConfig {
            host: "127.0.0.1".into(),
            port: server.port(),
            superuser_password: "unused-with-trust".into(),
            tls: None,
        }));
        Pg { server, provider }
    }

    /// Provisions a database for (`app`, `id`) and returns it as a backup target.
    pub async fn target(&self, app: &str, id: &str) -> Target {
        let (_, data) = self
            .provider
            .provision_database(app, id)
            .await
            .expect("provision");
        Target {
            app: app.into(),
            resource: id.into(),
            kind: "postgres".into(),
            data: serde_json::to_value(data).unwrap(),
            provider: self.provider.clone(),
        }
    }

    /// A connection as the target's own role, to its database.
    pub async fn connect(&self, target: &Target) -> tokio_postgres::Client {
        let data: ResourceData = serde_json::from_value(target.data.clone()).unwrap();
        let conninfo = format!(
            "host=127.0.0.1 port={} user={} dbname={}",
            self.server.port(),
            data.role,
            data.database
        );
        let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }
}

/// Fills `orders` with `rows` rows of ~100 bytes of poorly compressible text.
pub async fn fill(client: &tokio_postgres::Client, rows: u32) {
    client
        .batch_execute(&format!(
            "CREATE TABLE orders (id int PRIMARY KEY, note text NOT NULL);
             INSERT INTO orders SELECT i, md5(i::text) || md5((i * 7)::text) || md5((i * 13)::text)
               FROM generate_series(1, {rows}) i;"
        ))
        .await
        .expect("fill");
}

/// The count and an order-independent digest of `orders`, or `None` without the table.
pub async fn snapshot(client: &tokio_postgres::Client) -> Option<(i64, String)> {
    let row = client
        .query_one(
            "SELECT count(*), coalesce(md5(string_agg(id::text || ':' || note, ',' ORDER BY id)), '')
             FROM orders",
            &[],
        )
        .await
        .ok()?;
    Some((row.get(0), row.get(1)))
}

/// A TCP proxy to `upstream` that cuts every connection, and refuses new ones, once
/// `cut_after` bytes went upstream; [`Proxy::heal`] lets connections through again.
pub struct Proxy {
    pub port: u16,
    down: watch::Sender<bool>,
    limit: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: u16, cut_after: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (down, _) = watch::channel(false);
        let sent = Arc::new(AtomicU64::new(0));
        let limit = Arc::new(AtomicU64::new(cut_after));
        let (down_tx, counter, max) = (down.clone(), sent, limit.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *down_tx.borrow() {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                tokio::spawn(pipe(
                    client,
                    server,
                    down_tx.clone(),
                    counter.clone(),
                    max.clone(),
                ));
            }
        });
        Proxy {
            port,
            down,
            limit,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    /// Lets connections through again, with no byte limit.
    pub fn heal(&self) {
        self.limit.store(u64::MAX, Ordering::SeqCst);
        self.down.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    down: watch::Sender<bool>,
    sent: Arc<AtomicU64>,
    limit: Arc<AtomicU64>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut watch_down = down.subscribe();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = client_read.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            let total = sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            if total > limit.load(Ordering::SeqCst) && !*down.borrow() {
                down.send_replace(true);
                return;
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let back = tokio::io::copy(&mut server_read, &mut client_write);
    tokio::select! {
        _ = up => {}
        _ = back => {}
        _ = watch_down.wait_for(|d| *d) => {}
    }
}
