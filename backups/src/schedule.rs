//! Backup schedules and the pure question "is a run due?".
//!
//! A schedule is a cron expression (five fields, UTC) and a retention policy. A run is
//! due when the first cron time after the last handled one (or after the schedule was
//! made) has passed: a runner that was down over one or several cron times runs once
//! when it is back, not once per missed time.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::retention::Retention;

/// Why a cron expression was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid cron expression {expr:?}: {reason}")]
pub struct CronError {
    /// The expression.
    pub expr: String,
    /// The parser's reason.
    pub reason: String,
}

/// A parsed cron expression.
#[derive(Debug, Clone)]
pub struct Cron(croner::Cron);

impl Cron {
    /// Parses a five-field cron expression (`0 3 * * *`), evaluated in UTC.
    pub fn parse(expr: &str) -> Result<Cron, CronError> {
        let fail = |reason: String| CronError {
            expr: expr.into(),
            reason,
        };
        if expr.split_whitespace().count() != 5 {
            return Err(fail(
                "expected five fields: minute hour day-of-month month day-of-week".into(),
            ));
        }
        croner::Cron::new(expr)
            .parse()
            .map(Cron)
            .map_err(|e| fail(e.to_string()))
    }

    /// The first time strictly after `after` that the expression names.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.0.find_next_occurrence(&after, false).ok()
    }
}

/// A backup schedule of one app (`paas backup schedule`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// The app.
    pub app: String,
    /// The resource to back up; `None`: every resource of the app that has backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Five-field cron expression, UTC.
    pub cron: String,
    /// What to keep of the scheduled backups.
    #[serde(default)]
    pub retention: Retention,
    /// When the schedule was set (the first run is the first cron time after it).
    pub created: DateTime<Utc>,
}

/// The runner's record of a schedule's runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The time up to which cron times are handled (the last run's start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled: Option<DateTime<Utc>>,
    /// The last run's outcome: backup ids made, or the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<RunOutcome>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    /// Every backup of the run was made.
    Ok {
        /// When the run started.
        at: DateTime<Utc>,
        /// The backups made.
        backups: Vec<String>,
    },
    /// At least one backup failed.
    Failed {
        /// When the run started.
        at: DateTime<Utc>,
        /// Why.
        error: String,
    },
}

/// The cron time a run is due for at `now`, if any: the first one after the last
/// handled time (or the schedule's creation).
pub fn due(
    cron: &Cron,
    schedule: &Schedule,
    run: &Run,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let since = run.handled.unwrap_or(schedule.created);
    cron.next_after(since).filter(|at| *at <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(d: u32, h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, d, h, m, 0).unwrap()
    }

    fn schedule(cron: &str, created: DateTime<Utc>) -> Schedule {
        Schedule {
            app: "shop".into(),
            resource: None,
            cron: cron.into(),
            retention: Retention::default(),
            created,
        }
    }

    fn check(
        cron: &str,
        created: DateTime<Utc>,
        handled: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        expected: Option<DateTime<Utc>>,
    ) {
        let run = Run {
            handled,
            last: None,
        };
        let got = due(
            &Cron::parse(cron).unwrap(),
            &schedule(cron, created),
            &run,
            now,
        );
        assert_eq!(
            got, expected,
            "{cron} created {created} handled {handled:?} now {now}"
        );
    }

    #[test]
    fn nothing_is_due_before_the_first_time() {
        check("0 3 * * *", at(1, 10, 0), None, at(2, 2, 59), None);
        check(
            "0 3 * * *",
            at(1, 10, 0),
            None,
            at(2, 3, 0),
            Some(at(2, 3, 0)),
        );
    }

    #[test]
    fn a_handled_time_is_not_due_again() {
        check(
            "0 3 * * *",
            at(1, 10, 0),
            Some(at(2, 3, 0)),
            at(2, 23, 0),
            None,
        );
        check(
            "0 3 * * *",
            at(1, 10, 0),
            Some(at(2, 3, 0)),
            at(3, 3, 0),
            Some(at(3, 3, 0)),
        );
    }

    #[test]
    fn missed_times_run_once() {
        // Down from day 2 to day 5: the first missed time is due, and after it is
        // handled (at day 5 12:00) nothing more until day 6.
        check(
            "0 3 * * *",
            at(1, 10, 0),
            Some(at(2, 3, 0)),
            at(5, 12, 0),
            Some(at(3, 3, 0)),
        );
        check(
            "0 3 * * *",
            at(1, 10, 0),
            Some(at(5, 12, 0)),
            at(5, 23, 0),
            None,
        );
    }

    #[test]
    fn bad_expressions_are_refused() {
        assert!(Cron::parse("0 3 * *").is_err());
        assert!(Cron::parse("0 25 * * *").is_err());
        assert!(Cron::parse("every day").is_err());
        assert!(Cron::parse("*/15 * * * *").is_ok());
    }
}
