//! A TCP proxy that cuts a server off once a number of bytes went to it: every open
//! connection is closed and new ones are refused until [`CutProxy::heal`]. For "the
//! store went away in the middle of an upload" tests (point the client at
//! [`CutProxy::endpoint`] instead of the server).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy to 127.0.0.1:`upstream` on a port of its own, stopped when dropped.
pub struct CutProxy {
    port: u16,
    down: watch::Sender<bool>,
    limit: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Starts forwarding to 127.0.0.1:`upstream`, cutting once `cut_after` bytes (over
    /// every connection) went upstream.
    pub async fn start(upstream: u16, cut_after: u64) -> std::io::Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (down, _) = watch::channel(false);
        let limit = Arc::new(AtomicU64::new(cut_after));
        let sent = Arc::new(AtomicU64::new(0));
        let (down_tx, max) = (down.clone(), limit.clone());
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
                    sent.clone(),
                    max.clone(),
                ));
            }
        });
        Ok(CutProxy {
            port,
            down,
            limit,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`, the proxy's address as an HTTP endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the cut happened (and was not healed since).
    pub fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    /// Lets connections through again, with no byte limit.
    pub fn heal(&self) {
        self.limit.store(u64::MAX, Ordering::SeqCst);
        self.down.send_replace(false);
    }
}

impl Drop for CutProxy {
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
