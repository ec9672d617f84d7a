//! The drain manager: one task per drain, each reading the shared journal through its own
//! cursor (`drain-<id>`), batching, sending with retries, and committing what was sent.
//!
//! A drain task loops: collect a batch (up to the drain's byte/line limits, or until its
//! first line is `max_age` old), send it until every line is delivered or dead-lettered
//! (backing off between attempts, never dropping a batch because the sink is down), then
//! commit the batch's last id. Lines of other apps (per-app drain) are skipped but
//! committed past. When the journal dropped lines this drain had not read, the drop is
//! counted and a marker line takes their place in the sink, like Logplex's L10:
//! `Error L10 (output buffer overflow): N messages dropped since last report`; the marker
//! uses the last dropped id, so it is unique too.
//!
//! Stopping (remove or shutdown) cancels the task at its next await: an unsent or
//! unacknowledged batch stays uncommitted and is sent again after a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::{BatchLimits, ConfigError, DrainConfig, DrainSpec};
use super::dead_letter::DeadLetter;
use super::retry::{resend, Backoff, Resend, RetryReason};
use super::sink::{DeadItem, Sink, SinkError};
use super::status::{DrainFamilies, DrainStats, DrainStatus};
use crate::journal::{Journal, JournalError, JournalReader, ReadBatch};
use crate::line::{LogLine, Stream};

/// Errors from managing drains.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The spec is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The sink could not be set up.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The drain's journal cursor could not be opened or removed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A drain with this id is already running.
    #[error("drain {0:?} already exists")]
    Exists(String),
    /// No drain has this id.
    #[error("no drain {0:?}")]
    NotFound(String),
}

/// The journal cursor name of drain `id`.
pub fn reader_name(id: &str) -> String {
    format!("drain-{id}")
}

