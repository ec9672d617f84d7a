//! The HTTP router alone against an etcd, for measurements: `router ETCD_URL LISTEN
//! [SYSLOG_ADDR SPOOL_DIR]` serves until Ctrl-C (namespace `paas`, domain `localhost`;
//! access lines only when a syslog address is given).

use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 3 || args.len() == 5,
        "usage: router ETCD_URL LISTEN [SYSLOG_ADDR SPOOL_DIR]"
    );
    let coord =
        paas_coord::Coord::connect(&[args[1].as_str()], "paas", Duration::from_secs(10)).await?;
    let mut config = paas_router::RouterConfig::new(args[2].parse()?, "bench");
    if args.len() == 5 {
        config.access_log = Some(paas_router::AccessLogConfig::Ship {
            aggregator: args[3].parse()?,
            spool_dir: args[4].clone().into(),
        });
    }
    let router = paas_router::start(&coord, config).await?;
    println!("router listening on http://{}", router.http_addr());
    tokio::signal::ctrl_c().await?;
    router.shutdown().await;
    Ok(())
}
