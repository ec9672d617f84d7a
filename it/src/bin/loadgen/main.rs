//! `loadgen`: HTTP load against several router addresses, as browsers facing several A
//! records would send it, for the node-loss experiment (`scripts/experiment`).
//!
//! `--clients` concurrent clients share a request rate (`--rate`), for at most
//! `--duration-secs` and `--max-requests`. A client starts its requests on schedule
//! whether or not its earlier ones have ended (up to 6 outstanding, a browser's
//! connections per host), so a stalled router does not slow the load down. Each
//! request goes to a router chosen at random (DNS round robin over many browsers), on
//! one of that client's keep-alive connections to it. A failed attempt is judged by [`rule::verdict`] (the browser rule): only an
//! attempt that got no byte of a response (refused, timed out, reset) is sent once more,
//! to another router; anything else that is not a 2xx is a failed request.
//!
//! SIGUSR1 marks the kill: requests that start in the `--during-secs` after it are
//! counted as "during", later ones as "after". The report gives, per phase, requests,
//! failures, retries and latency percentiles (and, after the kill, the same by the
//! router of the first attempt); the exit code is 1 when any request failed.

mod rule;
mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use paas_it::phase::Phase;
use rule::{Outcome, Verdict};
use stats::PhaseStats;

/// Options of `loadgen`.
#[derive(Parser)]
#[command(about = "HTTP load over several router addresses with the browser retry rule")]
struct Args {
    /// Router addresses (the A records), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    routers: Vec<SocketAddr>,
    /// The Host header (the app's domain).
    #[arg(long)]
    host: String,
    /// The path requested.
    #[arg(long, default_value = "/")]
    path: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: u32,
    /// Requests per second started, all clients together (at most).
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// How long the load runs.
    #[arg(long, default_value_t = 60)]
    duration_secs: u64,
    /// Requests started at most.
    #[arg(long, default_value_t = 100_000)]
    max_requests: u64,
    /// How long after the kill (SIGUSR1) requests count as "during".
    #[arg(long, default_value_t = 10)]
    during_secs: u64,
    /// How long a connect may take before the attempt counts as timed out.
    #[arg(long, default_value_t = 1000)]
    connect_timeout_ms: u64,
    /// How long the first byte of a response may take before the attempt counts as
    /// timed out.
    #[arg(long, default_value_t = 5000)]
    response_timeout_ms: u64,
}

/// What every client shares.
struct Shared {
    args: Args,
    start: Instant,
    kill: OnceLock<Instant>,
    issued: AtomicU64,
    stats: Mutex<Stats>,
    failures_shown: AtomicU64,
}

/// Everything counted.
#[derive(Default)]
struct Stats {
    /// By phase: before, during, after.
    phases: [PhaseStats; 3],
    /// Requests that started after the kill, by the router of their first attempt.
    after_kill_by_router: Vec<PhaseStats>,
}

/// Failures printed one per line; the rest are only counted.
const SHOWN_FAILURES: u64 = 20;