struct Running {
    config: DrainConfig,
    stats: Arc<DrainStats>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Runs and tracks every drain of this aggregator.
pub struct DrainManager {
    journal: Journal,
    dead_letter_dir: PathBuf,
    metrics: DrainFamilies,
    backoff: Backoff,
    drains: Mutex<HashMap<String, Running>>,
}

impl DrainManager {
    /// A manager draining `journal`; refused lines go to files in `dead_letter_dir`;
    /// counters are series of `metrics` ([`DrainFamilies::register`] in the process registry).
    pub fn new(journal: Journal, dead_letter_dir: PathBuf, metrics: DrainFamilies) -> Self {
        DrainManager {
            journal,
            dead_letter_dir,
            metrics,
            backoff: Backoff::default(),
            drains: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the retry backoff (tests and benchmarks use short delays).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.drains.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates `spec` and starts its drain. A drain that existed before a restart
    /// resumes after its committed cursor; a new one starts with lines appended from now.
    pub fn add(&self, spec: &DrainSpec) -> Result<DrainStatus, DrainError> {
        let config = DrainConfig::from_spec(spec)?;
        let mut drains = self.lock();
        if drains.contains_key(&config.id) {
            return Err(DrainError::Exists(config.id));
        }
        let sink = Sink::build(&config.sink, &config.id)?;
        let reader = self.journal.reader(&reader_name(&config.id))?;
        let stats = self.metrics.stats(&config.id);
        let cancel = CancellationToken::new();
        let runner = Runner {
            id: config.id.clone(),
            app: config.app.clone(),
            limits: config.batch,
            reader,
            sink,
            stats: Arc::clone(&stats),
            dead_letter: DeadLetter::new(&self.dead_letter_dir, &config.id),
            journal: self.journal.clone(),
            backoff: self.backoff,
            cancel: cancel.clone(),
        };
        tracing::info!(drain = %config.id, url = %config.sink.display_url(), app = ?config.app, "drain started");
        let task = tokio::spawn(runner.run());
        let running = Running {
            config,
            stats,
            cancel,
            task,
        };
        let status = self.status_of(&running);
        drains.insert(running.config.id.clone(), running);
        Ok(status)
    }

    /// Stops drain `id` and forgets its cursor (its backlog no longer holds the journal).
    pub async fn remove(&self, id: &str) -> Result<(), DrainError> {
        let running = self
            .lock()
            .remove(id)
            .ok_or_else(|| DrainError::NotFound(id.to_string()))?;
        running.cancel.cancel();
        let _ = running.task.await;
        self.journal.remove_reader(&reader_name(id))?;
        self.metrics.remove(id);
        tracing::info!(drain = %id, "drain removed");
        Ok(())
    }

    /// Status of every drain, sorted by id.
    pub fn list(&self) -> Vec<DrainStatus> {
        let drains = self.lock();
        let mut out: Vec<_> = drains.values().map(|r| self.status_of(r)).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn status_of(&self, r: &Running) -> DrainStatus {
        let last = self.journal.stats().last_id;
        let committed = self
            .journal
            .cursors()
            .get(&reader_name(&r.config.id))
            .copied()
            .unwrap_or(last);
        let lag = last.saturating_sub(committed);
        r.stats.lag.set(lag as i64);
        DrainStatus {
            id: r.config.id.clone(),
            app: r.config.app.clone(),
            url: r.config.sink.display_url(),
            delivered: r.stats.delivered.get(),
            failed: r.stats.failed.get(),
            dropped: r.stats.dropped.get(),
            lag,
            last_error: r.stats.last_error(),
        }
    }

    /// Stops every drain and waits for their tasks; uncommitted batches are replayed on
    /// the next start.
    pub async fn shutdown(&self) {
        let all: Vec<Running> = self.lock().drain().map(|(_, r)| r).collect();
        for r in &all {
            r.cancel.cancel();
        }
        for r in all {
            let _ = r.task.await;
        }
    }
}

/// A batch ready to send and the journal position it ends at.
struct Collected {
    lines: Vec<LogLine>,
    bytes: usize,
    last_id: u64,
}

/// The marker line that stands for `count` dropped lines ending at `through_id`.
pub fn drop_marker(drain: &str, app: Option<&str>, count: u64, through_id: u64) -> LogLine {
    LogLine {
        id: through_id,
        app: app.unwrap_or("paas").into(),
        process_type: Some("drain".into()),
        job: Some(drain.into()),
        host: None,
        stream: Stream::Unknown,
        timestamp_ns: chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0),
        message: format!(
            "Error L10 (output buffer overflow): {count} messages dropped since last report"
        ),
    }
}

struct Runner {
    id: String,
    app: Option<String>,
    limits: BatchLimits,
    reader: JournalReader,
    sink: Sink,
    stats: Arc<DrainStats>,
    dead_letter: DeadLetter,
    journal: Journal,
    backoff: Backoff,
    cancel: CancellationToken,
}

impl Runner {
    async fn run(mut self) {
        loop {
            let Some(batch) = self.collect().await else {
                return;
            };
            if !batch.lines.is_empty() && !self.deliver(batch.lines).await {
                return;
            }
            if let Err(e) = self.reader.commit(batch.last_id).await {
                tracing::error!(drain = %self.id, error = %e, "drain: cursor commit failed; lines will be sent again after a restart");
                self.stats.set_error(format!("cursor commit: {e}"));
            }
            self.update_lag();
        }
    }

    fn update_lag(&self) {
        let last = self.journal.stats().last_id;
        self.stats
            .lag
            .set(last.saturating_sub(self.reader.committed()) as i64);
    }

    /// Adds what the journal returned to `c`; false when the batch must be sent now.
    fn absorb(&self, c: &mut Collected, read: ReadBatch) {
        match read {
            ReadBatch::Lines(lines) => {
                for line in lines {
                    c.last_id = line.id;
                    if self.app.as_deref().is_none_or(|a| a == line.app) {
                        c.bytes += line.message.len() + line.app.len() + 96;
                        c.lines.push(line);
                    }
                }
            }
            ReadBatch::Dropped { count, through_id } => {
                tracing::warn!(drain = %self.id, count, through_id, "drain: journal dropped lines before delivery");
                self.stats.dropped.inc_by(count);
                c.last_id = through_id;
                c.lines.push(drop_marker(
                    &self.id,
                    self.app.as_deref(),
                    count,
                    through_id,
                ));
            }
        }
    }

    /// Waits for lines, then gathers more until a limit or the batch age is reached.
    /// `None` when cancelled.
    async fn collect(&mut self) -> Option<Collected> {
        let mut c = Collected {
            lines: Vec::new(),
            bytes: 0,
            last_id: self.reader.committed(),
        };
        let mut attempt = 0;
        let first = loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                r = self.reader.next_batch(self.limits.max_lines) => match r {
                    Ok(b) => break b,
                    Err(e) => {
                        tracing::error!(drain = %self.id, error = %e, "drain: journal read failed");
                        self.stats.set_error(format!("journal read: {e}"));
                        if !self.pause(attempt).await { return None; }
                        attempt += 1;
                    }
                }
            }
        };
        self.absorb(&mut c, first);
        let deadline = tokio::time::Instant::now() + self.limits.max_age;
        while c.bytes < self.limits.max_bytes && c.lines.len() < self.limits.max_lines {
            let room = self.limits.max_lines - c.lines.len();
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                r = tokio::time::timeout_at(deadline, self.reader.next_batch(room)) => match r {
                    Err(_elapsed) => break,
                    Ok(Ok(b)) => self.absorb(&mut c, b),
                    Ok(Err(e)) => {
                        tracing::error!(drain = %self.id, error = %e, "drain: journal read failed");
                        self.stats.set_error(format!("journal read: {e}"));
                        break;
                    }
                }
            }
        }
        Some(c)
    }

