//! `paas-pg-supervisor`: one PostgreSQL instance's supervisor as its own OS process, so
//! it can be killed (-9), frozen (SIGSTOP) and restarted like in production. Stops
//! cleanly on SIGTERM or SIGINT.

use anyhow::Context;
use clap::Parser;
use paas_postgres::args::SupervisorArgs;
use paas_postgres::supervisor::run;

#[derive(Parser, Debug)]
#[command(
    about = "Supervise one PostgreSQL 15 instance of an HA cluster coordinated through etcd."
)]
struct Cli {
    #[command(flatten)]
    args: SupervisorArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Cli::parse().args;
    args.member.load_etcd_identity()?;
    let config = args.into_config()?;
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
