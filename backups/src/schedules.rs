//! Schedules and their runs in etcd, through `paas-coord`:
//!
//! ```text
//! backup-schedules/<app>   Schedule   set by `paas backup schedule`
//! backup-runs/<app>        Run        the runner (leader only)
//! ```

use paas_coord::{Batch, Coord, Leadership};

use crate::schedule::{Cron, CronError, Run, Schedule};

const SCHEDULES: &str = "backup-schedules/";
const RUNS: &str = "backup-runs/";

/// Why a schedule could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression is invalid.
    #[error(transparent)]
    Cron(#[from] CronError),
    /// etcd failed, or a leader-only write found this runner deposed.
    #[error(transparent)]
    Coord(#[from] paas_coord::CoordError),
}

/// Schedules in etcd.
#[derive(Clone)]
pub struct Schedules {
    coord: Coord,
}

impl Schedules {
    /// Schedules under `coord`'s namespace.
    pub fn new(coord: Coord) -> Self {
        Schedules { coord }
    }

    /// Sets the schedule of `schedule.app` (replacing any), after checking its cron.
    pub async fn put(&self, schedule: &Schedule) -> Result<(), ScheduleError> {
        Cron::parse(&schedule.cron)?;
        let mut batch = Batch::new();
        batch.put(&format!("{SCHEDULES}{}", schedule.app), schedule)?;
        self.coord.commit(batch).await?;
        Ok(())
    }

    /// The schedule of `app` and its last run, if it has a schedule.
    pub async fn get(&self, app: &str) -> Result<Option<(Schedule, Run)>, ScheduleError> {
        let Some((schedule, _)) = self
            .coord
            .get::<Schedule>(&format!("{SCHEDULES}{app}"))
            .await?
        else {
            return Ok(None);
        };
        let run = self.run(app).await?;
        Ok(Some((schedule, run)))
    }

    /// Every schedule.
    pub async fn list(&self) -> Result<Vec<Schedule>, ScheduleError> {
        Ok(self
            .coord
            .list::<Schedule>(SCHEDULES)
            .await?
            .into_iter()
            .map(|(_, s, _)| s)
            .collect())
    }

    /// The runs of `app`'s schedule (empty when it never ran).
    pub async fn run(&self, app: &str) -> Result<Run, ScheduleError> {
        Ok(self
            .coord
            .get::<Run>(&format!("{RUNS}{app}"))
            .await?
            .map(|(r, _)| r)
            .unwrap_or_default())
    }

    /// Removes the schedule of `app` and its runs; `false` if there was none.
    pub async fn remove(&self, app: &str) -> Result<bool, ScheduleError> {
        let existed = self
            .coord
            .get::<serde_json::Value>(&format!("{SCHEDULES}{app}"))
            .await?
            .is_some();
        let mut batch = Batch::new();
        batch
            .remove(&format!("{SCHEDULES}{app}"))
            .remove(&format!("{RUNS}{app}"));
        self.coord.commit(batch).await?;
        Ok(existed)
    }

    /// Records `run` for `app`, only while `leadership` holds.
    pub async fn record(
        &self,
        app: &str,
        run: &Run,
        leadership: &Leadership,
    ) -> Result<(), ScheduleError> {
        let mut batch = Batch::new();
        batch
            .require_leadership(leadership)?
            .put(&format!("{RUNS}{app}"), run)?;
        self.coord.commit(batch).await?;
        Ok(())
    }
}