    /// Sleeps before retry `attempt`; false when cancelled.
    async fn pause(&self, attempt: u32) -> bool {
        let delay = self.backoff.delay(attempt, rand::random::<f64>());
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Counts and records lines the sink refused for good.
    async fn dead_letter(&self, dead: &[DeadItem]) {
        if dead.is_empty() {
            return;
        }
        self.stats.failed.inc_by(dead.len() as u64);
        let first = &dead[0];
        let msg = format!(
            "{} lines refused (first: status {}: {}); see {}",
            dead.len(),
            first.status,
            first.error,
            self.dead_letter.path().display()
        );
        tracing::warn!(drain = %self.id, "drain: {msg}");
        self.stats.set_error(msg);
        if let Err(e) = self.dead_letter.write(dead).await {
            tracing::error!(drain = %self.id, error = %e, "drain: could not write dead-letter file");
        }
    }

    /// Sends until every line is delivered or dead-lettered; false when cancelled.
    ///
    /// Lines go in requests of at most `chunk` lines (the whole batch unless the sink
    /// said 413); lines the sink asks to retry go back to the front of the queue.
    async fn deliver(&mut self, lines: Vec<LogLine>) -> bool {
        let mut pending = lines;
        let mut chunk = pending.len();
        let mut attempt = 0;
        while !pending.is_empty() {
            let n = chunk.min(pending.len());
            let sent = tokio::select! {
                _ = self.cancel.cancelled() => return false,
                r = self.sink.send(&pending[..n]) => r,
            };
            let reason = match sent {
                Ok(out) => {
                    self.stats.delivered.inc_by(out.delivered);
                    self.dead_letter(&out.dead).await;
                    let rest = pending.split_off(n);
                    if out.retry.is_empty() {
                        pending = rest;
                        attempt = 0;
                        continue;
                    }
                    let k = out.retry.len();
                    pending = out.retry;
                    pending.extend(rest);
                    out.retry_reason.unwrap_or(RetryReason::Items(k))
                }
                Err(reason) => match resend(reason, n) {
                    Resend::Split { size } => {
                        tracing::info!(drain = %self.id, lines = size, "drain: sink says request too large, splitting");
                        chunk = size;
                        continue;
                    }
                    Resend::DeadLetter(status) => {
                        let rest = pending.split_off(n);
                        let dead: Vec<DeadItem> = pending
                            .into_iter()
                            .map(|line| DeadItem {
                                line,
                                status,
                                error: "line too large for the sink".into(),
                            })
                            .collect();
                        self.dead_letter(&dead).await;
                        pending = rest;
                        continue;
                    }
                    Resend::Wait(reason) => reason,
                },
            };
            tracing::warn!(drain = %self.id, attempt, lines = pending.len(), %reason, "drain: send failed, will retry");
            self.stats.set_error(reason.to_string());
            self.update_lag();
            if !self.pause(attempt).await {
                return false;
            }
            attempt = attempt.saturating_add(1);
        }
        true
    }
}
