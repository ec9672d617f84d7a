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
    next(cron, schedule, run).filter(|at| *at <= now)
}

/// The next cron time a run is for, due or not: the first one after the last handled
/// time (or the schedule's creation). The runner sleeps until the earliest of these, so
/// a run starts at its time, not at the runner's next look.
pub fn next(cron: &Cron, schedule: &Schedule, run: &Run) -> Option<DateTime<Utc>> {
    cron.next_after(run.handled.unwrap_or(schedule.created))
}

/// How long the runner sleeps from `now`: until the earliest next cron time `next`,
/// but at least `min` (a time that is due and could not be recorded is not retried in
/// a loop) and at most `max` (a schedule set meanwhile is seen within it; `max` too
/// when there is no next time).
pub fn sleep_until(
    next: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    min: std::time::Duration,
    max: std::time::Duration,
) -> std::time::Duration {
    match next {
        None => max,
        Some(at) => (at - now).to_std().unwrap_or(min).clamp(min, max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::time::Duration;

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
    fn the_next_time_is_the_first_after_the_last_handled_one() {
        let cron = Cron::parse("0 3 * * *").unwrap();
        let s = schedule("0 3 * * *", at(1, 12, 0));
        assert_eq!(next(&cron, &s, &Run::default()), Some(at(2, 3, 0)));
        let handled = Run {
            handled: Some(at(2, 3, 0)),
            last: None,
        };
        assert_eq!(next(&cron, &s, &handled), Some(at(3, 3, 0)));
    }

    #[test]
    fn the_runner_sleeps_until_the_next_time_within_bounds() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(20));
        let now = at(1, 12, 0);
        let in_5s = now + chrono::Duration::seconds(5);
        assert_eq!(
            sleep_until(Some(in_5s), now, min, max),
            Duration::from_secs(5)
        );
        // Far away: looked at again within `max` (a schedule may be set meanwhile).
        assert_eq!(sleep_until(Some(at(2, 3, 0)), now, min, max), max);
        // Due already (its record failed): not sooner than `min`; none: `max`.
        assert_eq!(sleep_until(Some(at(1, 11, 0)), now, min, max), min);
        assert_eq!(sleep_until(Some(now), now, min, max), min);
        assert_eq!(sleep_until(None, now, min, max), max);
    }

    #[test]
    fn bad_expressions_are_refused() {
        assert!(Cron::parse("0 3 * *").is_err());
        assert!(Cron::parse("0 25 * * *").is_err());
        assert!(Cron::parse("every day").is_err());
        assert!(Cron::parse("*/15 * * * *").is_ok());
    }
}
