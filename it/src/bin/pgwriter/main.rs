//! `pgwriter`: a Postgres writer for the node-loss experiment's Postgres variant
//! (`scripts/experiment postgres`), on an app's `DATABASE_URL`.
//!
//! It inserts numbered rows, one transaction each, at most `--rate` a second, for
//! `--duration-secs`, and records each commit the server acknowledged. A commit whose
//! connection fails or that takes longer than `--commit-timeout-secs` has an unknown
//! outcome (it may or may not have committed): the connection is dropped, the writer
//! reconnects (through the same URL, the leader-following endpoint) and goes on with the
//! next number; no number is written twice. At the end it reads the table back and
//! reports every acknowledged row that is missing (the exit code is 1 when one is, or
//! when no commit was acknowledged after the kill).
//!
//! SIGUSR1 marks the kill: rows the writer began trying to write in the
//! `--during-secs` after it count as "during", later ones as "after". The report gives
//! the failover time (the longest gap between acknowledged commits around the kill,
//! `report::failover_gap`) and, per phase, acknowledged and unknown commits and latency
//! percentiles (from when the writer began trying to write a row, reconnects included,
//! to its acknowledgement).

mod report;
mod tls;
mod url;

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use paas_it::phase::Phase;
use tokio::time::Instant;

use report::PhaseStats;

/// Options of `pgwriter`.
#[derive(Parser)]
#[command(
    about = "Numbered one-row transactions on DATABASE_URL through a failover; checks none acknowledged is lost"
)]
struct Args {
    /// The database URL (an app's DATABASE_URL; sslmode=verify-full with sslrootcert,
    /// or plain).
    #[arg(long, env = "DATABASE_URL")]
    url: String,
    /// Commits started per second at most.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// How long the writer writes.
    #[arg(long, default_value_t = 60)]
    duration_secs: u64,
    /// How long after the kill (SIGUSR1) rows count as "during".
    #[arg(long, default_value_t = 10)]
    during_secs: u64,
    /// How long a connect may take.
    #[arg(long, default_value_t = 5)]
    connect_timeout_secs: u64,
    /// How long a commit may take before its outcome counts as unknown.
    #[arg(long, default_value_t = 10)]
    commit_timeout_secs: u64,
    /// How long the final check may try to read the rows back.
    #[arg(long, default_value_t = 60)]
    check_secs: u64,
}

/// The table the rows go to (made if missing).
const TABLE: &str = "pgwriter_rows";

/// A connection to the database, plain or verified, as the URL says.
struct Db {
    config: tokio_postgres::Config,
    tls: Option<tls::VerifyFull>,
}

impl Db {
    fn new(args: &Args) -> Result<Db> {
        let url = url::parse(&args.url).context("cannot use the URL")?;
        let mut config = tokio_postgres::Config::from_str(&url.base)
            .context("tokio-postgres cannot parse the URL")?;
        config.connect_timeout(Duration::from_secs(args.connect_timeout_secs));
        let tls = match &url.tls {
            url::Tls::Off => None,
            url::Tls::VerifyFull { ca_file } => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(tls::VerifyFull::new(ca_file)?)
            }
        };
        Ok(Db { config, tls })
    }

    /// A new session (its connection driven by a task of its own).
    async fn connect(&self) -> Result<tokio_postgres::Client> {
        let client = match &self.tls {
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await?;
                tokio::spawn(conn);
                client
            }
            None => {
                let (client, conn) = self.config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                client
            }
        };
        Ok(client)
    }
}

