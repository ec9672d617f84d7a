//! The HTTP router in the daemons: its flags (shared by `paas up` and `paas host`) and
//! the one call that starts it (`paas_router::start`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use paas_coord::Coord;
use paas_logshipper::aggregator::Aggregator;
use paas_logshipper::shipper::{Shipper, ShipperConfig};
use paas_router::AccessLogConfig;

/// Flags of the HTTP router.
#[derive(clap::Args, Debug, Clone)]
pub struct RouterArgs {
    /// Address of the HTTP router (every app at http://<app>.<domain>).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub router_listen: SocketAddr,
    /// Address of the HTTPS router (certificates of routes added with --cert, by SNI).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub router_tls_listen: SocketAddr,
    /// Address of the router's /metrics (Prometheus) and /health.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub router_admin_listen: SocketAddr,
    /// An extra HTTP listener for a TCP load balancer in front: each connection starts
    /// with a PROXY protocol header (v1 or v2) naming the real client. Off by default.
    #[arg(long)]
    pub router_proxy_protocol_listen: Option<SocketAddr>,
    /// Every app is served at <app>.<domain>.
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// Client connections the router keeps open from one client address (an IPv6 /64)
    /// at most; a new one beyond is closed at once. Behind a load balancer, use
    /// --router-proxy-protocol-listen, so the limit counts the real clients.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub router_max_connections_per_client: u64,
    /// Client connections the router keeps open at most; at this many it accepts again
    /// when one closes (default: two fifths of the open-file limit).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub router_max_connections: Option<u64>,
    /// Backend connections the router keeps open at most (pooled, in use, upgraded); a
    /// request that needs another gets a 503 (default: two fifths of the open-file
    /// limit: one HTTP/2 client connection can carry 200 requests at once).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub router_max_backend_connections: Option<u64>,
    /// Seconds a client connection may stay silent (no byte either way) before the
    /// router asks it to close; one silent for as long again is dropped.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub router_idle_timeout: u64,
    /// Seconds a backend has to send its response's head (504 after).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub router_backend_timeout: u64,
    /// Largest request body in bytes (413 beyond). Bodies are held whole, so a failed
    /// attempt can be sent to another backend.
    #[arg(long, default_value_t = 10 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub router_max_body_bytes: u64,
    /// Bytes of request bodies the router holds at once, all requests together (503
    /// with Retry-After for a body beyond).
    #[arg(long, default_value_t = 256 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub router_max_buffered_body_bytes: u64,
}

impl RouterArgs {
    /// The router's limits: these flags over [`paas_router::Limits`]' defaults.
    pub fn limits(&self) -> paas_router::Limits {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let defaults = paas_router::Limits::default();
        paas_router::Limits {
            max_connections_per_client: size(self.router_max_connections_per_client),
            max_connections: self
                .router_max_connections
                .map_or(defaults.max_connections, size),
            max_backend_connections: self
                .router_max_backend_connections
                .map_or(defaults.max_backend_connections, size),
            client_idle_timeout: Duration::from_secs(self.router_idle_timeout),
            backend_timeout: Duration::from_secs(self.router_backend_timeout),
            max_body_bytes: size(self.router_max_body_bytes),
            max_buffered_body_bytes: size(self.router_max_buffered_body_bytes),
            ..defaults
        }
    }
}

/// Where the router's access lines go.
pub enum AccessLines {
    /// Through a spool in the router's data dir to an aggregator's syslog input (the
    /// aggregator of another machine: `paas host`).
    Ship(SocketAddr),
    /// Into the aggregator running in this process (`paas up`). `syslog` is its input,
    /// for the lines an earlier version left spooled.
    Local {
        /// The aggregator's accept path.
        aggregator: Aggregator,
        /// Its syslog input.
        syslog: Option<SocketAddr>,
    },
}

/// How often the shipping of a left-over spool is checked for its end.
const LEFTOVER_POLL: Duration = Duration::from_millis(500);

