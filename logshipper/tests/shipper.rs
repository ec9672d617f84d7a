//! The host agent's shipper against a real aggregator input (syslog over TCP on
//! 127.0.0.1): output of a real child process, an aggregator restart (journal and store
//! reopened from disk, as after a process restart) while lines flow, and a shipper
//! restart with lines still spooled. Lines are counted by their unique message text on
//! the aggregator side: the shipper replays, the aggregator drops the replays, so every
//! line is in the journal and the store exactly once.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use paas_logshipper::aggregator::Aggregator;
use paas_logshipper::drain::retry::Backoff;
use paas_logshipper::ingest::{Ingest, IngestConfig};
use paas_logshipper::journal::{Journal, JournalConfig, JournalReader, ReadBatch};
use paas_logshipper::metrics::IngestMetrics;
use paas_logshipper::shipper::{JobSource, Shipper, ShipperConfig};
use paas_logshipper::store::{Filter, Store, StoreConfig};
use paas_logshipper::{LogLine, Stream};
use prometheus_client::registry::Registry;

/// A receiving aggregator whose syslog input can be stopped and restarted on one port.
struct Aggregatord {
    dir: std::path::PathBuf,
    ingest: Option<Ingest>,
    /// The accept path and the store's journal reader while serving.
    serving: Option<(Aggregator, JournalReader)>,
    journal: Journal,
    store: Arc<Store>,
    config: IngestConfig,
    /// Kept across restarts, so counters add up over the whole test.
    metrics: IngestMetrics,
}

fn open_parts(dir: &std::path::Path) -> (Journal, Arc<Store>) {
    let journal = Journal::open(dir.join("journal"), JournalConfig::default()).unwrap();
    let mut store = StoreConfig::new(dir.join("store"));
    store.lines_per_app = 100_000;
    (journal, Arc::new(Store::open(store).unwrap()))
}

impl Aggregatord {
    /// Starts the aggregator. The `check` reader is created before any line arrives, so
    /// opening it again later reads everything from the first line.
    async fn start(dir: &std::path::Path) -> (Aggregatord, JournalReader) {
        let (journal, store) = open_parts(dir);
        let reader = journal.reader("check").unwrap();
        let mut a = Aggregatord {
            dir: dir.to_path_buf(),
            ingest: None,
            serving: None,
            journal,
            store,
            config: IngestConfig {
                syslog_addr: Some("127.0.0.1:0".parse().unwrap()),
                ..IngestConfig::default()
            },
            metrics: IngestMetrics::register(&mut Registry::default()),
        };
        a.serve().await;
        (a, reader)
    }

    /// Starts again after [`Aggregatord::stop`], reopening the journal and the store from
    /// disk the way a restarted process does; returns a new `check` reader.
    async fn restart(&mut self, old_reader: JournalReader) -> JournalReader {
        drop(old_reader);
        (self.journal, self.store) = open_parts(&self.dir);
        let reader = self.journal.reader("check").unwrap();
        self.serve().await;
        reader
    }

    async fn serve(&mut self) {
        let agg = Aggregator::new(
            self.journal.clone(),
            Arc::clone(&self.store),
            self.metrics.clone(),
        );
        let (store_reader, _) = agg.recover_store().await.unwrap();
        let ingest = Ingest::start(self.config.clone(), agg.clone())
            .await
            .unwrap();
        self.config.syslog_addr = ingest.syslog_addr();
        self.ingest = Some(ingest);
        self.serving = Some((agg, store_reader));
    }

    async fn stop(&mut self) {
        if let Some(i) = self.ingest.take() {
            i.shutdown().await;
        }
        if let Some((agg, mut store_reader)) = self.serving.take() {
            agg.persist(&mut store_reader).await.unwrap();
        }
    }

    fn addr(&self) -> String {
        self.config.syslog_addr.unwrap().to_string()
    }
}

/// Reads the aggregator's journal until `expected` distinct messages arrived; returns
/// how often each message was seen.
async fn receive_all(
    reader: &mut JournalReader,
    expected: &HashSet<String>,
) -> HashMap<String, (usize, LogLine)> {
    let mut seen: HashMap<String, (usize, LogLine)> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !expected.iter().all(|m| seen.contains_key(m)) {
        let batch = tokio::time::timeout_at(deadline, reader.next_batch(5000))
            .await
            .unwrap_or_else(|_| {
                let missing = expected.iter().filter(|m| !seen.contains_key(*m)).count();
                panic!("{missing} of {} lines never arrived", expected.len())
            })
            .unwrap();
        let ReadBatch::Lines(lines) = batch else {
            panic!("unexpected {batch:?}")
        };
        for l in lines {
            seen.entry(l.message.clone()).or_insert((0, l)).0 += 1;
        }
    }
    seen
}

/// Every expected message is in the store's tail of app `shop` exactly once. The journal
/// takes a batch before the store does (`Aggregator::accept`), so a reader of the
/// journal can see the last lines a moment before the store has them: wait for them.
async fn assert_no_duplicates_in_store(store: &Store, expected: &HashSet<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let counts = loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for l in store.tail("shop", 200_000, &Filter::default()) {
            *counts.entry(l.message).or_default() += 1;
        }
        if expected.iter().all(|m| counts.contains_key(m))
            || tokio::time::Instant::now() >= deadline
        {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(dups.is_empty(), "duplicated in the store: {dups:?}");
    assert!(
        expected.iter().all(|m| counts.contains_key(m)),
        "lines missing in the store"
    );
}

fn config(spool: &std::path::Path, addr: String) -> ShipperConfig {
    let mut c = ShipperConfig::new(spool, addr);
    // The default window: an aggregator slowed by a busy machine still reads within it.
    c.confirm_after = Duration::from_secs(2);
    c.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(300),
    };
    c
}

