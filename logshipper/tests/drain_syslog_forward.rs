//! Syslog (TCP and TLS) and Fluent Forward drains, received by a second aggregator's real
//! inputs on 127.0.0.1 (its journal is read back to check every field of every line).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use paas_logshipper::aggregator::Aggregator;
use paas_logshipper::drain::retry::Backoff;
use paas_logshipper::drain::{DrainFamilies, DrainManager, DrainSpec, DrainStatus};
use paas_logshipper::ingest::{Ingest, IngestConfig};
use paas_logshipper::journal::{Journal, JournalConfig, JournalReader, ReadBatch};
use paas_logshipper::metrics::{IngestMetrics, InputLabel};
use paas_logshipper::store::{Store, StoreConfig};
use paas_logshipper::{LogLine, Stream};
use prometheus_client::registry::Registry;

/// The receiving aggregator: its inputs and a reader over its journal.
struct Downstream {
    ingest: Option<Ingest>,
    journal: Journal,
    store: Arc<Store>,
    config: IngestConfig,
    metrics: IngestMetrics,
}

impl Downstream {
    async fn start(dir: &std::path::Path, config: IngestConfig) -> (Downstream, JournalReader) {
        let journal = Journal::open(dir.join("journal"), JournalConfig::default()).unwrap();
        let reader = journal.reader("check").unwrap();
        let store = Arc::new(Store::open(StoreConfig::new(dir.join("store"))).unwrap());
        let mut d = Downstream {
            ingest: None,
            journal,
            store,
            config,
            metrics: IngestMetrics::register(&mut Registry::default()),
        };
        d.restart().await;
        (d, reader)
    }

    async fn restart(&mut self) {
        let aggregator = Aggregator::new(
            self.journal.clone(),
            Arc::clone(&self.store),
            self.metrics.clone(),
        );
        let ingest = Ingest::start(self.config.clone(), aggregator)
            .await
            .unwrap();
        // Later restarts listen on the same ports.
        self.config.syslog_addr = ingest.syslog_addr();
        self.config.forward_addr = ingest.forward_addr();
        self.ingest = Some(ingest);
    }

    async fn stop(&mut self) {
        if let Some(i) = self.ingest.take() {
            i.shutdown().await;
        }
    }

    /// Syslog connections accepted so far.
    fn syslog_connections(&self) -> u64 {
        self.metrics
            .connections
            .get_or_create(&InputLabel {
                input: "syslog".into(),
            })
            .get()
    }

    fn syslog(&self) -> SocketAddr {
        self.config.syslog_addr.unwrap()
    }

    fn forward(&self) -> SocketAddr {
        self.config.forward_addr.unwrap()
    }
}

