//! How often the inputs log a connection they closed for bad input or missing
//! credentials: every close is counted in the metrics, but a flood of refused
//! connections (a job trying forged lines in a loop) must not flood the aggregator's own
//! log. At most [`BURST`] lines per [`WINDOW`]; the first line of the next window says how
//! many were left out. Pure: the caller passes the time.

use std::time::{Duration, Instant};

/// Length of one logging window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Lines logged per window.
pub const BURST: u32 = 20;

/// What to do with one close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogVerdict {
    /// Log it, saying how many closes before it were not logged.
    Log {
        /// Closes left out since the last logged one.
        unlogged: u64,
    },
    /// Leave it out (counted for the next logged line).
    Skip,
}

/// The window's state.
#[derive(Debug, Default)]
pub struct LogLimit {
    window_start: Option<Instant>,
    logged: u32,
    unlogged: u64,
}

impl LogLimit {
    /// Counts one close at `now` and says whether to log it.
    pub fn note(&mut self, now: Instant) -> LogVerdict {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if expired {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < BURST {
            self.logged += 1;
            LogVerdict::Log {
                unlogged: std::mem::take(&mut self.unlogged),
            }
        } else {
            self.unlogged += 1;
            LogVerdict::Skip
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_then_counted_then_reported() {
        let t0 = Instant::now();
        let mut limit = LogLimit::default();
        for _ in 0..BURST {
            assert_eq!(limit.note(t0), LogVerdict::Log { unlogged: 0 });
        }
        for i in 0..1000 {
            assert_eq!(limit.note(t0 + Duration::from_millis(i)), LogVerdict::Skip);
        }
        assert_eq!(limit.note(t0 + WINDOW), LogVerdict::Log { unlogged: 1000 });
        assert_eq!(limit.note(t0 + WINDOW), LogVerdict::Log { unlogged: 0 });
    }
}
