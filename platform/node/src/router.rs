//! The HTTP router in the daemons: its flags (shared by `paas up` and `paas host`) and
//! the one call that starts it (`paas_router::start`).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use paas_coord::Coord;

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
}

/// Starts the router on this host; access lines go to the aggregator at `log_addr`
/// through a spool in `data_dir`.
pub async fn start(
    coord: &Coord,
    args: &RouterArgs,
    host: &str,
    data_dir: &Path,
    log_addr: Option<SocketAddr>,
) -> Result<paas_router::Router> {
    let mut config = paas_router::RouterConfig::new(args.router_listen, host);
    config.tls_listen = Some(args.router_tls_listen);
    config.admin_listen = Some(args.router_admin_listen);
    config.proxy_protocol_listen = args.router_proxy_protocol_listen;
    config.domain = args.domain.clone();
    config.access_log = log_addr.map(|aggregator| paas_router::AccessLogConfig {
        aggregator,
        spool_dir: data_dir.join("spool"),
    });
    paas_router::start(coord, config)
        .await
        .context("cannot start the HTTP router (another paas running? use --router-listen)")
}
