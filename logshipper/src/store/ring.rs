//! A per-app bounded buffer of the most recent lines, numbered by a per-app sequence.
//!
//! Invariants: at most `capacity` lines are held; the line at index `i` has sequence
//! number `next_seq - len + i`; sequence numbers increase by one per line pushed and never
//! repeat within an app (also across restarts, see `super::segment`). Followers use them
//! to count exactly how many lines they missed.

use std::collections::VecDeque;

use super::filter::Filter;
use crate::line::LogLine;

/// The last `capacity` lines of one app.
#[derive(Debug)]
pub struct Ring {
    lines: VecDeque<LogLine>,
    capacity: usize,
    next_seq: u64,
}

impl Ring {
    /// An empty ring whose next line gets sequence number `next_seq`.
    pub fn new(capacity: usize, next_seq: u64) -> Self {
        Ring {
            lines: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            next_seq,
        }
    }

    /// Sequence number the next pushed line will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Number of lines held.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether the ring holds no line.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Appends lines, evicting the oldest beyond capacity; returns the first one's seq.
    pub fn push(&mut self, lines: impl IntoIterator<Item = LogLine>) -> u64 {
        let first = self.next_seq;
        for line in lines {
            if self.lines.len() == self.capacity {
                self.lines.pop_front();
            }
            self.lines.push_back(line);
            self.next_seq += 1;
        }
        first
    }

    /// The lines with seq >= `seq` that are still held, and the seq of the first of
    /// them (which is above `seq` when older ones were already evicted).
    pub fn since(&self, seq: u64) -> (u64, impl Iterator<Item = &LogLine>) {
        let oldest = self.next_seq - self.lines.len() as u64;
        let first = seq.clamp(oldest, self.next_seq);
        (first, self.lines.range((first - oldest) as usize..))
    }

    /// The last `n` lines passing `filter`, oldest first.
    pub fn tail(&self, n: usize, filter: &Filter) -> Vec<LogLine> {
        let mut out: Vec<LogLine> = self
            .lines
            .iter()
            .rev()
            .filter(|l| filter.matches(l))
            .take(n)
            .cloned()
            .collect();
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::Stream;

    fn line(n: u64, job: &str) -> LogLine {
        LogLine {
            id: n,
            app: "a".into(),
            process_type: None,
            job: Some(job.into()),
            host: None,
            stream: Stream::Stdout,
            timestamp_ns: 0,
            message: n.to_string(),
        }
    }

    fn ids(lines: &[LogLine]) -> Vec<u64> {
        lines.iter().map(|l| l.id).collect()
    }

    #[test]
    fn bounded_and_sequenced() {
        let mut r = Ring::new(3, 10);
        assert_eq!(r.push((1..=2).map(|n| line(n, "a"))), 10);
        assert_eq!(r.push((3..=5).map(|n| line(n, "b"))), 12);
        let since = |seq| {
            let (first, lines) = r.since(seq);
            (first, lines.map(|l| l.id).collect::<Vec<_>>())
        };
        assert_eq!(since(0), (12, vec![3, 4, 5]));
        assert_eq!(since(13), (13, vec![4, 5]));
        assert_eq!(since(15), (15, vec![]));
        assert_eq!(since(99), (15, vec![]));
        assert_eq!(r.next_seq(), 15);
        assert_eq!(r.len(), 3);
        assert_eq!(ids(&r.tail(10, &Filter::default())), vec![3, 4, 5]);
        assert_eq!(ids(&r.tail(2, &Filter::default())), vec![4, 5]);
        let only_b = Filter {
            job: Some("b".into()),
            ..Filter::default()
        };
        assert_eq!(ids(&r.tail(10, &only_b)), vec![3, 4, 5]);
        let only_a = Filter {
            job: Some("a".into()),
            ..Filter::default()
        };
        assert!(r.tail(10, &only_a).is_empty());
    }
}