fn source() -> JobSource {
    JobSource {
        app: "shop".into(),
        process_type: Some("web".into()),
        job: Some("abc123".into()),
        host: Some("host-7".into()),
    }
}

fn line(i: u64) -> LogLine {
    LogLine {
        id: 0,
        app: "shop".into(),
        process_type: Some("web".into()),
        job: Some("abc123".into()),
        host: Some("host-7".into()),
        stream: Stream::Stdout,
        timestamp_ns: 1_700_000_000_000_000_000 + i as i64 * 1000,
        message: format!("shipped line {i}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ships_a_child_process_output_with_job_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agg, mut reader) = Aggregatord::start(&dir.path().join("agg")).await;
    let shipper = Shipper::start(config(&dir.path().join("spool"), agg.addr())).unwrap();
    let mut child = tokio::process::Command::new("sh")
        .args([
            "-c",
            "i=0; while [ $i -lt 1500 ]; do echo \"out $i\"; echo \"err $i\" >&2; i=$((i+1)); done; printf 'no newline at end'",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let src = source();
    let (a, b) = tokio::join!(
        shipper.pipe(&src, Stream::Stdout, out),
        shipper.pipe(&src, Stream::Stderr, err)
    );
    assert_eq!((a.unwrap(), b.unwrap()), (1501, 1500));
    assert!(child.wait().await.unwrap().success());

    let mut expected: HashSet<String> = (0..1500)
        .flat_map(|i| [format!("out {i}"), format!("err {i}")])
        .collect();
    expected.insert("no newline at end".into());
    let seen = receive_all(&mut reader, &expected).await;
    for (msg, (count, l)) in &seen {
        assert_eq!(*count, 1, "{msg} duplicated without any failure");
        assert_eq!(l.app, "shop");
        assert_eq!(l.process_type.as_deref(), Some("web"));
        assert_eq!(l.job.as_deref(), Some("abc123"));
        assert_eq!(l.host.as_deref(), Some("host-7"));
        let want = if msg.starts_with("err") {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        assert_eq!(l.stream, want, "{msg}");
    }
    assert_eq!(seen.len(), expected.len());
    shipper.shutdown().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_restart_while_lines_flow_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agg, mut reader) = Aggregatord::start(&dir.path().join("agg")).await;
    let shipper = Shipper::start(config(&dir.path().join("spool"), agg.addr())).unwrap();
    let total = 20_000u64;
    for chunk in 0..40u64 {
        let mut lines: Vec<LogLine> = (chunk * 500..(chunk + 1) * 500).map(line).collect();
        shipper.ship(&mut lines).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        if chunk == 15 {
            agg.stop().await;
        }
        if chunk == 30 {
            reader = agg.restart(reader).await;
        }
    }
    let expected: HashSet<String> = (0..total).map(|i| format!("shipped line {i}")).collect();
    let seen = receive_all(&mut reader, &expected).await;
    let dups: usize = seen.values().map(|(c, _)| c - 1).sum();
    let status = shipper.status();
    let dropped = agg.metrics.duplicates.get();
    println!(
        "received {} distinct lines, {dups} duplicates in the journal, {dropped} replayed lines dropped, shipper {status:?}",
        seen.len()
    );
    assert_eq!(seen.len() as u64, total);
    assert_eq!(dups, 0, "replays reached the journal");
    assert!(
        dropped > 0,
        "the shipper replayed lines the aggregator already had"
    );
    assert_no_duplicates_in_store(&agg.store, &expected).await;
    assert!(status.reconnects >= 1, "{status:?}");
    assert!(status.last_error.is_some());
    assert_eq!(status.dropped, 0);
    shipper.shutdown().await;
    agg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_lines_survive_a_shipper_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut agg, mut reader) = Aggregatord::start(&dir.path().join("agg")).await;
    let addr = agg.addr();
    agg.stop().await;
    let spool = dir.path().join("spool");
    let shipper = Shipper::start(config(&spool, addr.clone())).unwrap();
    let mut lines: Vec<LogLine> = (0..1000).map(line).collect();
    assert_eq!(shipper.ship(&mut lines).unwrap(), 1000);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = shipper.status();
    assert_eq!(status.pending, 1000);
    assert_eq!(status.confirmed, 0);
    // Undelivered lines are fsynced within the spool's sync interval (1 s).
    for _ in 0..100 {
        if shipper.status().synced == 1000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shipper.status().synced, 1000, "spool not fsynced");
    shipper.shutdown().await;

    reader = agg.restart(reader).await;
    let shipper = Shipper::start(config(&spool, addr)).unwrap();
    let mut more: Vec<LogLine> = (1000..1200).map(line).collect();
    assert_eq!(shipper.ship(&mut more).unwrap(), 1200, "spool ids continue");
    let expected: HashSet<String> = (0..1200).map(|i| format!("shipped line {i}")).collect();
    let seen = receive_all(&mut reader, &expected).await;
    assert_eq!(seen.len(), 1200);
    assert!(
        seen.values().all(|(c, _)| *c == 1),
        "duplicates in the journal"
    );
    assert_no_duplicates_in_store(&agg.store, &expected).await;
    // Confirmation follows once the writes have aged on an open connection.
    for _ in 0..200 {
        if shipper.status().pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shipper.status().pending, 0);
    assert_eq!(shipper.status().confirmed, 1200);
    shipper.shutdown().await;
    agg.stop().await;
}