async fn receive(reader: &mut JournalReader, n: usize) -> Vec<LogLine> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(60), reader.next_batch(n - out.len()))
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} lines received", out.len()))
            .unwrap()
        {
            ReadBatch::Lines(l) => out.extend(l),
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

fn line(i: u64) -> LogLine {
    LogLine {
        id: 0,
        app: if i.is_multiple_of(2) { "shop" } else { "blog" }.into(),
        process_type: Some("worker".into()),
        job: Some(format!("j{}", i % 5).into()),
        host: Some("host-a".into()),
        stream: if i.is_multiple_of(3) {
            Stream::Stderr
        } else {
            Stream::Stdout
        },
        timestamp_ns: 1_700_000_000_000_000_000 + (i as i64) * 1_000,
        message: format!("message {i} with ünïcode and  spaces"),
    }
}

/// Compares what arrived downstream with what was sent, field by field.
fn assert_same(sent: &[LogLine], got: &[LogLine]) {
    assert_eq!(sent.len(), got.len());
    for (s, g) in sent.iter().zip(got) {
        assert_eq!(
            (
                &g.app,
                &g.process_type,
                &g.job,
                &g.host,
                g.stream,
                &g.message
            ),
            (
                &s.app,
                &s.process_type,
                &s.job,
                &s.host,
                s.stream,
                &s.message
            ),
        );
        // Syslog carries microseconds; forward EventTime carries nanoseconds.
        assert_eq!(g.timestamp_ns / 1_000, s.timestamp_ns / 1_000);
    }
}

async fn wait_for(
    manager: &DrainManager,
    what: &str,
    f: impl Fn(&DrainStatus) -> bool,
) -> DrainStatus {
    for _ in 0..1200 {
        let s = manager.list().pop().unwrap();
        if f(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}: {:?}", manager.list());
}

fn manager(journal: &Journal, dir: &std::path::Path) -> DrainManager {
    DrainManager::new(journal.clone(), dir.join("dead"), DrainFamilies::default()).with_backoff(
        Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
    )
}

fn listeners() -> IngestConfig {
    IngestConfig {
        syslog_addr: Some("127.0.0.1:0".parse().unwrap()),
        forward_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..IngestConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_tcp_drain_delivers_every_field_and_reconnects_after_receiver_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut down, mut received) = Downstream::start(&dir.path().join("down"), listeners()).await;
    let journal = Journal::open(dir.path().join("up"), JournalConfig::default()).unwrap();
    let m = manager(&journal, dir.path());
    m.add(&DrainSpec {
        id: "sys".into(),
        url: format!("syslog+tcp://{}", down.syslog()),
        ..DrainSpec::default()
    })
    .unwrap();

    let mut sent: Vec<LogLine> = (0..3000).map(line).collect();
    journal.append(&mut sent).unwrap();
    let got = receive(&mut received, 3000).await;
    assert_same(&sent, &got);
    wait_for(&m, "commit", |s| s.lag == 0 && s.delivered == 3000).await;

    // The receiver restarts; lines appended meanwhile arrive on a new connection.
    down.stop().await;
    let mut more: Vec<LogLine> = (3000..4000).map(line).collect();
    journal.append(&mut more).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    down.restart().await;
    let got = receive(&mut received, 1000).await;
    assert_same(&more, &got);
    m.shutdown().await;
    down.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_tls_drain_verifies_the_receiver_with_the_given_roots() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let mut config = listeners();
    config.syslog_tls = Some(paas_logshipper::tls::server_config(&cert_path, &key_path).unwrap());
    let (mut down, mut received) = Downstream::start(&dir.path().join("down"), config).await;
    let journal = Journal::open(dir.path().join("up"), JournalConfig::default()).unwrap();
    let m = manager(&journal, dir.path());
    m.add(&DrainSpec {
        id: "tls".into(),
        url: format!("syslog+tls://localhost:{}", down.syslog().port()),
        ca_file: Some(cert_path.display().to_string()),
        ..DrainSpec::default()
    })
    .unwrap();
    // A drain that does not trust the receiver's certificate delivers nothing.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let other_path = dir.path().join("other.pem");
    std::fs::write(&other_path, other.cert.pem()).unwrap();
    m.add(&DrainSpec {
        id: "untrusted".into(),
        url: format!("syslog+tls://localhost:{}", down.syslog().port()),
        ca_file: Some(other_path.display().to_string()),
        ..DrainSpec::default()
    })
    .unwrap();

    let mut sent: Vec<LogLine> = (0..500).map(line).collect();
    journal.append(&mut sent).unwrap();
    let got = receive(&mut received, 500).await;
    assert_same(&sent, &got);
    let untrusted = loop {
        let s = m.list();
        let u = s.iter().find(|d| d.id == "untrusted").unwrap().clone();
        if u.last_error.is_some() {
            break u;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(untrusted.delivered, 0);
    assert_eq!(untrusted.lag, 500);
    assert!(untrusted
        .last_error
        .unwrap()
        .message
        .contains("unreachable"));
    m.remove("untrusted").await.unwrap();

    // Later batches reuse the trusted drain's connection (session tickets the server
    // sends after the handshake must not look like a closed connection).
    wait_for(&m, "commit", |s| s.lag == 0).await;
    let connections = down.syslog_connections();
    let mut later = Vec::new();
    for round in 0..5u64 {
        let mut batch: Vec<LogLine> = (500 + round * 10..510 + round * 10).map(line).collect();
        journal.append(&mut batch).unwrap();
        later.extend(batch);
        wait_for(&m, "commit", |s| s.lag == 0).await;
    }
    let got = receive(&mut received, 50).await;
    assert_same(&later, &got);
    assert_eq!(down.syslog_connections(), connections);
    m.shutdown().await;
    down.stop().await;
    // Nothing beyond the trusted lines reached the receiver.
    assert_eq!(down.journal.stats().last_id, 550);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_drain_waits_for_acks_and_retries_while_receiver_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let (mut down, mut received) = Downstream::start(&dir.path().join("down"), listeners()).await;
    let journal = Journal::open(dir.path().join("up"), JournalConfig::default()).unwrap();
    let m = manager(&journal, dir.path());
    m.add(&DrainSpec {
        id: "fwd".into(),
        url: format!("forward://{}", down.forward()),
        ..DrainSpec::default()
    })
    .unwrap();
    let mut sent: Vec<LogLine> = (0..2000).map(line).collect();
    journal.append(&mut sent).unwrap();
    let mut got = receive(&mut received, 2000).await;
    // Forward groups a batch by tag (app.type), so order holds per app only.
    got.sort_by_key(|l| l.timestamp_ns);
    assert_same(&sent, &got);
    wait_for(&m, "acks", |s| s.lag == 0 && s.delivered == 2000).await;

    down.stop().await;
    let mut more: Vec<LogLine> = (2000..2600).map(line).collect();
    journal.append(&mut more).unwrap();
    let s = wait_for(&m, "an error while down", |s| s.last_error.is_some()).await;
    assert_eq!(s.lag, 600);
    down.restart().await;
    let mut got = receive(&mut received, 600).await;
    got.sort_by_key(|l| l.timestamp_ns);
    assert_same(&more, &got);
    wait_for(&m, "acks after restart", |s| {
        s.lag == 0 && s.delivered == 2600
    })
    .await;
    m.shutdown().await;
    down.stop().await;
}
