//! The phases of a node-loss experiment (`scripts/experiment`): before the kill, the
//! first seconds after it, later; and nearest-rank percentiles. Shared by its load
//! generators (`loadgen`, `pgwriter`). Pure.

use std::time::Duration;

/// The phases a request (or a write) belongs to, by when it started relative to the kill.
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

/// The `q` quantile (0..=1) of sorted `values`, nearest rank; `None` when empty.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `latencies` (sorted here) as the columns of a phase's report line: `p50 … p90 …
/// p99 … max …` in milliseconds, `-` where there are none.
pub fn latency_columns(latencies: &mut [Duration]) -> String {
    latencies.sort();
    let p = |q: f64| percentile(latencies, q).map_or("-".into(), millis_text);
    format!(
        "p50 {:>8}  p90 {:>8}  p99 {:>8}  max {:>8}",
        p(0.50),
        p(0.90),
        p(0.99),
        latencies.last().copied().map_or("-".into(), millis_text),
    )
}

/// `d` in milliseconds with one decimal, e.g. `12.5ms`.
pub fn millis_text(d: Duration) -> String {
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
}
