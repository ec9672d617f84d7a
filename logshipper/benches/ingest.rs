//! Ingest throughput: syslog (octet counting) and Fluent Forward (PackedForward) into the
//! full accept path (parse, journal, store), against a raw TCP read baseline measured in
//! the same run with the same clients and bytes.
//!
//! Scenarios: `syslog` (plain RFC 5424 lines), `syslog+paas id` (the same with the
//! shipper's `[paas id="N" spool="S"]`, so replay detection runs for every line),
//! `syslog+id mTLS` (the same over TLS with client certificates, as `paas up` takes the
//! shipper's lines), `forward` (PackedForward) and `forward+shared key` (the same after
//! the HELO/PING/PONG handshake, as `paas up` requires). The authenticated rows are
//! printed against the same baselines and against their plain row (`vs plain`).
//!
//! Each scenario opens `CONNECTIONS` client connections on 127.0.0.1; every connection
//! sends `MIB_PER_CONNECTION` MiB of pre-encoded 200-byte lines. A scenario's time runs
//! from the first write until the server has accepted every line (or, for the baseline,
//! read every byte). Prints lines/s, MiB/s of wire bytes and the ratio to the baseline,
//! then, on one core and without sockets, decoding alone, the journal append alone, the store
//! push alone and the store flush alone, to show where the time of the full path goes. `cpu-s` is the CPU
//! time the whole process (server and clients) used, and MiB/cpu-s the bytes per CPU
//! second: on a machine shared with other work it varies far less than wall-clock rates.
//! `cpu vs raw` is the MiB/cpu-s ratio to the raw baseline.
//!
//! Three baselines per input, all with the same clients and bytes (each run
//! as often as it takes to move `BASELINE_BYTES` and summed, so their CPU time is
//! measurable):
//! - `raw tcp read`: the server reads into a buffer and discards it (a memcpy from the
//!   socket; the baseline the throughput target is stated against).
//! - `raw + framing`: the server also splits the stream into frames (RFC 6587 octet
//!   counting or the MessagePack value length) and discards them. This is what a
//!   TCP-to-blackhole pipeline does (Vector's and Fluent Bit's published TCP->blackhole
//!   figures), so it is the fairer comparison for a parse+journal+store path; it is
//!   printed beside the first, not instead of it.
//! - `raw + file write` (syslog only, run last): the server writes every byte it reads to
//!   a file and fsyncs it at the end (no parsing). This is the floor for any pipeline
//!   that persists what it receives once; its ratio to `raw tcp read` bounds what such a
//!   pipeline can reach. On the 2-core machine this project is measured on, loopback
//!   TCP moves about 5 GiB/s; writing each byte once to the page cache, without the
//!   fsync, already falls to 44-49% of that, and with it the disk sets the pace (about
//!   430 MiB/s there). So "50% of raw" is out of reach for any ingest that journals to
//!   disk; the last row gives the full path against this floor.
//!
//! The full path persists every second while lines flow, as the service does (journal
//! fsync, store flush: `Aggregator::persist`), and its time runs until a final persist
//! after the last line, so the disk work of both is counted.
//!
//! Run: `cargo bench -p paas-logshipper --bench ingest` (or `scripts/bench`).
//! Environment: `BENCH_CONNECTIONS` (default 4), `BENCH_MIB` per connection (default 256:
//! runs of about two seconds, so the once-a-second persist overlaps the flow as it does
//! in steady state instead of being one fsync at the end).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paas_logshipper::aggregator::Aggregator;
use paas_logshipper::ingest::{Ingest, IngestConfig};
use paas_logshipper::journal::{Journal, JournalConfig};
use paas_logshipper::metrics::IngestMetrics;
use paas_logshipper::store::{Store, StoreConfig};
use prometheus_client::registry::Registry;
use rmpv::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes of each line's message text.
const LINE_BYTES: usize = 200;
/// How often the full path persists (journal fsync, store flush), as `paas up` does.
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// Lines per PackedForward message.
const FORWARD_BATCH: usize = 1000;

/// Wire bytes and line count one connection sends.
struct Payload {
    bytes: Vec<u8>,
    lines: u64,
}

fn message_text(conn: usize, i: u64) -> String {
    let mut s = format!("conn {conn} line {i} ");
    while s.len() < LINE_BYTES {
        s.push_str("lorem ipsum dolor sit amet ");
    }
    s.truncate(LINE_BYTES);
    s
}

