//! Drain benchmark: queue gigabytes in the journal behind two stalled drains (an
//! Elasticsearch `_bulk` server answering 503, a syslog receiver that does not read),
//! print peak RSS (VmHWM from /proc/self/status) while they are stalled, then release
//! each sink and print how fast its drain empties the backlog.
//!
//! `cargo bench -p paas-logshipper --bench drain`; environment:
//! `DRAIN_BENCH_GIB` (default 2) bytes to queue, `DRAIN_BENCH_DIR` (default the system
//! temp dir) where the journal goes (removed at the end).
//!
//! The sinks run in this process on 127.0.0.1 and do minimal work (count frames, answer
//! `_bulk` with one success item per document), so the figures are the drain's cost plus
//! loopback I/O, on a machine shared with other work.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use paas_logshipper::drain::retry::Backoff;
use paas_logshipper::drain::{DrainFamilies, DrainManager, DrainSpec, DrainStatus};
use paas_logshipper::journal::{Journal, JournalConfig};
use paas_logshipper::{LogLine, Stream};
use tokio::io::AsyncReadExt;

/// A memory figure from /proc/self/status, in MiB.
fn proc_status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A `_bulk` endpoint that answers 503 while stalled, then one 201 item per document.
#[derive(Default)]
struct EsSink {
    stalled: AtomicBool,
    docs: AtomicU64,
}

async fn bulk(State(es): State<Arc<EsSink>>, body: Bytes) -> Response {
    if es.stalled.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "stalled").into_response();
    }
    let n = memchr_count(&body) / 2;
    es.docs.fetch_add(n as u64, Ordering::Relaxed);
    let mut out = String::with_capacity(40 + n * 26);
    out.push_str("{\"took\":0,\"errors\":false,\"items\":[");
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"index\":{\"status\":201}}");
    }
    out.push_str("]}");
    (StatusCode::OK, out).into_response()
}

fn memchr_count(b: &[u8]) -> usize {
    b.iter().filter(|&&c| c == b'\n').count()
}

/// Counts octet-counted syslog frames on one connection once `reading` is set.
async fn syslog_receiver(
    listener: tokio::net::TcpListener,
    reading: Arc<tokio::sync::Notify>,
    frames: Arc<AtomicU64>,
) {
    let (mut conn, _) = listener.accept().await.expect("accept");
    reading.notified().await;
    let mut buf = vec![0u8; 1 << 20];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = conn.read(&mut buf).await.expect("read");
        if n == 0 {
            return;
        }
        pending.extend_from_slice(&buf[..n]);
        let mut pos = 0;
        while let Some(sp) = pending[pos..].iter().position(|&c| c == b' ') {
            let len: usize = std::str::from_utf8(&pending[pos..pos + sp])
                .expect("frame length")
                .parse()
                .expect("frame length");
            if pending.len() < pos + sp + 1 + len {
                break;
            }
            pos += sp + 1 + len;
            frames.fetch_add(1, Ordering::Relaxed);
        }
        pending.drain(..pos);
    }
}

fn line(i: u64) -> LogLine {
    LogLine {
        id: 0,
        app: ["shop", "blog", "api", "billing"][(i % 4) as usize].into(),
        process_type: Some("web".into()),
        job: Some(format!("web.{}", i % 16).into()),
        host: Some("host-01".into()),
        stream: Stream::Stdout,
        timestamp_ns: 1_700_000_000_000_000_000 + i as i64 * 1_000_000,
        message: format!(
            "{i} GET /products/{} 200 in {} ms user_agent=\"Mozilla/5.0 (X11; Linux x86_64) bench\" request_id={:016x} trace=abcdef0123456789",
            i % 977,
            i % 250,
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ),
    }
}

