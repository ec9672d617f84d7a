//! Which router worker thread the caller runs on, and [`Shards`]: a value kept per
//! worker, each shard on cache lines of its own.
//!
//! Every request touches a few counters and lists (idle connections, request counts).
//! Kept per worker, each is written by one thread only, where one copy for all had two
//! cores take the same cache line from each other on every request.

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard};

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

/// Shards of a [`Shards`] value: worker indexes beyond share one (modulo).
const SHARDS: usize = 16;

/// A value kept per worker thread: each worker locks only its own shard (uncontended,
/// on cache lines of its own); readers of the whole visit every shard.
#[derive(Debug, Default)]
pub struct Shards<T> {
    shards: [Padded<Mutex<T>>; SHARDS],
}

impl<T> Shards<T> {
    /// The calling worker's shard (a lock poisoned by a panic is taken over, as the
    /// router's other locks are).
    pub fn mine(&self) -> MutexGuard<'_, T> {
        lock(&self.shards[index() % SHARDS].0)
    }

    /// Every shard, each locked in turn.
    pub fn each(&self) -> impl Iterator<Item = MutexGuard<'_, T>> {
        self.shards.iter().map(|s| lock(&s.0))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A value alone on its cache lines (128 bytes: two lines, as the adjacent-line
/// prefetcher of x86 cores moves them in pairs), so that two workers' shards never
/// share one.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);
