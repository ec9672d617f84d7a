//! What a running backup or restore says about itself every few seconds in the app's
//! log (`paas log -a APP --type backup`): bytes done, rate, and an ETA when the total is
//! known.
//!
//! The total is exact for a restore (the manifest's size). For a backup it is at best an
//! estimate: the size of the previous backup of the same resource. Engines do not know
//! their dump's size in advance (`pg_database_size` is the size on disk, which the
//! compressed custom format is a fraction of), so the line says "estimate" and which one,
//! and once the estimate is passed it shows no ETA rather than a wrong one.
//!
//! Everything here is pure: [`eta`] and [`line`] take the numbers and return the answer.

use std::time::Duration;

/// What is known of a transfer's total size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    /// Nothing to go by (a resource's first backup).
    Unknown,
    /// The previous backup of the same resource had this many bytes.
    PreviousBackup(u64),
    /// The size is known (a restore reads a stored object of this size).
    Exact(u64),
}

impl Total {
    /// The number of bytes expected, if any.
    pub fn bytes(self) -> Option<u64> {
        match self {
            Total::Unknown => None,
            Total::PreviousBackup(n) | Total::Exact(n) => Some(n),
        }
    }
}

/// The time left to move `total` bytes at the average rate so far (`done` bytes in
/// `elapsed`), or `None` when it cannot be told: nothing done yet, no time passed, or
/// `done` already past `total` (an estimate that was too small).
pub fn eta(done: u64, elapsed: Duration, total: u64) -> Option<Duration> {
    if done == 0 || elapsed.is_zero() || done > total {
        return None;
    }
    let left = (total - done) as f64;
    let rate = done as f64 / elapsed.as_secs_f64();
    Some(Duration::from_secs_f64(left / rate))
}

/// One progress line: `what` (e.g. `backup 20261201T... of r1`) followed by bytes done,
/// the total or estimate, the average rate and the ETA where there is one.
pub fn line(what: &str, done: u64, elapsed: Duration, total: Total) -> String {
    let rate = if elapsed.is_zero() {
        0.0
    } else {
        done as f64 / elapsed.as_secs_f64()
    };
    let rate = human_bytes(rate as u64);
    let amount = match total {
        Total::Unknown => human_bytes(done),
        Total::Exact(n) => format!(
            "{} of {} ({}%)",
            human_bytes(done),
            human_bytes(n),
            percent(done, n)
        ),
        Total::PreviousBackup(n) if done > n => format!(
            "{} (past the estimate of {}, the previous backup's size)",
            human_bytes(done),
            human_bytes(n)
        ),
        Total::PreviousBackup(n) => format!(
            "{} of ~{} (estimate: the previous backup's size)",
            human_bytes(done),
            human_bytes(n)
        ),
    };
    let eta = total
        .bytes()
        .and_then(|n| eta(done, elapsed, n))
        .map(|left| format!(", ETA {}", human_duration(left)))
        .unwrap_or_default();
    format!("{what}: {amount}, {rate}/s{eta}")
}

fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        100
    } else {
        (done.min(total) as u128 * 100 / total as u128) as u64
    }
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `45 s`, `3 min 20 s`, `2 h 05 min`.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs_f64().round() as u64;
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min {:02} s", secs / 60, secs % 60),
        _ => format!("{} h {:02} min", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn check(done: u64, secs: u64, total: Total, expected: &str) {
        assert_eq!(
            line("backup X", done, Duration::from_secs(secs), total),
            expected
        );
    }

    #[test]
    fn eta_is_the_rest_at_the_average_rate() {
        let ten = Duration::from_secs(10);
        assert_eq!(eta(100, ten, 300), Some(Duration::from_secs(20)));
        assert_eq!(eta(300, ten, 300), Some(Duration::ZERO));
        assert_eq!(eta(0, ten, 300), None, "no rate yet");
        assert_eq!(eta(100, Duration::ZERO, 300), None, "no time yet");
        assert_eq!(eta(400, ten, 300), None, "past the total");
    }

    #[test]
    fn lines_say_what_is_known() {
        check(
            10 * MIB,
            5,
            Total::Exact(40 * MIB),
            "backup X: 10.0 MiB of 40.0 MiB (25%), 2.0 MiB/s, ETA 15 s",
        );
        check(
            10 * MIB,
            5,
            Total::PreviousBackup(40 * MIB),
            "backup X: 10.0 MiB of ~40.0 MiB (estimate: the previous backup's size), 2.0 MiB/s, ETA 15 s",
        );
        check(
            50 * MIB,
            5,
            Total::PreviousBackup(40 * MIB),
            "backup X: 50.0 MiB (past the estimate of 40.0 MiB, the previous backup's size), 10.0 MiB/s",
        );
        check(10 * MIB, 5, Total::Unknown, "backup X: 10.0 MiB, 2.0 MiB/s");
        check(0, 0, Total::Exact(0), "backup X: 0 B of 0 B (100%), 0 B/s");
        check(
            MIB,
            100,
            Total::Exact(300 * MIB),
            "backup X: 1.0 MiB of 300.0 MiB (0%), 10.2 KiB/s, ETA 8 h 18 min",
        );
    }

    #[test]
    fn durations_and_sizes_read_well() {
        assert_eq!(human_duration(Duration::from_millis(400)), "0 s");
        assert_eq!(human_duration(Duration::from_secs(200)), "3 min 20 s");
        assert_eq!(human_duration(Duration::from_secs(7500)), "2 h 05 min");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
