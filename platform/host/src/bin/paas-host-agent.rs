//! `paas-host-agent`: a bare host agent as a process of its own, for tests that kill it
//! (`kill -9`) and for debugging. Production runs the agent inside `paas up` / `paas
//! host`; this binary runs the same [`paas_host::run`] with the same default shim (its
//! own `job-shim` subcommand).
//!
//! Usage:
//!   paas-host-agent ID ETCD_URL PREFIX DATA_DIR ARTIFACTS_DIR JOB_IP
//!   paas-host-agent job-shim AGENT_PID -- PROGRAM [ARGS...]
//!
//! The agent uses a 2 s lease and 100 ms polling, and stops its jobs on SIGTERM/SIGINT.

use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let first = args.next();
    if first.as_deref() == Some(paas_host::shim::SUBCOMMAND.as_ref()) {
        let code = paas_host::shim::main(args);
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    let words: Vec<String> = first
        .into_iter()
        .chain(args)
        .filter_map(|a| a.into_string().ok())
        .collect();
    let [id, etcd, prefix, data_dir, artifacts, job_ip] = words.as_slice() else {
        eprintln!("usage: paas-host-agent ID ETCD_URL PREFIX DATA_DIR ARTIFACTS_DIR JOB_IP");
        return ExitCode::from(2);
    };
    let Ok(job_ip) = job_ip.parse::<std::net::IpAddr>() else {
        eprintln!("paas-host-agent: bad job IP {job_ip:?}");
        return ExitCode::from(2);
    };
    let mut cfg = paas_host::HostConfig::new(
        id.as_str(),
        vec![etcd.clone()],
        prefix.as_str(),
        data_dir.as_str(),
        artifacts.as_str(),
    );
    cfg.job_ip = job_ip;
    cfg.api_listen = (job_ip, 0).into();
    cfg.lease_ttl = Duration::from_secs(2);
    cfg.stop_grace = Duration::from_secs(2);
    cfg.poll_interval = Duration::from_millis(100);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("paas-host-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let (Ok(mut term), Ok(mut int)) = (
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            stop.cancel();
        });
        paas_host::run(cfg, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paas-host-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
