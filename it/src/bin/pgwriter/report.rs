//! What `pgwriter` concludes from its record of commits. Pure.

use std::collections::HashSet;
use std::time::Duration;

use paas_it::phase::{latency_columns, Phase};

/// The longest time without an acknowledged commit around the kill: between two
/// consecutive acknowledgements (or the kill and the first one after it, when none came
/// before), the later one after the kill and the earlier one at most `window` after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The acknowledgement before the gap, relative to the kill (negative: before it).
    pub from: SignedMillis,
    /// The acknowledgement that ended it, after the kill.
    pub to: SignedMillis,
}

/// Milliseconds relative to the kill.
pub type SignedMillis = i64;

impl Gap {
    /// How long it lasted.
    pub fn length(&self) -> Duration {
        Duration::from_millis((self.to - self.from).unsigned_abs())
    }
}

/// The failover gap of `acks` (acknowledgement times since the start, ascending) for a
/// kill at `kill`; `None` when no commit was acknowledged after the kill.
pub fn failover_gap(acks: &[Duration], kill: Duration, window: Duration) -> Option<Gap> {
    let ms = |d: Duration| -> SignedMillis {
        if d >= kill {
            (d - kill).as_millis() as i64
        } else {
            -((kill - d).as_millis() as i64)
        }
    };
    let first_after = acks.iter().position(|a| *a > kill)?;
    let mut prev = match first_after {
        0 => kill,
        i => acks[i - 1],
    };
    let mut best: Option<Gap> = None;
    for &at in &acks[first_after..] {
        if prev > kill + window {
            break;
        }
        let gap = Gap {
            from: ms(prev),
            to: ms(at),
        };
        if best.is_none_or(|b| gap.length() > b.length()) {
            best = Some(gap);
        }
        prev = at;
    }
    best
}

/// The acknowledged ids missing from `present`, ascending.
pub fn lost(acked: &[i64], present: &HashSet<i64>) -> Vec<i64> {
    let mut lost: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect();
    lost.sort_unstable();
    lost
}

/// What one phase saw.
#[derive(Debug, Default, Clone)]
pub struct PhaseStats {
    /// From when the writer began trying to write a row to its acknowledgement
    /// (reconnects included).
    pub latencies: Vec<Duration>,
    /// Commits whose outcome is unknown (the connection failed or timed out first).
    pub unknown: u64,
}

impl PhaseStats {
    /// One report line: counts and p50/p90/p99/max of the acknowledged commits.
    pub fn line(&mut self, phase: Phase) -> String {
        format!(
            "{:<6}  acknowledged {:>6}  unknown {:>3}  {}",
            phase.label(),
            self.latencies.len(),
            self.unknown,
            latency_columns(&mut self.latencies),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(v: &[f64]) -> Vec<Duration> {
        v.iter().map(|s| Duration::from_secs_f64(*s)).collect()
    }

    #[test]
    fn the_gap_spans_the_kill_to_the_first_commit_of_the_new_primary() {
        let acks = secs(&[1.0, 1.1, 1.2, 5.5, 5.6]);
        let gap = failover_gap(&acks, Duration::from_secs(1), Duration::from_secs(10)).unwrap();
        assert_eq!((gap.from, gap.to), (200, 4500));
        assert_eq!(gap.length(), Duration::from_millis(4300));
    }

    #[test]
    fn a_later_stall_within_the_window_counts_and_one_beyond_it_does_not() {
        let acks = secs(&[0.9, 2.0, 2.1, 6.0, 6.1, 30.0]);
        let kill = Duration::from_secs(1);
        // The pause from 6.1 s starts 5.1 s after the kill: inside a 10 s window.
        let gap = failover_gap(&acks, kill, Duration::from_secs(10)).unwrap();
        assert_eq!((gap.from, gap.to), (5100, 29000));
        // Beyond a 4 s window it is not the failover's; the stall from 2.1 s is.
        let gap = failover_gap(&acks, kill, Duration::from_secs(4)).unwrap();
        assert_eq!((gap.from, gap.to), (1100, 5000));
    }

    #[test]
    fn without_a_commit_before_the_kill_the_gap_starts_at_it_and_without_one_after_there_is_none() {
        let kill = Duration::from_secs(2);
        let gap = failover_gap(&secs(&[3.0]), kill, Duration::from_secs(10)).unwrap();
        assert_eq!((gap.from, gap.to), (0, 1000));
        assert_eq!(
            failover_gap(&secs(&[1.0, 1.5]), kill, Duration::from_secs(10)),
            None
        );
        assert_eq!(failover_gap(&[], kill, Duration::from_secs(10)), None);
    }

    #[test]
    fn lost_rows_are_the_acknowledged_ones_missing() {
        let present: HashSet<i64> = [1, 2, 4, 9].into();
        assert_eq!(lost(&[4, 1, 2], &present), Vec::<i64>::new());
        assert_eq!(lost(&[5, 1, 3], &present), vec![3, 5]);
    }

    #[test]
    fn a_line_shows_counts_and_percentiles() {
        let mut s = PhaseStats {
            latencies: vec![Duration::from_millis(3), Duration::from_millis(1)],
            unknown: 1,
        };
        let line = s.line(Phase::During);
        assert!(line.starts_with("during"), "{line}");
        assert!(line.contains("acknowledged      2  unknown   1"), "{line}");
        assert!(line.contains("max    3.0ms"), "{line}");
    }
}
