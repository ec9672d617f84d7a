//! The schedule runner: one per cluster, under the `backups` election. While leader it
//! looks at every schedule each tick (at the next cron time, or after `tick` at the
//! latest), takes the backups that are due ([`due`]), records
//! the run (a write guarded by the leadership), and after each successful backup deletes
//! what the schedule's retention no longer keeps ([`expired`]). The record of the last
//! handled cron time is in etcd, so a runner that was down runs a missed time once when
//! it (or another host's runner) is back.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use paas_coord::{Coord, CoordError, Leadership};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backups::{Backups, Target};
use crate::manifest::Trigger;
use crate::retention::expired;
use crate::schedule::{due, next, sleep_until, Cron, Run, RunOutcome, Schedule};
use crate::schedules::{ScheduleError, Schedules};

/// The election the runners campaign in.
pub const ELECTION: &str = "backups";

/// How the runner finds the resources a schedule covers (the controller's store knows
/// resources and providers; this crate does not depend on it).
#[async_trait::async_trait]
pub trait Resources: Send + Sync {
    /// The resource `resource` of `app`, or with `None` every resource of `app` whose
    /// provider has backups.
    async fn targets(&self, app: &str, resource: Option<&str>) -> Result<Vec<Target>, String>;
}

/// The shortest pause between two looks (a due time whose record failed is not
/// retried in a loop).
const MIN_PAUSE: Duration = Duration::from_secs(1);

/// The runner's settings.
#[derive(Clone)]
pub struct RunnerConfig {
    /// This candidate's name in the election (the host id).
    pub id: String,
    /// The longest pause between two looks at the schedules (a new schedule is seen
    /// within it); the runner wakes sooner when a cron time comes first.
    pub tick: Duration,
    /// The election lease's TTL.
    pub lease_ttl: Duration,
}

/// Runs schedules until `shutdown` is cancelled: campaign, then tick while leader.
pub async fn run(
    coord: Coord,
    backups: Backups,
    resources: Arc<dyn Resources>,
    config: RunnerConfig,
    shutdown: CancellationToken,
) {
    let schedules = Schedules::new(coord.clone());
    loop {
        let won = tokio::select! {
            _ = shutdown.cancelled() => return,
            won = coord.campaign(ELECTION, &config.id, config.lease_ttl) => won,
        };
        let leadership = match won {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "backup runner: campaign failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(config.tick) => continue,
                }
            }
        };
        tracing::info!(id = %config.id, "backup runner: became leader");
        loop {
            // A tick is not cut short by a lost leadership: a backup in progress ends
            // (and cleans up) normally; its record is refused, and the next leader sees
            // the time as not handled and runs it again.
            let tick = tick(&schedules, &backups, resources.as_ref(), &leadership);
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                result = tick => result,
            };
            let pause = match result {
                Ok(next) => sleep_until(next, Utc::now(), MIN_PAUSE, config.tick),
                Err(ScheduleError::Coord(e @ CoordError::Fenced { .. })) => {
                    tracing::warn!(error = %e, "backup runner: deposed");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "backup runner: tick failed; retrying");
                    config.tick
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                reason = leadership.lost() => {
                    tracing::warn!(%reason, "backup runner: leadership lost");
                    break;
                }
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if let Err(e) = leadership.resign().await {
            tracing::warn!(error = %e, "backup runner: resigning failed; the lease will expire");
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// Looks at every schedule once and runs those due. Returns the earliest next cron time
/// of the schedules (`None` without any), which the runner sleeps until.
pub async fn tick(
    schedules: &Schedules,
    backups: &Backups,
    resources: &dyn Resources,
    leadership: &Leadership,
) -> Result<Option<DateTime<Utc>>, ScheduleError> {
    let mut earliest: Option<DateTime<Utc>> = None;
    let mut upcoming = |at: Option<DateTime<Utc>>| earliest = earliest.into_iter().chain(at).min();
    for schedule in schedules.list().await? {
        let cron = match Cron::parse(&schedule.cron) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(app = %schedule.app, error = %e, "backup schedule skipped");
                continue;
            }
        };
        let run = schedules.run(&schedule.app).await?;
        let now = Utc::now();
        let Some(slot) = due(&cron, &schedule, &run, now) else {
            upcoming(next(&cron, &schedule, &run));
            continue;
        };
        if leadership.lost_reason().is_some() {
            return Ok(earliest);
        }
        tracing::info!(app = %schedule.app, %slot, "scheduled backup due");
        let outcome = run_once(&schedule, backups, resources, now).await;
        let record = Run {
            handled: Some(now),
            last: Some(outcome),
        };
        schedules.record(&schedule.app, &record, leadership).await?;
        upcoming(next(&cron, &schedule, &record));
    }
    Ok(earliest)
}

/// Backs up what `schedule` covers and applies its retention after each success.
async fn run_once(
    schedule: &Schedule,
    backups: &Backups,
    resources: &dyn Resources,
    now: chrono::DateTime<Utc>,
) -> RunOutcome {
    let targets = match resources
        .targets(&schedule.app, schedule.resource.as_deref())
        .await
    {
        Ok(t) if t.is_empty() => {
            return RunOutcome::Failed {
                at: now,
                error: "the app has no resource with backups".into(),
            }
        }
        Ok(t) => t,
        Err(error) => return RunOutcome::Failed { at: now, error },
    };
    let mut made = Vec::new();
    let mut errors = Vec::new();
    for target in &targets {
        let (progress, _) = watch::channel(0);
        match backups.create(target, Trigger::Schedule, &progress).await {
            Ok(m) => {
                made.push(m.id);
                if let Err(e) = apply_retention(schedule, target, backups).await {
                    tracing::warn!(app = %schedule.app, error = %e, "retention failed");
                }
            }
            Err(e) => errors.push(format!("{}: {e}", target.resource)),
        }
    }
    if errors.is_empty() {
        RunOutcome::Ok {
            at: now,
            backups: made,
        }
    } else {
        RunOutcome::Failed {
            at: now,
            error: errors.join("; "),
        }
    }
}

/// Deletes the scheduled backups of `target` that the retention no longer keeps.
async fn apply_retention(
    schedule: &Schedule,
    target: &Target,
    backups: &Backups,
) -> Result<(), crate::BackupError> {
    let scheduled: Vec<(String, chrono::DateTime<Utc>)> = backups
        .list(&target.app)
        .await?
        .into_iter()
        .filter(|m| m.trigger == Trigger::Schedule && m.resource == target.resource)
        .map(|m| (m.id, m.started))
        .collect();
    for id in expired(&scheduled, schedule.retention, Utc::now()) {
        backups.delete(&target.app, &id).await?;
        tracing::info!(app = %target.app, %id, "backup deleted by retention");
    }
    Ok(())
}
