//! Latency percentiles and counts per phase of the experiment. Pure.

use std::time::Duration;

/// The phases a request belongs to, by when it started relative to the kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Before the kill (or with no kill signalled).
    Before,
    /// In the first `during` after the kill.
    During,
    /// Later.
    After,
}

impl Phase {
    /// The phase of a request that started `since_kill` after the kill (`None`: before
    /// it, or no kill yet).
    pub fn of(since_kill: Option<Duration>, during: Duration) -> Phase {
        match since_kill {
            None => Phase::Before,
            Some(d) if d < during => Phase::During,
            Some(_) => Phase::After,
        }
    }

    /// Its name in the report.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::During => "during",
            Phase::After => "after",
        }
    }
}

/// What one phase saw.
#[derive(Debug, Default, Clone)]
pub struct PhaseStats {
    /// Latencies of successful requests (retries included in their latency).
    pub latencies: Vec<Duration>,
    /// Requests that needed their second attempt (and succeeded or not).
    pub retried: u64,
    /// Failed requests.
    pub failed: u64,
}

impl PhaseStats {
    /// Requests made in this phase.
    pub fn total(&self) -> u64 {
        self.latencies.len() as u64 + self.failed
    }

    /// One report line: counts and p50/p90/p99/max of the successful requests.
    pub fn line(&mut self, phase: Phase) -> String {
        self.latencies.sort();
        let p = |q: f64| percentile(&self.latencies, q).map_or("-".into(), ms);
        format!(
            "{:<6}  requests {:>7}  failed {:>4}  retried {:>4}  p50 {:>8}  p90 {:>8}  p99 {:>8}  max {:>8}",
            phase.label(),
            self.total(),
            self.failed,
            self.retried,
            p(0.50),
            p(0.90),
            p(0.99),
            self.latencies.last().copied().map_or("-".into(), ms),
        )
    }
}

/// The `q` quantile (0..=1) of sorted `values`, nearest rank; `None` when empty.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v = millis(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&v, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&v, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&v, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&v, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(
            percentile(&millis(&[7]), 0.9),
            Some(Duration::from_millis(7))
        );
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn phases_split_at_the_kill() {
        let during = Duration::from_secs(10);
        assert_eq!(Phase::of(None, during), Phase::Before);
        assert_eq!(Phase::of(Some(Duration::ZERO), during), Phase::During);
        assert_eq!(
            Phase::of(Some(Duration::from_millis(9_999)), during),
            Phase::During
        );
        assert_eq!(Phase::of(Some(during), during), Phase::After);
    }

    #[test]
    fn a_line_counts_failures_with_the_successes() {
        let mut s = PhaseStats {
            latencies: millis(&[3, 1, 2]),
            retried: 1,
            failed: 2,
        };
        assert_eq!(s.total(), 5);
        let line = s.line(Phase::During);
        assert!(line.starts_with("during"), "{line}");
        assert!(
            line.contains("requests       5  failed    2  retried    1"),
            "{line}"
        );
        assert!(line.contains("p50    2.0ms"), "{line}");
    }
}
