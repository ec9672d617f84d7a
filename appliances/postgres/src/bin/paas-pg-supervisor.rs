//! `paas-pg-supervisor`: one PostgreSQL instance's supervisor as its own OS process, so
//! it can be killed (-9), frozen (SIGSTOP) and restarted like in production. Stops
//! cleanly on SIGTERM or SIGINT.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use paas_postgres::supervisor::{run, SupervisorConfig};

/// Supervise one PostgreSQL 15 instance of an HA cluster coordinated through etcd.
#[derive(Parser, Debug)]
struct Args {
    /// Cluster name.
    #[arg(long, default_value = "main")]
    cluster: String,
    /// This member's name ([a-z0-9_]).
    #[arg(long)]
    name: String,
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd: Vec<String>,
    /// etcd key prefix.
    #[arg(long, default_value = "/paas/")]
    prefix: String,
    /// Instance directory.
    #[arg(long)]
    dir: PathBuf,
    /// PostgreSQL binaries.
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin")]
    bin_dir: PathBuf,
    /// Listen address of PostgreSQL and the health API.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// PostgreSQL port.
    #[arg(long)]
    pg_port: u16,
    /// Health API port.
    #[arg(long)]
    health_port: u16,
    /// The superuser password (same on all members).
    #[arg(long, env = "PAAS_PG_SUPERUSER_PASSWORD", hide_env_values = true)]
    superuser_password: String,
    /// Lease TTL in seconds.
    #[arg(long, default_value_t = 3)]
    ttl_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = SupervisorConfig::new(
        &args.cluster,
        &args.name,
        args.etcd,
        args.dir,
        args.pg_port,
        args.health_port,
        &args.superuser_password,
    );
    config.prefix = args.prefix;
    config.bin_dir = args.bin_dir;
    config.host = args.host;
    config.ttl = Duration::from_secs(args.ttl_secs);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    run(config, shutdown).await.context("supervisor failed")
}
