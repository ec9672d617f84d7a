//! Latency percentiles and counts per phase of the experiment. Pure.

use std::time::Duration;

use paas_it::phase::{latency_columns, Phase};

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
        format!(
            "{:<6}  requests {:>7}  failed {:>4}  retried {:>4}  {}",
            phase.label(),
            self.total(),
            self.failed,
            self.retried,
            latency_columns(&mut self.latencies),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
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
