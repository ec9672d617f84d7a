//! Input connection buffers, bounded together.
//!
//! Each connection reads into a buffer that starts small and grows only while it holds a
//! partial message. Growth beyond the base size is charged to one [`Budget`] shared by
//! every connection of the aggregator, so many connections each sending the start of a
//! huge message (or trickling one slowly) cannot make the aggregator hold more than the
//! budget: a connection that cannot get budget waits for it, and is closed when its
//! message misses its deadline. Connections carrying ordinary lines never need budget,
//! so they keep flowing while big ones wait. A buffer that drains is given back.
//!
//! [`ConnBuffer::advance`] marks progress: the whole-message deadline counts from the
//! first read after the last complete message, so a busy connection that always has a
//! partial message at its tail is not mistaken for a slow one.

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

/// Buffer capacity every connection may hold without budget.
pub const BASE_CAPACITY: usize = 8 * 1024;

/// A buffer emptied to below this keeps its capacity; a bigger one is given back.
const KEEP_CAPACITY: usize = 4 * BASE_CAPACITY;

/// The bytes of buffer growth all connections together may hold.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes currently charged.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Charges `bytes` if they fit.
    fn try_charge(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let next = used.checked_add(bytes)?;
                (next <= self.limit).then_some(next)
            })
            .is_ok()
    }

    /// Charges `bytes` whether or not they fit (an allocator that gave more than asked).
    fn charge(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// The capacity to grow to before the next read, or `None` when the spare room is
/// enough: at least `read_size / 2` free, growing geometrically with the partial
/// message so a big message costs few copies, never beyond `read_size` per step.
pub fn next_capacity(len: usize, capacity: usize, read_size: usize) -> Option<usize> {
    let step = len.clamp(BASE_CAPACITY, read_size.max(BASE_CAPACITY));
    if capacity - len >= step / 2 {
        None
    } else {
        Some(len + step)
    }
}

/// Why a connection may not read now.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    /// Waiting for budget; give up at the deadline.
    Budget,
}

/// One connection's buffer with its budget share and message clock.
#[derive(Debug)]
pub struct ConnBuffer {
    buf: BytesMut,
    /// Bytes of capacity beyond [`BASE_CAPACITY`] charged to the budget.
    charged: usize,
    budget: Arc<Budget>,
    /// When the partial message at the head of the buffer started to be awaited.
    partial_since: Option<Instant>,
}

impl ConnBuffer {
    /// An empty buffer of [`BASE_CAPACITY`].
    pub fn new(budget: Arc<Budget>) -> ConnBuffer {
        ConnBuffer {
            buf: BytesMut::with_capacity(BASE_CAPACITY),
            charged: 0,
            budget,
            partial_since: None,
        }
    }

    /// Drops `n` consumed bytes; a complete message restarts the message clock, and an
    /// emptied big buffer is given back.
    pub fn advance(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.buf.advance(n);
        self.partial_since = None;
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = BytesMut::with_capacity(BASE_CAPACITY);
            self.recharge();
        }
    }

    /// Appends bytes (a stream that ended without its last delimiter).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.recharge();
    }

    /// How long the partial message has been awaited (`None`: nothing partial).
    pub fn partial_for(&mut self) -> Option<Duration> {
        if self.buf.is_empty() {
            self.partial_since = None;
            return None;
        }
        Some(
            self.partial_since
                .get_or_insert_with(Instant::now)
                .elapsed(),
        )
    }

    /// Makes room for the next read of up to `read_size` bytes, charging growth to the
    /// budget; `Err(Wait::Budget)` when the budget cannot cover it now.
    pub fn reserve(&mut self, read_size: usize) -> Result<(), Wait> {
        let Some(target) = next_capacity(self.buf.len(), self.buf.capacity(), read_size) else {
            return Ok(());
        };
        let wanted = target.saturating_sub(BASE_CAPACITY);
        let extra = wanted.saturating_sub(self.charged);
        if extra > 0 && !self.budget.try_charge(extra) {
            return Err(Wait::Budget);
        }
        self.charged += extra;
        self.buf.reserve(target - self.buf.len());
        self.recharge();
        Ok(())
    }

    /// The buffer to read into.
    pub fn for_read(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Brings the charge in line with the actual capacity.
    fn recharge(&mut self) {
        let actual = self.buf.capacity().saturating_sub(BASE_CAPACITY);
        match actual.cmp(&self.charged) {
            std::cmp::Ordering::Greater => self.budget.charge(actual - self.charged),
            std::cmp::Ordering::Less => self.budget.release(self.charged - actual),
            std::cmp::Ordering::Equal => {}
        }
        self.charged = actual;
    }
}

impl Deref for ConnBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for ConnBuffer {
    fn drop(&mut self) {
        self.budget.release(self.charged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_reads_never_need_budget() {
        let budget = Budget::new(0);
        let mut b = ConnBuffer::new(budget.clone());
        for _ in 0..100 {
            b.reserve(256 * 1024).unwrap();
            b.for_read()
                .extend_from_slice(b"<14>1 - - - - - - a line\n");
            let n = b.len();
            b.advance(n);
        }
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_growing_message_is_charged_and_refused_past_the_budget_then_given_back() {
        let budget = Budget::new(1024 * 1024);
        let mut b = ConnBuffer::new(budget.clone());
        let chunk = vec![b'x'; 64 * 1024];
        let mut refused = false;
        for _ in 0..64 {
            match b.reserve(256 * 1024) {
                Ok(()) => b.for_read().extend_from_slice(&chunk),
                Err(Wait::Budget) => {
                    refused = true;
                    break;
                }
            }
        }
        assert!(
            refused,
            "4 MiB of partial message must exceed a 1 MiB budget"
        );
        assert!(
            budget.used() <= 1024 * 1024 + 256 * 1024,
            "{}",
            budget.used()
        );
        assert!(budget.used() > 0);
        let n = b.len();
        b.advance(n);
        assert_eq!(budget.used(), 0, "an emptied buffer gives its budget back");
        b.reserve(256 * 1024).unwrap();
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn dropping_a_connection_releases_its_share() {
        let budget = Budget::new(usize::MAX);
        let mut b = ConnBuffer::new(budget.clone());
        for _ in 0..8 {
            b.reserve(256 * 1024).unwrap();
            let spare = b.for_read().capacity() - b.len();
            b.for_read().extend_from_slice(&vec![0; spare]);
        }
        assert!(budget.used() > 0);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_message_clock_restarts_on_progress() {
        let mut b = ConnBuffer::new(Budget::new(0));
        assert_eq!(b.partial_for(), None);
        b.for_read().extend_from_slice(b"partial");
        let first = b.partial_for().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(b.partial_for().unwrap() > first);
        b.advance(3);
        assert!(b.partial_for().unwrap() < Duration::from_millis(20));
    }

    #[test]
    fn capacity_grows_geometrically_in_bounded_steps() {
        assert_eq!(next_capacity(0, BASE_CAPACITY, 256 * 1024), None);
        assert_eq!(
            next_capacity(BASE_CAPACITY, BASE_CAPACITY, 256 * 1024),
            Some(2 * BASE_CAPACITY)
        );
        assert_eq!(
            next_capacity(1 << 20, 1 << 20, 256 * 1024),
            Some((1 << 20) + 256 * 1024)
        );
    }
}