async fn wait_drained(manager: &DrainManager, id: &str) -> anyhow::Result<DrainStatus> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let s = manager
            .list()
            .into_iter()
            .find(|d| d.id == id)
            .context("drain vanished")?;
        if s.lag == 0 {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("drain {id} did not finish: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let gib: f64 = std::env::var("DRAIN_BENCH_GIB")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .context("DRAIN_BENCH_GIB")?
        .unwrap_or(2.0);
    let base = std::env::var("DRAIN_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::tempdir_in(&base).context("temp dir")?;
    let target = (gib * (1u64 << 30) as f64) as u64;

    let es = Arc::new(EsSink::default());
    es.stalled.store(true, Ordering::Relaxed);
    let es_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let es_addr = es_listener.local_addr()?;
    let app = axum::Router::new()
        .route("/_bulk", post(bulk))
        .layer(axum::extract::DefaultBodyLimit::max(100 << 20))
        .with_state(Arc::clone(&es));
    tokio::spawn(async move { axum::serve(es_listener, app).await });

    let sys_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sys_addr = sys_listener.local_addr()?;
    let reading = Arc::new(tokio::sync::Notify::new());
    let frames = Arc::new(AtomicU64::new(0));
    tokio::spawn(syslog_receiver(
        sys_listener,
        Arc::clone(&reading),
        Arc::clone(&frames),
    ));

    let journal = Journal::open(
        dir.path().join("journal"),
        JournalConfig {
            segment_bytes: 64 << 20,
            max_bytes: target + (1 << 30),
        },
    )?;
    let manager = DrainManager::new(
        journal.clone(),
        dir.path().join("dead"),
        DrainFamilies::default(),
    )
    .with_backoff(Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    });
    manager.add(&DrainSpec {
        id: "es".into(),
        url: format!("elasticsearch+http://{es_addr}"),
        ..DrainSpec::default()
    })?;
    manager.add(&DrainSpec {
        id: "syslog".into(),
        url: format!("syslog+tcp://{sys_addr}"),
        ..DrainSpec::default()
    })?;

    println!(
        "queueing {gib} GiB behind a stalled Elasticsearch drain (503) and a stalled syslog drain (receiver not reading)"
    );
    let start = Instant::now();
    let mut i = 0u64;
    let mut peak_during_stall = 0f64;
    while journal.stats().bytes < target {
        let mut batch: Vec<LogLine> = (i..i + 1000).map(line).collect();
        journal.append(&mut batch)?;
        i += 1000;
        if i.is_multiple_of(1_000_000) {
            peak_during_stall = peak_during_stall.max(proc_status_mib("VmHWM:"));
            tokio::task::yield_now().await;
        }
    }
    let append_secs = start.elapsed().as_secs_f64();
    let stats = journal.stats();
    let queued_mib = stats.bytes as f64 / (1 << 20) as f64;
    println!(
        "appended {} lines, {queued_mib:.0} MiB on disk in {} segments: {:.0} lines/s, {:.0} MiB/s",
        stats.last_id,
        stats.segments,
        stats.last_id as f64 / append_secs,
        queued_mib / append_secs
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for s in manager.list() {
        println!(
            "  stalled drain {}: delivered {} lag {} last error {:?}",
            s.id,
            s.delivered,
            s.lag,
            s.last_error.map(|e| e.message)
        );
    }
    peak_during_stall = peak_during_stall.max(proc_status_mib("VmHWM:"));
    println!(
        "peak RSS while stalled with {queued_mib:.0} MiB queued: VmHWM {peak_during_stall:.1} MiB (VmRSS now {:.1} MiB)",
        proc_status_mib("VmRSS:")
    );

    let total = stats.last_id;
    reading.notify_one();
    let t = Instant::now();
    let s = wait_drained(&manager, "syslog").await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "syslog+tcp drain: {} lines in {secs:.1} s = {:.0} lines/s ({:.0} MiB/s of journal); receiver counted {} frames",
        total,
        total as f64 / secs,
        queued_mib / secs,
        frames.load(Ordering::Relaxed)
    );
    assert_eq!(s.delivered, total, "syslog delivered everything");

    es.stalled.store(false, Ordering::Relaxed);
    let t = Instant::now();
    let s = wait_drained(&manager, "es").await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "elasticsearch drain: {} lines in {secs:.1} s = {:.0} lines/s ({:.0} MiB/s of journal); server stored {} docs",
        total,
        total as f64 / secs,
        queued_mib / secs,
        es.docs.load(Ordering::Relaxed)
    );
    assert_eq!(s.delivered, total, "elasticsearch delivered everything");
    println!(
        "peak RSS over the whole run: VmHWM {:.1} MiB; journal after draining: {} segment(s), {:.1} MiB",
        proc_status_mib("VmHWM:"),
        journal.stats().segments,
        journal.stats().bytes as f64 / (1 << 20) as f64
    );
    manager.shutdown().await;
    Ok(())
}
