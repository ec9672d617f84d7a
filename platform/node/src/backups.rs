//! Backups as `paas up` runs them: the backup store (`--backup-store`, default
//! `DATA_DIR/backups`) handed to the controller, and the schedule runner, a candidate in
//! the `backups` election.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use paas_backups::location::S3Options;
use paas_backups::runner::{self, RunnerConfig};
use paas_backups::{Backups, Location};
use tokio_util::sync::CancellationToken;

/// How often the runner looks at schedules (cron has minute resolution).
const TICK: Duration = Duration::from_secs(20);

/// The runner's election lease.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// Opens the backup store named by `--backup-store` (default `data_dir/backups`).
pub fn open(data_dir: &Path, store: Option<&str>) -> Result<(Backups, Location)> {
    let location = match store {
        Some(text) => Location::parse(text)?,
        None => Location::Dir(data_dir.join("backups")),
    };
    let objects = location
        .open(&S3Options::default())
        .with_context(|| format!("cannot open the backup store {location}"))?;
    Ok((Backups::new(objects), location))
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
