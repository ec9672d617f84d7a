//! Backups as `paas up` runs them: the backup store (`--backup-store`, default
//! `DATA_DIR/backups`) handed to the controller, the schedule runner (a candidate in
//! the `backups` election), and the journal that ships each backup's lines to the
//! app's log as process type `backup`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use paas_backups::journal::Journal;
use paas_backups::location::S3Options;
use paas_backups::runner::{self, RunnerConfig};
use paas_backups::{Backups, Location};
use paas_logshipper::shipper::{Shipper, ShipperConfig};
use paas_logshipper::{LogLine, Stream};
use tokio_util::sync::CancellationToken;

/// How often the runner looks at schedules (cron has minute resolution).
const TICK: Duration = Duration::from_secs(20);

/// The runner's election lease.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// Backup lines as log lines of the app (`paas log -a APP --type backup`), spooled and
/// shipped to the log aggregator like a job's output.
pub struct LogJournal {
    shipper: Shipper,
    host: String,
}

impl Journal for LogJournal {
    fn line(&self, app: &str, job: &str, message: &str, failed: bool) {
        let mut lines = [LogLine {
            id: 0,
            app: app.into(),
            process_type: Some("backup".into()),
            job: Some(job.into()),
            host: Some(self.host.as_str().into()),
            stream: if failed {
                Stream::Stderr
            } else {
                Stream::Stdout
            },
            timestamp_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
            message: message.to_string(),
        }];
        if let Err(e) = self.shipper.ship(&mut lines) {
            tracing::warn!(error = %e, "spooling a backup log line failed");
        }
    }
}

/// The backup store named by `--backup-store` (default `data_dir/backups`).
pub fn location(data_dir: &Path, store: Option<&str>) -> Result<Location> {
    Ok(match store {
        Some(text) => Location::parse(text)?,
        None => Location::Dir(data_dir.join("backups")),
    })
}

/// Opens the backup store at `location`; with the aggregator's syslog address, backups
/// tell their progress to the app's log.
pub fn open(
    data_dir: &Path,
    location: Location,
    log_addr: Option<std::net::SocketAddr>,
) -> Result<(Backups, Location)> {
    let objects = location
        .open(&S3Options::default())
        .with_context(|| format!("cannot open the backup store {location}"))?;
    let mut backups = Backups::new(objects);
    if let Some(aggregator) = log_addr {
        let shipper = Shipper::start(ShipperConfig::new(
            data_dir.join("backups-spool"),
            aggregator.to_string(),
        ))
        .context("cannot open the backup log spool")?;
        backups = backups.with_journal(Arc::new(LogJournal {
            shipper,
            host: format!("{}-backups", crate::host::hostname()),
        }));
    }
    Ok((backups, location))
}

/// Starts the schedule runner over the controller's resources until `stop`.
pub fn run_schedules(
    state: &paas_controller::AppState,
    backups: Backups,
    host: &str,
    stop: CancellationToken,
) {
    let coord = state.store.coord().clone();
    let resources: Arc<dyn runner::Resources> = Arc::new(state.clone());
    let config = RunnerConfig {
        id: host.to_string(),
        tick: TICK,
        lease_ttl: LEASE_TTL,
    };
    tokio::spawn(runner::run(coord, backups, resources, config, stop));
}