/// Octet-counted RFC 5424 lines; with `shipped`, each carries `[paas id="N" spool="S"]`
/// as the host agent's shipper sends them (HOSTNAME differs per connection), so the
/// duplicate marks are consulted and moved for every line.
fn syslog_payload(conn: usize, target: usize, shipped: bool) -> Payload {
    let mut bytes = Vec::with_capacity(target + 1024);
    let mut lines = 0;
    while bytes.len() < target {
        let sd = if shipped {
            format!(
                "[paas id=\"{}\" spool=\"00000000000000a{conn}\"]",
                lines + 1
            )
        } else {
            "-".to_string()
        };
        let msg = format!(
            "<14>1 2026-01-01T00:00:00.000000Z host{conn} bench{conn} web.{conn} stdout {sd} {}",
            message_text(conn, lines)
        );
        bytes.extend_from_slice(format!("{} ", msg.len()).as_bytes());
        bytes.extend_from_slice(msg.as_bytes());
        lines += 1;
    }
    Payload { bytes, lines }
}

fn forward_payload(conn: usize, target: usize) -> Payload {
    let mut bytes = Vec::with_capacity(target + 1024 * 1024);
    let mut lines = 0;
    while bytes.len() < target {
        let mut entries = Vec::new();
        for _ in 0..FORWARD_BATCH {
            let mut time = 1_767_225_600u32.to_be_bytes().to_vec();
            time.extend_from_slice(&(lines as u32).to_be_bytes());
            let entry = Value::Array(vec![
                Value::Ext(0, time),
                Value::Map(vec![
                    (Value::from("log"), Value::from(message_text(conn, lines))),
                    (Value::from("stream"), Value::from("stdout")),
                ]),
            ]);
            rmpv::encode::write_value(&mut entries, &entry).unwrap();
            lines += 1;
        }
        let msg = Value::Array(vec![
            Value::from(format!("bench{conn}.web")),
            Value::Binary(entries),
        ]);
        rmpv::encode::write_value(&mut bytes, &msg).unwrap();
    }
    Payload { bytes, lines }
}

/// The shared key of the `forward+shared key` scenario.
const SHARED_KEY: &str = "bench-shared-key";

/// How the clients authenticate, as `paas up` requires it.
#[derive(Clone, Default)]
struct ClientAuth {
    /// TLS with a client certificate (syslog).
    tls: Option<tokio_rustls::TlsConnector>,
    /// The forward handshake with this key.
    shared_key: Option<&'static str>,
}

