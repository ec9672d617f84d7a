//! Which scheduled backups retention deletes: a pure function of the backups, the
//! policy and the time.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// How many scheduled backups to keep. A backup is kept when it is among the newest
/// `keep_last`, or younger than `keep_days`; with neither set, everything is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Keep the newest N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep every backup younger than N days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_days: Option<u32>,
}

/// The ids among `backups` (id, start time) that `policy` no longer keeps at `now`.
pub fn expired(
    backups: &[(String, DateTime<Utc>)],
    policy: Retention,
    now: DateTime<Utc>,
) -> Vec<String> {
    if policy.keep_last.is_none() && policy.keep_days.is_none() {
        return Vec::new();
    }
    let mut newest_first: Vec<&(String, DateTime<Utc>)> = backups.iter().collect();
    newest_first.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    newest_first
        .into_iter()
        .enumerate()
        .filter(|(rank, (_, started))| {
            let by_count = policy.keep_last.is_some_and(|n| *rank < n as usize);
            let by_age = policy
                .keep_days
                .is_some_and(|d| now - *started < Duration::days(i64::from(d)));
            !(by_count || by_age)
        })
        .map(|(_, (id, _))| id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, d, 3, 0, 0).unwrap()
    }

    fn daily(days: std::ops::RangeInclusive<u32>) -> Vec<(String, DateTime<Utc>)> {
        days.map(|d| (format!("b{d:02}"), day(d))).collect()
    }

    fn check(
        backups: &[(String, DateTime<Utc>)],
        policy: Retention,
        now: DateTime<Utc>,
        expected: &[&str],
    ) {
        let mut got = expired(backups, policy, now);
        got.sort();
        assert_eq!(got, expected, "{policy:?}");
    }

    #[test]
    fn no_policy_keeps_everything() {
        check(&daily(1..=10), Retention::default(), day(30), &[]);
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let policy = Retention {
            keep_last: Some(3),
            keep_days: None,
        };
        check(&daily(1..=5), policy, day(30), &["b01", "b02"]);
        check(&daily(1..=2), policy, day(30), &[]);
        let zero = Retention {
            keep_last: Some(0),
            keep_days: None,
        };
        check(&daily(1..=2), zero, day(30), &["b01", "b02"]);
    }

    #[test]
    fn keep_days_keeps_the_young() {
        let policy = Retention {
            keep_last: None,
            keep_days: Some(2),
        };
        // At day 10 03:00, b09 is 1 day old, b08 exactly 2 days (not younger).
        check(
            &daily(5..=10),
            policy,
            day(10),
            &["b05", "b06", "b07", "b08"],
        );
    }

    #[test]
    fn either_rule_keeps() {
        let policy = Retention {
            keep_last: Some(2),
            keep_days: Some(5),
        };
        // Young ones kept by age even beyond the count, old ones kept by count.
        check(
            &daily(1..=10),
            policy,
            day(10),
            &["b01", "b02", "b03", "b04", "b05"],
        );
        check(&daily(1..=3), policy, day(30), &["b01"]);
    }
}