/// Starts the router on this host; access lines go where `access` says (none: no
/// access lines).
pub async fn start(
    coord: &Coord,
    args: &RouterArgs,
    host: &str,
    data_dir: &Path,
    access: Option<AccessLines>,
) -> Result<paas_router::Router> {
    let mut config = paas_router::RouterConfig::new(args.router_listen, host);
    config.tls_listen = Some(args.router_tls_listen);
    config.admin_listen = Some(args.router_admin_listen);
    config.proxy_protocol_listen = args.router_proxy_protocol_listen;
    config.domain = args.domain.clone();
    config.limits = args.limits();
    let spool_dir = data_dir.join("spool");
    config.access_log = match access {
        Some(AccessLines::Ship(aggregator)) => Some(AccessLogConfig::Ship {
            aggregator,
            spool_dir,
        }),
        Some(AccessLines::Local { aggregator, syslog }) => {
            if let Some(syslog) = syslog.filter(|_| spool_dir.exists()) {
                ship_leftover(spool_dir, syslog)?;
            }
            Some(AccessLogConfig::Local(aggregator))
        }
        None => None,
    };
    paas_router::start(coord, config)
        .await
        .context("cannot start the HTTP router (another paas running? use --router-listen)")
}

/// Ships the access lines a router that spooled them (an earlier version of `paas up`)
/// left in `spool_dir` to the aggregator's syslog input, in the background, then
/// removes the spool. Replays the aggregator already holds are dropped by its dedupe; if
/// the process stops first, the spool stays for the next start.
fn ship_leftover(spool_dir: PathBuf, syslog: SocketAddr) -> Result<()> {
    let shipper = Shipper::start(ShipperConfig::new(&spool_dir, syslog.to_string()))
        .with_context(|| format!("cannot open the router's old spool {}", spool_dir.display()))?;
    let pending = shipper.status().pending;
    tracing::info!(
        spool = %spool_dir.display(),
        pending,
        "shipping the access lines left in the router's old spool"
    );
    tokio::spawn(async move {
        while shipper.status().pending > 0 {
            tokio::time::sleep(LEFTOVER_POLL).await;
        }
        shipper.shutdown().await;
        match std::fs::remove_dir_all(&spool_dir) {
            Ok(()) => {
                tracing::info!(spool = %spool_dir.display(), "the router's old spool is shipped and removed")
            }
            Err(e) => {
                tracing::warn!(spool = %spool_dir.display(), error = %e, "cannot remove the router's shipped old spool")
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use paas_logshipper::ingest::IngestConfig;
    use paas_logshipper::journal::JournalConfig;
    use paas_logshipper::service::{Service, ServiceConfig};
    use paas_logshipper::store::Filter;
    use paas_logshipper::{LogLine, Stream};

    #[tokio::test]
    async fn a_left_over_spool_is_shipped_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        // An earlier router spooled lines it never got to send (nothing listens on the
        // port it was given).
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let nowhere = closed.local_addr().unwrap();
        drop(closed);
        let old = Shipper::start(ShipperConfig::new(&spool, nowhere.to_string())).unwrap();
        let mut lines: Vec<LogLine> = (0..5)
            .map(|i| LogLine {
                id: 0,
                app: "shop".into(),
                process_type: Some("router".into()),
                job: Some("h1".into()),
                host: Some("h1-router".into()),
                stream: Stream::Stdout,
                timestamp_ns: 0,
                message: format!("left over {i}"),
            })
            .collect();
        old.ship(&mut lines).unwrap();
        old.shutdown().await;

        let service = Service::start(ServiceConfig {
            data_dir: dir.path().join("logs"),
            ingest: IngestConfig {
                syslog_addr: Some("127.0.0.1:0".parse().unwrap()),
                ..IngestConfig::default()
            },
            api_addr: "127.0.0.1:0".parse().unwrap(),
            journal: JournalConfig::default(),
            lines_per_app: 100,
            api_bearer: None,
            persist_interval: Duration::from_millis(100),
        })
        .await
        .unwrap();
        ship_leftover(spool.clone(), service.syslog_addr().unwrap()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while spool.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the old spool is still there"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let got: Vec<String> = service
            .aggregator()
            .store()
            .tail("shop", 100, &Filter::default())
            .into_iter()
            .map(|l| l.message)
            .collect();
        assert_eq!(
            got,
            (0..5).map(|i| format!("left over {i}")).collect::<Vec<_>>()
        );
        service.shutdown().await;
    }
}