/// Requests a client has outstanding at most (a browser's connections per host): a
/// client whose requests are all outstanding waits for one to end.
const OUTSTANDING_PER_CLIENT: usize = 6;

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.rate > 0 && args.clients > 0,
        "--rate and --clients must be > 0"
    );
    let routers = args.routers.len();
    let shared = Arc::new(Shared {
        args,
        start: Instant::now(),
        kill: OnceLock::new(),
        issued: AtomicU64::new(0),
        stats: Mutex::new(Stats {
            after_kill_by_router: vec![PhaseStats::default(); routers],
            ..Stats::default()
        }),
        failures_shown: AtomicU64::new(0),
    });
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .context("cannot handle SIGUSR1")?;
    let marker = shared.clone();
    tokio::spawn(async move {
        if usr1.recv().await.is_some() {
            let now = Instant::now();
            let _ = marker.kill.set(now);
            println!("kill marked at +{:.2}s", (now - marker.start).as_secs_f64());
        }
    });
    let clients: Vec<_> = (0..shared.args.clients)
        .map(|id| tokio::spawn(client(id, shared.clone())))
        .collect();
    for c in clients {
        c.await.context("a client task panicked")?;
    }

    let mut stats = shared
        .stats
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let (mut total, mut failed, mut retried) = (0, 0, 0);
    println!(
        "{} routers, {} clients, {} req/s at most, {:.1}s",
        shared.args.routers.len(),
        shared.args.clients,
        shared.args.rate,
        shared.start.elapsed().as_secs_f64()
    );
    for (phase, s) in [Phase::Before, Phase::During, Phase::After]
        .into_iter()
        .zip(stats.phases.iter_mut())
    {
        total += s.total();
        failed += s.failed;
        retried += s.retried;
        println!("{}", s.line(phase));
    }
    println!("total   requests {total:>7}  failed {failed:>4}  retried {retried:>4}");
    if shared.kill.get().is_some() {
        println!("after the kill, by the router of the first attempt:");
        for (router, s) in shared
            .args
            .routers
            .iter()
            .zip(stats.after_kill_by_router.iter_mut())
        {
            println!(
                "  {router:<21} {}",
                s.line(Phase::After).trim_start_matches("after ")
            );
        }
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Idle keep-alive connections of one client to one router.
type Pool = Mutex<Vec<SendRequest<Empty<Bytes>>>>;

/// One client: starts requests at its share of the rate, whether or not its earlier
/// ones have ended (up to its connection limit), until the time or the request budget
/// is spent; then waits for its outstanding requests.
async fn client(id: u32, shared: Arc<Shared>) {
    let args = &shared.args;
    let interval = Duration::from_secs_f64(f64::from(args.clients) / f64::from(args.rate));
    let deadline = shared.start + Duration::from_secs(args.duration_secs);
    let mut next = shared.start + interval.mul_f64(f64::from(id) / f64::from(args.clients));
    let pools: Arc<Vec<Pool>> = Arc::new(args.routers.iter().map(|_| Pool::default()).collect());
    let slots = Arc::new(tokio::sync::Semaphore::new(OUTSTANDING_PER_CLIENT));
    let mut requests = tokio::task::JoinSet::new();
    loop {
        tokio::time::sleep_until(next).await;
        next += interval;
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        if Instant::now() >= deadline
            || shared.issued.fetch_add(1, Ordering::Relaxed) >= args.max_requests
        {
            break;
        }
        let (shared, pools) = (shared.clone(), pools.clone());
        requests.spawn(async move {
            request(&shared, &pools).await;
            drop(slot);
        });
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
}

/// One request under the browser rule, counted.
async fn request(shared: &Shared, pools: &[Pool]) {
    let args = &shared.args;
    let started = Instant::now();
    let since_kill = shared
        .kill
        .get()
        .map(|k| started.saturating_duration_since(*k));
    let phase = Phase::of(since_kill, Duration::from_secs(args.during_secs));
    let first = rand::random_range(0..args.routers.len());
    let mut router = first;
    let mut retried = false;
    let mut attempt_no = 1;
    let result = loop {
        let outcome = attempt(&pools[router], args.routers[router], args).await;
        match rule::verdict(outcome, attempt_no) {
            Verdict::Ok => break Ok(()),
            Verdict::Failed(o) => break Err((o, router)),
            Verdict::RetryElsewhere => {
                retried = true;
                attempt_no += 1;
                router = other_router(first, args.routers.len());
            }
        }
    };
    let elapsed = started.elapsed();
    let Ok(mut stats) = shared.stats.lock() else {
        return;
    };
    let Stats {
        phases,
        after_kill_by_router,
    } = &mut *stats;
    let mut counted = vec![&mut phases[phase as usize]];
    if since_kill.is_some() {
        counted.push(&mut after_kill_by_router[first]);
    }
    for s in counted {
        s.retried += u64::from(retried);
        match result {
            Ok(()) => s.latencies.push(elapsed),
            Err(_) => s.failed += 1,
        }
    }
    if let Err((outcome, router)) = result {
        if shared.failures_shown.fetch_add(1, Ordering::Relaxed) < SHOWN_FAILURES {
            println!(
                "failed: +{:.2}s {} via {} after {attempt_no} attempt(s): {outcome:?}",
                (started - shared.start).as_secs_f64(),
                phase.label(),
                args.routers[router],
            );
        }
    }
}

/// A router other than `first`, at random (`first` itself when there is only one).
fn other_router(first: usize, n: usize) -> usize {
    if n < 2 {
        return first;
    }
    (first + rand::random_range(1..n)) % n
}

/// One GET to `addr` on an idle keep-alive connection of the client to it, or a new
/// one; the connection goes back to the pool only after a whole response.
async fn attempt(pool: &Pool, addr: SocketAddr, args: &Args) -> Outcome {
    let idle = pool.lock().ok().and_then(|mut p| p.pop());
    let mut slot = idle;
    let outcome = send(&mut slot, addr, args).await;
    if let (Outcome::Response(_), Some(conn)) = (outcome, slot) {
        if let Ok(mut p) = pool.lock() {
            p.push(conn);
        }
    }
    outcome
}

async fn send(
    slot: &mut Option<SendRequest<Empty<Bytes>>>,
    addr: SocketAddr,
    args: &Args,
) -> Outcome {
    if slot.as_ref().is_none_or(|s| s.is_closed()) {
        *slot = None;
        let connect = tokio::time::timeout(
            Duration::from_millis(args.connect_timeout_ms),
            tokio::net::TcpStream::connect(addr),
        );
        let stream = match connect.await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) | Err(_) => return Outcome::ConnectFailed,
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        {
            Ok(pair) => pair,
            Err(_) => return Outcome::ClosedBeforeResponse,
        };
        tokio::spawn(conn);
        *slot = Some(sender);
    }
    let Some(sender) = slot.as_mut() else {
        return Outcome::ConnectFailed;
    };
    let response_timeout = Duration::from_millis(args.response_timeout_ms);
    let request = match hyper::Request::get(args.path.as_str())
        .header(hyper::header::HOST, args.host.as_str())
        .body(Empty::<Bytes>::new())
    {
        Ok(r) => r,
        Err(_) => return Outcome::Malformed,
    };
    let sent = tokio::time::timeout(response_timeout, async {
        sender.ready().await?;
        sender.send_request(request).await
    });
    let response = match sent.await {
        Err(_) => return Outcome::TimedOut,
        Ok(Err(e)) if e.is_parse() || e.is_parse_status() || e.is_user() => {
            return Outcome::Malformed
        }
        Ok(Err(_)) => return Outcome::ClosedBeforeResponse,
        Ok(Ok(r)) => r,
    };
    let status = response.status().as_u16();
    match tokio::time::timeout(response_timeout, response.into_body().collect()).await {
        Ok(Ok(_)) => Outcome::Response(status),
        Ok(Err(_)) | Err(_) => Outcome::BodyCut,
    }
}