/// What the writer recorded.
#[derive(Default)]
struct Record {
    /// Acknowledged ids.
    acked: Vec<i64>,
    /// When each was acknowledged, since the start.
    acked_at: Vec<Duration>,
    /// Ids whose commit had an unknown outcome.
    unknown: Vec<i64>,
    /// By phase: before, during, after.
    phases: [PhaseStats; 3],
    /// Connects that failed.
    failed_connects: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.rate > 0, "--rate must be > 0");
    let db = Db::new(&args)?;
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .context("cannot handle SIGUSR1")?;

    let client = connect_patiently(&db, Duration::from_secs(args.check_secs)).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"
        ))
        .await
        .context("cannot create the table")?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration_secs);
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let during = Duration::from_secs(args.during_secs);
    let commit_timeout = Duration::from_secs(args.commit_timeout_secs);
    // Marked by a task of its own, so a commit or connect in progress does not delay it.
    let kill: Arc<OnceLock<Instant>> = Arc::default();
    let marker = kill.clone();
    tokio::spawn(async move {
        if usr1.recv().await.is_some() {
            let _ = marker.set(Instant::now());
            println!("kill marked at {:.3} s", start.elapsed().as_secs_f64());
        }
    });
    let mut record = Record::default();
    let mut client = Some(client);
    let mut next_slot = start;
    let mut id = 0i64;
    while Instant::now() < deadline {
        tokio::time::sleep_until(next_slot).await;
        next_slot = (next_slot + interval).max(Instant::now());
        id += 1;
        let wanted = Instant::now();
        let phase = Phase::of(
            kill.get().map(|k| wanted.saturating_duration_since(*k)),
            during,
        );
        let session = match client.take() {
            Some(c) if !c.is_closed() => c,
            _ => loop {
                match db.connect().await {
                    Ok(c) => break c,
                    Err(e) => {
                        record.failed_connects += 1;
                        if record.failed_connects % 50 == 1 {
                            eprintln!("connect failed ({} so far): {e:#}", record.failed_connects);
                        }
                        if Instant::now() >= deadline {
                            break_out(&mut record, phase, id);
                            return finish(&args, &db, record, start, kill.get().copied()).await;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
        };
        let insert = format!("INSERT INTO {TABLE} (id) VALUES ($1)");
        match tokio::time::timeout(commit_timeout, session.execute(&insert, &[&id])).await {
            Ok(Ok(_)) => {
                record.acked.push(id);
                record.acked_at.push(start.elapsed());
                record.phases[phase as usize]
                    .latencies
                    .push(wanted.elapsed());
                client = Some(session);
            }
            Ok(Err(e)) => {
                eprintln!("commit of row {id} failed (outcome unknown): {e}");
                break_out(&mut record, phase, id);
            }
            Err(_) => {
                eprintln!(
                    "commit of row {id} timed out after {commit_timeout:?} (outcome unknown)"
                );
                break_out(&mut record, phase, id);
            }
        }
    }
    finish(&args, &db, record, start, kill.get().copied()).await
}

/// Records a commit of unknown outcome (the session is dropped by the caller).
fn break_out(record: &mut Record, phase: Phase, id: i64) {
    record.unknown.push(id);
    record.phases[phase as usize].unknown += 1;
}

/// Connects, retrying for up to `patience`.
async fn connect_patiently(db: &Db, patience: Duration) -> Result<tokio_postgres::Client> {
    let until = Instant::now() + patience;
    loop {
        match db.connect().await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= until => {
                return Err(e.context(format!("no connection in {patience:?}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Reads the rows back, prints the report and fails on any loss.
async fn finish(
    args: &Args,
    db: &Db,
    mut record: Record,
    start: Instant,
    kill: Option<Instant>,
) -> Result<()> {
    let client = connect_patiently(db, Duration::from_secs(args.check_secs)).await?;
    let present: HashSet<i64> = client
        .query(&format!("SELECT id FROM {TABLE}"), &[])
        .await
        .context("cannot read the rows back")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost = report::lost(&record.acked, &present);
    let unknown_present = record
        .unknown
        .iter()
        .filter(|id| present.contains(id))
        .count();
    println!(
        "rows: acknowledged {}, lost {}{}; unknown outcome {} ({} of them committed); failed connects {}",
        record.acked.len(),
        lost.len(),
        if lost.is_empty() {
            String::new()
        } else {
            format!(" (ids {:?})", &lost[..lost.len().min(20)])
        },
        record.unknown.len(),
        unknown_present,
        record.failed_connects,
    );
    let mut failover_done = true;
    if let Some(k) = kill {
        let kill_at = k.duration_since(start);
        match report::failover_gap(
            &record.acked_at,
            kill_at,
            Duration::from_secs(args.during_secs),
        ) {
            Some(gap) => println!(
                "failover: {:.2} s without an acknowledged commit (from {:+.2} s to {:+.2} s of the kill)",
                gap.length().as_secs_f64(),
                gap.from as f64 / 1000.0,
                gap.to as f64 / 1000.0,
            ),
            None => {
                failover_done = false;
                println!("failover: no commit acknowledged after the kill");
            }
        }
    }
    for phase in [Phase::Before, Phase::During, Phase::After] {
        println!("{}", record.phases[phase as usize].line(phase));
    }
    anyhow::ensure!(lost.is_empty(), "{} acknowledged rows lost", lost.len());
    anyhow::ensure!(failover_done, "no commit acknowledged after the kill");
    Ok(())
}
