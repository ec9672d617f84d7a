//! Which router worker thread the caller runs on, and the padding that keeps each
//! worker's shard of shared state on cache lines of its own.
//!
//! Every request touches a few counters and lists (idle connections, request counts).
//! Kept per worker, each is written by one thread only, where one copy for all had two
//! cores take the same cache line from each other on every request.

use std::cell::Cell;

thread_local! {
    /// The calling thread's worker index (0 on threads that are not router workers).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as router worker `index`: each worker calls it once at start.
pub fn set_index(index: usize) {
    INDEX.with(|i| i.set(index));
}

/// The calling thread's worker index (0 on any other thread).
pub fn index() -> usize {
    INDEX.with(|i| i.get())
}

/// A value alone on its cache lines (128 bytes: two lines, as the adjacent-line
/// prefetcher of x86 cores moves them in pairs), so that two workers' shards never
/// share one.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}