/// A cluster CA with the aggregator's certificate and a client identity in `dir`, as
/// `paas up` makes them.
fn make_pki(dir: &std::path::Path) {
    use paas_logshipper::tls as t;
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca.self_signed(&ca_key).unwrap();
    let mut server = CertificateParams::new(vec![t::SERVER_NAME.to_string()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().unwrap();
    let server = server.signed_by(&server_key, &ca, &ca_key).unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    let client = client.signed_by(&client_key, &ca, &ca_key).unwrap();
    for (name, text) in [
        (t::CA_FILE, ca.pem()),
        (t::SERVER_CERT_FILE, server.pem()),
        (t::SERVER_KEY_FILE, server_key.serialize_pem()),
        (t::CLIENT_CERT_FILE, client.pem()),
        (t::CLIENT_KEY_FILE, client_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// The client side of the forward handshake: reads HELO, sends PING, reads PONG.
async fn forward_handshake(s: &mut TcpStream, key: &str) {
    let helo = read_value(s).await;
    let nonce = helo[1]["nonce"].as_slice().unwrap().to_vec();
    let (hostname, salt) = (b"bench-client", b"0123456789abcdef");
    let digest = paas_logshipper::forward::handshake::digest(salt, hostname, &nonce, key);
    let ping = Value::Array(vec![
        Value::from("PING"),
        Value::from("bench-client"),
        Value::Binary(salt.to_vec()),
        Value::from(digest),
        Value::from(""),
        Value::from(""),
    ]);
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &ping).unwrap();
    s.write_all(&bytes).await.unwrap();
    let pong = read_value(s).await;
    assert_eq!(pong[1], Value::from(true), "PONG refused: {pong}");
}

/// Reads one small MessagePack value (a handshake message) from `s`.
async fn read_value(s: &mut TcpStream) -> Value {
    let mut buf = Vec::new();
    loop {
        if let Ok(v) = rmpv::decode::read_value(&mut buf.as_slice()) {
            return v;
        }
        let mut more = [0u8; 256];
        let n = s.read(&mut more).await.unwrap();
        assert!(n > 0, "connection closed during the handshake");
        buf.extend_from_slice(&more[..n]);
    }
}

/// Writes `bytes`, closes the write side and waits until the server closes.
async fn send_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S, bytes: &[u8]) {
    for chunk in bytes.chunks(256 * 1024) {
        s.write_all(chunk).await.unwrap();
    }
    s.shutdown().await.unwrap();
    // Keep the connection until the server has read everything.
    let mut sink = [0u8; 64];
    let _ = s.read(&mut sink).await;
}

/// Sends every payload on its own connection; returns when all are written.
async fn send_all(addr: SocketAddr, payloads: Arc<Vec<Payload>>, auth: ClientAuth) {
    let mut tasks = Vec::new();
    for i in 0..payloads.len() {
        let payloads = Arc::clone(&payloads);
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            if let Some(key) = auth.shared_key {
                forward_handshake(&mut s, key).await;
            }
            match &auth.tls {
                Some(tls) => {
                    let s = tls
                        .connect(paas_logshipper::tls::server_name(), s)
                        .await
                        .unwrap();
                    send_one(s, &payloads[i].bytes).await
                }
                None => send_one(s, &payloads[i].bytes).await,
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

struct Figures {
    name: &'static str,
    lines: u64,
    bytes: u64,
    secs: f64,
    /// CPU seconds the whole process used (server and clients), user + system.
    cpu_secs: f64,
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat`
/// (clock ticks of 1/100 s, the Linux default).
fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `fields[0]` is field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

impl Figures {
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.secs
    }
    fn mib_per_cpu_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.cpu_secs.max(0.01)
    }
    fn lines_s(&self) -> f64 {
        self.lines as f64 / self.secs
    }
}

/// What a baseline server does with the bytes it reads.
#[derive(Clone, Copy)]
enum Split {
    /// Nothing: read and discard.
    None,
    /// Split RFC 6587 octet-counted syslog frames.
    Syslog,
    /// Split MessagePack values (forward messages).
    Forward,
    /// Write every read to a file.
    Write,
}

/// Bytes a baseline moves in all, over as many runs as it takes: one run is far shorter
/// than the full path's, too short for the process CPU clock (1/100 s ticks) to give a
/// stable MiB/cpu-s.
const BASELINE_BYTES: u64 = 2 << 30;

/// A baseline over enough runs to move `BASELINE_BYTES`, summed.
async fn baseline(name: &'static str, split: Split, payloads: &Arc<Vec<Payload>>) -> Figures {
    let per_run: u64 = payloads.iter().map(|p| p.bytes.len() as u64).sum();
    let rounds = BASELINE_BYTES.div_ceil(per_run.max(1));
    let mut total = raw_baseline(name, split, Arc::clone(payloads)).await;
    for _ in 1..rounds {
        let f = raw_baseline(name, split, Arc::clone(payloads)).await;
        total.lines += f.lines;
        total.bytes += f.bytes;
        total.secs += f.secs;
        total.cpu_secs += f.cpu_secs;
    }
    total
}

/// Splits every complete frame at the start of `buf`; returns (bytes consumed, frames).
fn split_frames(buf: &[u8], split: Split) -> (usize, u64) {
    use paas_logshipper::{forward, syslog};
    let (mut pos, mut frames) = (0, 0);
    loop {
        let len = match split {
            Split::None | Split::Write => return (buf.len(), 0),
            Split::Syslog => {
                match syslog::frame::check(&buf[pos..], syslog::Framing::OctetCounted, 16 << 20)
                    .unwrap()
                {
                    syslog::Check::Frame { consumed, .. } => consumed,
                    syslog::Check::Incomplete => break,
                }
            }
            Split::Forward => match forward::frame::check(&buf[pos..], 16 << 20).unwrap() {
                forward::frame::Check::Complete(len) => len,
                forward::frame::Check::Incomplete => break,
            },
        };
        pos += len;
        frames += 1;
    }
    (pos, frames)
}

/// Baseline: the server reads and discards bytes, after splitting them into frames
/// when `split` says so.
async fn raw_baseline(name: &'static str, split: Split, payloads: Arc<Vec<Payload>>) -> Figures {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let total: u64 = payloads.iter().map(|p| p.bytes.len() as u64).sum();
    let read = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&read);
    let conns = payloads.len();
    let server = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let (mut s, _) = listener.accept().await.unwrap();
            let counter = Arc::clone(&counter);
            tasks.push(tokio::spawn(async move {
                let mut file = matches!(split, Split::Write)
                    .then(|| tempfile::tempfile().expect("temporary file"));
                let mut buf = vec![0u8; 256 * 1024];
                // buf[..filled] holds bytes not yet split into frames.
                let mut filled = 0;
                let mut frames = 0;
                loop {
                    if filled == buf.len() {
                        buf.resize(buf.len() * 2, 0);
                    }
                    let n = s.read(&mut buf[filled..]).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    if let Some(file) = &mut file {
                        use std::io::Write;
                        file.write_all(&buf[filled..filled + n]).unwrap();
                    }
                    filled += n;
                    let (consumed, count) = split_frames(&buf[..filled], split);
                    frames += count;
                    buf.copy_within(consumed..filled, 0);
                    filled -= consumed;
                }
                assert_eq!(filled, 0, "a partial frame at the end");
                if let Some(file) = &file {
                    file.sync_data().unwrap();
                }
                frames
            }));
        }
        let mut frames = 0;
        for t in tasks {
            frames += t.await.unwrap();
        }
        frames
    });
    let start = Instant::now();
    let cpu_start = process_cpu_secs();
    send_all(addr, Arc::clone(&payloads), ClientAuth::default()).await;
    let frames = server.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    let cpu_secs = process_cpu_secs() - cpu_start;
    assert_eq!(read.load(Ordering::Relaxed), total);
    if !matches!(split, Split::None | Split::Write) {
        assert!(frames > 0, "{name}: no frames split");
    }
    Figures {
        name,
        lines: payloads.iter().map(|p| p.lines).sum(),
        bytes: total,
        secs,
        cpu_secs,
    }
}

/// Full ingest of `payloads` on the syslog or forward input; with `auth`, the input
/// requires what `paas up`'s does (syslog: a client certificate; forward: the shared key)
/// and the clients present it.
async fn ingest(
    name: &'static str,
    forward: bool,
    auth: bool,
    payloads: Arc<Vec<Payload>>,
) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("journal"), JournalConfig::default()).unwrap();
    let store = Arc::new(Store::open(StoreConfig::new(dir.path().join("store"))).unwrap());
    let mut registry = Registry::default();
    let metrics = IngestMetrics::register(&mut registry);
    let input = if forward { "forward" } else { "syslog" };
    let (accepted, _) = metrics.input_counters(input);
    let aggregator = Aggregator::new(journal, store, metrics);
    let (store_reader, _) = aggregator.recover_store().await.unwrap();
    // Persist every second while lines flow, as the service does.
    let stop_persisting = tokio_util::sync::CancellationToken::new();
    let persister = tokio::spawn(aggregator.clone().persist_every(
        store_reader,
        PERSIST_INTERVAL,
        stop_persisting.clone(),
    ));
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = IngestConfig {
        syslog_addr: (!forward).then_some(local),
        forward_addr: forward.then_some(local),
        ..IngestConfig::default()
    };
    let mut client = ClientAuth::default();
    if auth && forward {
        config.shared_key = Some(paas_logshipper::forward::handshake::SharedKey {
            key: SHARED_KEY.into(),
            server_hostname: "bench".into(),
        });
        client.shared_key = Some(SHARED_KEY);
    } else if auth {
        let pki = dir.path().join("pki");
        std::fs::create_dir(&pki).unwrap();
        make_pki(&pki);
        config.syslog_tls = Some(paas_logshipper::tls::mutual_server_config(&pki).unwrap());
        client.tls = Some(tokio_rustls::TlsConnector::from(
            paas_logshipper::tls::client_config(&pki).unwrap(),
        ));
    }
    let ingest = Ingest::start(config, aggregator).await.unwrap();
    let addr = if forward {
        ingest.forward_addr().unwrap()
    } else {
        ingest.syslog_addr().unwrap()
    };
    let total_lines: u64 = payloads.iter().map(|p| p.lines).sum();
    let total_bytes: u64 = payloads.iter().map(|p| p.bytes.len() as u64).sum();
    let start = Instant::now();
    let cpu_start = process_cpu_secs();
    let sender = tokio::spawn(send_all(addr, Arc::clone(&payloads), client));
    while accepted.get() < total_lines {
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{name}: only {} of {total_lines} lines accepted",
            accepted.get()
        );
    }
    stop_persisting.cancel();
    persister.await.unwrap().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let cpu_secs = process_cpu_secs() - cpu_start;
    sender.await.unwrap();
    ingest.shutdown().await;
    Figures {
        name,
        lines: total_lines,
        bytes: total_bytes,
        secs,
        cpu_secs,
    }
}

/// Decoding alone, on one core, over the first connection's payload: where the time of
/// the full path goes (the rest is journal, store and I/O).
fn decode_only(name: &'static str, forward: bool, payload: &Payload) -> Figures {
    let start = Instant::now();
    let cpu_start = process_cpu_secs();
    let mut lines = Vec::with_capacity(4096);
    let mut decoded = 0u64;
    let mut rest: &[u8] = &payload.bytes;
    if forward {
        while let Ok(paas_logshipper::forward::frame::Check::Complete(len)) =
            paas_logshipper::forward::frame::check(rest, 16 << 20)
        {
            let limits = paas_logshipper::forward::Limits {
                max_line: 64 << 10,
                max_inflated: 64 << 20,
            };
            paas_logshipper::forward::decode(&rest[..len], &limits, &mut lines).unwrap();
            decoded += lines.len() as u64;
            lines.clear();
            rest = &rest[len..];
        }
    } else {
        let mut framing = None;
        let mut batch = paas_logshipper::aggregator::Batch::default();
        while !rest.is_empty() {
            let take = rest.len().min(256 * 1024);
            let scan = paas_logshipper::ingest::scan_syslog(
                &rest[..take],
                &mut framing,
                16 << 20,
                0,
                &mut batch,
            );
            decoded += batch.len() as u64;
            batch.take();
            rest = &rest[scan.consumed..];
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_secs = process_cpu_secs() - cpu_start;
    assert_eq!(decoded, payload.lines);
    Figures {
        name,
        lines: decoded,
        bytes: payload.bytes.len() as u64,
        secs,
        cpu_secs,
    }
}

/// The journal append, the store push (memory) and the store flush (disk) alone, on one
/// core, over pre-decoded batches of the first syslog connection's lines (batches as one
/// 256 KiB read yields).
fn accept_parts(payload: &Payload) -> [Figures; 3] {
    let mut batches = Vec::new();
    let mut rest: &[u8] = &payload.bytes;
    let mut framing = None;
    while !rest.is_empty() {
        let take = rest.len().min(256 * 1024);
        let mut batch = paas_logshipper::aggregator::Batch::default();
        let scan = paas_logshipper::ingest::scan_syslog(
            &rest[..take],
            &mut framing,
            16 << 20,
            0,
            &mut batch,
        );
        batches.push(batch.lines);
        rest = &rest[scan.consumed..];
    }
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path().join("journal"), JournalConfig::default()).unwrap();
    let store = Store::open(StoreConfig::new(dir.path().join("store"))).unwrap();
    let mut for_journal = batches.clone();
    let start = Instant::now();
    let cpu_start = process_cpu_secs();
    for batch in &mut for_journal {
        journal.append(batch).unwrap();
    }
    let journal_secs = start.elapsed().as_secs_f64();
    let journal_cpu = process_cpu_secs() - cpu_start;
    let start = Instant::now();
    let cpu_start = process_cpu_secs();
    for batch in batches {
        assert!(store.push(batch).is_empty());
    }
    let store_secs = start.elapsed().as_secs_f64();
    let store_cpu = process_cpu_secs() - cpu_start;
    let start = Instant::now();
    let cpu_start = process_cpu_secs();
    assert!(store.flush().is_empty());
    let flush_secs = start.elapsed().as_secs_f64();
    let flush_cpu = process_cpu_secs() - cpu_start;
    let fig = |name, secs, cpu_secs| Figures {
        name,
        lines: payload.lines,
        bytes: payload.bytes.len() as u64,
        secs,
        cpu_secs,
    };
    [
        fig("journal append", journal_secs, journal_cpu),
        fig("store push", store_secs, store_cpu),
        fig("store flush", flush_secs, flush_cpu),
    ]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn print(f: &Figures, baseline: Option<&Figures>) {
    print_row(f.name, f, baseline);
}

fn print_row(label: &str, f: &Figures, baseline: Option<&Figures>) {
    let ratio = baseline
        .map(|b| format!("{:>7.1}%", 100.0 * f.mib_s() / b.mib_s()))
        .unwrap_or_else(|| "       -".into());
    let cpu_ratio = baseline
        .map(|b| format!("{:>10.1}%", 100.0 * f.mib_per_cpu_s() / b.mib_per_cpu_s()))
        .unwrap_or_else(|| "          -".into());
    println!(
        "{:<19} {:>10} {:>8.2} {:>12.0} {:>9.1} {} {:>8.2} {:>10.1} {}",
        label,
        f.lines,
        f.secs,
        f.lines_s(),
        f.mib_s(),
        ratio,
        f.cpu_secs,
        f.mib_per_cpu_s(),
        cpu_ratio
    );
}

/// Prints a scenario against both baselines of its input.
fn print_against(f: &Figures, raw: &Figures, framed: &Figures) {
    print(f, Some(raw));
    print_row(&format!("  vs {}", framed.name), f, Some(framed));
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let conns = env_usize("BENCH_CONNECTIONS", 4);
    let mib = env_usize("BENCH_MIB", 256);
    let target = mib * 1024 * 1024;
    let syslog: Arc<Vec<Payload>> = Arc::new(
        (0..conns)
            .map(|c| syslog_payload(c, target, false))
            .collect(),
    );
    let shipped: Arc<Vec<Payload>> = Arc::new(
        (0..conns)
            .map(|c| syslog_payload(c, target, true))
            .collect(),
    );
    let forward: Arc<Vec<Payload>> =
        Arc::new((0..conns).map(|c| forward_payload(c, target)).collect());
    println!(
        "ingest bench: {conns} connections x {mib} MiB, {LINE_BYTES}-byte lines, release={}",
        !cfg!(debug_assertions)
    );
    println!(
        "{:<19} {:>10} {:>8} {:>12} {:>9} {:>8} {:>8} {:>10} {:>11}",
        "scenario",
        "lines",
        "secs",
        "lines/s",
        "MiB/s",
        "vs raw",
        "cpu-s",
        "MiB/cpu-s",
        "cpu vs raw"
    );
    let raw_syslog = baseline("raw tcp read", Split::None, &syslog).await;
    print(&raw_syslog, None);
    let framed_syslog = baseline("raw + framing", Split::Syslog, &syslog).await;
    print(&framed_syslog, Some(&raw_syslog));
    let s = ingest("syslog", false, false, Arc::clone(&syslog)).await;
    print_against(&s, &raw_syslog, &framed_syslog);
    let raw_shipped = baseline("raw tcp read", Split::None, &shipped).await;
    print(&raw_shipped, None);
    let framed_shipped = baseline("raw + framing", Split::Syslog, &shipped).await;
    print(&framed_shipped, Some(&raw_shipped));
    let d = ingest("syslog+paas id", false, false, Arc::clone(&shipped)).await;
    print_against(&d, &raw_shipped, &framed_shipped);
    let t = ingest("syslog+id mTLS", false, true, Arc::clone(&shipped)).await;
    print_against(&t, &raw_shipped, &framed_shipped);
    print_row(&format!("  vs {}", d.name), &t, Some(&d));
    let raw_forward = baseline("raw tcp read", Split::None, &forward).await;
    print(&raw_forward, None);
    let framed_forward = baseline("raw + framing", Split::Forward, &forward).await;
    print(&framed_forward, Some(&raw_forward));
    let f = ingest("forward", true, false, Arc::clone(&forward)).await;
    print_against(&f, &raw_forward, &framed_forward);
    let k = ingest("forward+shared key", true, true, Arc::clone(&forward)).await;
    print_against(&k, &raw_forward, &framed_forward);
    print_row(&format!("  vs {}", f.name), &k, Some(&f));
    print(&decode_only("syslog decode", false, &syslog[0]), None);
    print(&decode_only("forward decode", true, &forward[0]), None);
    for part in accept_parts(&syslog[0]) {
        print(&part, None);
    }
    // Last, so the gigabytes it leaves for writeback do not slow the scenarios above.
    let written_syslog = baseline("raw + file write", Split::Write, &syslog).await;
    print(&written_syslog, Some(&raw_syslog));
    print_row(
        &format!("syslog vs {}", written_syslog.name),
        &s,
        Some(&written_syslog),
    );
}
