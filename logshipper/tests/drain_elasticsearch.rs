//! Elasticsearch drain against a `_bulk` contract server written here (no Elasticsearch
//! can be installed on these machines). The server is scripted to answer whole-request
//! 429, 503 and garbage, and per-item 400, 409, 429 and 503; the test asserts exact
//! counts of stored, dead-lettered and retried lines.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use paas_logshipper::drain::retry::Backoff;
use paas_logshipper::drain::{DrainFamilies, DrainManager, DrainSpec, DrainStatus};
use paas_logshipper::journal::{Journal, JournalConfig};
use paas_logshipper::{LogLine, Stream};
use serde_json::{json, Value};

/// What the server does with the next whole request.
#[derive(Clone, Copy, Debug)]
enum Whole {
    Status(u16),
    Garbage,
}

#[derive(Default)]
struct Es {
    /// Replies used (in order) before any item is looked at.
    script: VecDeque<Whole>,
    /// Stored documents by `_id`, with their index.
    docs: HashMap<String, (String, Value)>,
    /// `_id`s that were already answered once with a transient item error.
    seen_transient: HashSet<String>,
    requests: usize,
    item_429: usize,
    item_503: usize,
}

/// Per-item rule: 400 and 409 forever for some ids; 429 or 503 once for others.
fn item_status(es: &mut Es, id: u64) -> u16 {
    let first_time = es.seen_transient.insert(id.to_string());
    match id % 100 {
        7 => 400,
        13 => 409,
        21 | 71 if first_time => {
            es.item_429 += 1;
            429
        }
        33 | 83 if first_time => {
            es.item_503 += 1;
            503
        }
        _ => 201,
    }
}

async fn bulk(State(es): State<Arc<Mutex<Es>>>, body: Bytes) -> Response {
    let mut es = es.lock().unwrap();
    es.requests += 1;
    match es.script.pop_front() {
        Some(Whole::Status(s)) => {
            return (StatusCode::from_u16(s).unwrap(), "{\"error\":\"scripted\"}").into_response()
        }
        Some(Whole::Garbage) => {
            return (StatusCode::OK, "<html>proxy error</html>").into_response()
        }
        None => {}
    }
    let text = std::str::from_utf8(&body).expect("utf8 body");
    let mut lines = text.lines();
    let mut items = Vec::new();
    let mut errors = false;
    while let Some(action) = lines.next() {
        let action: Value = serde_json::from_str(action).expect("action line");
        let doc: Value = serde_json::from_str(lines.next().expect("doc line")).expect("doc");
        let meta = &action["index"];
        let id = meta["_id"].as_str().expect("_id").to_string();
        let index = meta["_index"].as_str().expect("_index").to_string();
        let status = item_status(&mut es, id.parse().unwrap());
        let mut item = json!({"_index": index, "_id": id, "status": status});
        if status >= 300 {
            errors = true;
            item["error"] = json!({"type": format!("scripted_{status}"), "reason": "test"});
        } else {
            es.docs.insert(id, (index, doc));
        }
        items.push(json!({ "index": item }));
    }
    axum::Json(json!({"took": 1, "errors": errors, "items": items})).into_response()
}

async fn serve(listener: tokio::net::TcpListener, es: Arc<Mutex<Es>>) {
    serve_limited(listener, es, 100 << 20).await
}

/// Serves `_bulk`, answering 413 to bodies over `limit` bytes (as ES does over
/// `http.max_content_length`).
async fn serve_limited(listener: tokio::net::TcpListener, es: Arc<Mutex<Es>>, limit: usize) {
    let app = Router::new()
        .route("/_bulk", post(bulk))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(es);
    axum::serve(listener, app).await.unwrap();
}

fn line(i: u64) -> LogLine {
    LogLine {
        id: 0,
        app: if i.is_multiple_of(2) { "shop" } else { "blog" }.into(),
        process_type: Some("web".into()),
        job: Some("j1".into()),
        host: Some("h".into()),
        stream: Stream::Stdout,
        // 100 s apart: 2000 lines span four UTC days, exercising the index pattern.
        timestamp_ns: 1_700_000_000_000_000_000 + (i as i64) * 100_000_000_000,
        message: format!("line {i}"),
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

fn spec(id: &str, addr: SocketAddr) -> DrainSpec {
    DrainSpec {
        id: id.into(),
        kind: Some("elasticsearch".into()),
        url: format!("http://{addr}"),
        index: Some("logs-%Y.%m.%d".into()),
        flush_ms: Some(20),
        batch_bytes: Some(20_000),
        ..DrainSpec::default()
    }
}

fn backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(50),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_errors_are_retried_or_dead_lettered_with_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let es = Arc::new(Mutex::new(Es {
        script: [
            Whole::Status(429),
            Whole::Garbage,
            Whole::Status(503),
            Whole::Status(500),
        ]
        .into(),
        ..Es::default()
    }));
    tokio::spawn(serve(listener, Arc::clone(&es)));

    let journal = Journal::open(dir.path().join("journal"), JournalConfig::default()).unwrap();
    let manager = DrainManager::new(
        journal.clone(),
        dir.path().join("dead"),
        DrainFamilies::default(),
    )
    .with_backoff(backoff());
    manager.add(&spec("es1", addr)).unwrap();
    let mut lines: Vec<LogLine> = (0..2000).map(line).collect();
    for chunk in lines.chunks_mut(100) {
        journal.append(chunk).unwrap();
    }

    let s = wait_for(&manager, "every line handled", |s| {
        s.lag == 0 && s.delivered + s.failed == 2000
    })
    .await;
    // ids 1..=2000: 20 end in 07 and 20 end in 13 (per hundred) are refused for good.
    assert_eq!(s.failed, 40);
    assert_eq!(s.delivered, 1960);
    assert_eq!(s.dropped, 0);
    assert!(s.last_error.is_some());
    manager.shutdown().await;

    let es = es.lock().unwrap();
    assert_eq!(es.docs.len(), 1960);
    assert!(
        es.script.is_empty(),
        "all scripted whole-request failures were hit"
    );
    assert_eq!(es.item_429, 40);
    assert_eq!(es.item_503, 40);
    for id in 1..=2000u64 {
        let stored = es.docs.get(&id.to_string());
        match id % 100 {
            7 | 13 => assert!(stored.is_none(), "id {id} must not be stored"),
            _ => {
                let (index, doc) = stored.unwrap_or_else(|| panic!("id {id} missing"));
                let i = id - 1;
                assert_eq!(doc["message"], format!("line {i}"));
                assert_eq!(doc["id"], id);
                let day = chrono::DateTime::from_timestamp_nanos(line(i).timestamp_ns)
                    .format("logs-%Y.%m.%d")
                    .to_string();
                assert_eq!(index, &day);
            }
        }
    }
    let indices: HashSet<&str> = es.docs.values().map(|(i, _)| i.as_str()).collect();
    assert_eq!(indices.len(), 4, "lines span four UTC days: {indices:?}");
    drop(es);

    let dead = std::fs::read_to_string(dir.path().join("dead/es1.ndjson")).unwrap();
    let mut dead_ids: Vec<u64> = dead
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| {
            let status = v["status"].as_u64().unwrap();
            let id = v["line"]["id"].as_u64().unwrap();
            assert_eq!(status, if id % 100 == 7 { 400 } else { 409 });
            assert!(v["error"].as_str().unwrap().contains("scripted_"));
            id
        })
        .collect();
    dead_ids.sort();
    let expected: Vec<u64> = (1..=2000)
        .filter(|i| i % 100 == 7 || i % 100 == 13)
        .collect();
    assert_eq!(dead_ids, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_retried_until_the_server_appears() {
    let dir = tempfile::tempdir().unwrap();
    // Reserve a port, then close it so connections are refused.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let journal = Journal::open(dir.path().join("journal"), JournalConfig::default()).unwrap();
    let manager = DrainManager::new(
        journal.clone(),
        dir.path().join("dead"),
        DrainFamilies::default(),
    )
    .with_backoff(backoff());
    manager.add(&spec("late", addr)).unwrap();
    let mut lines: Vec<LogLine> = (0..300).map(|i| line(i * 100)).collect();
    journal.append(&mut lines).unwrap();

    let s = wait_for(&manager, "an unreachable error", |s| s.last_error.is_some()).await;
    assert!(s.last_error.unwrap().message.contains("unreachable"));
    assert_eq!(s.delivered, 0);
    assert_eq!(s.lag, 300);

    let es = Arc::new(Mutex::new(Es::default()));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(serve(listener, Arc::clone(&es)));
    let s = wait_for(&manager, "delivery", |s| s.lag == 0).await;
    // Ids 1..=300: those ending in 07/13 are refused, 3 each.
    assert_eq!(s.failed, 6);
    assert_eq!(s.delivered, 294);
    assert_eq!(es.lock().unwrap().docs.len(), 294);
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_app_drain_ships_only_its_app_and_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let es = Arc::new(Mutex::new(Es::default()));
    tokio::spawn(serve(listener, Arc::clone(&es)));
    let mut app_spec = spec("shop-es", addr);
    app_spec.app = Some("shop".into());

    let journal = Journal::open(dir.path().join("journal"), JournalConfig::default()).unwrap();
    let manager = DrainManager::new(
        journal.clone(),
        dir.path().join("dead"),
        DrainFamilies::default(),
    )
    .with_backoff(backoff());
    manager.add(&app_spec).unwrap();
    // Line i belongs to shop when i is even and gets id i + 1: shop ids are odd.
    let mut lines: Vec<LogLine> = (0..100).map(line).collect();
    journal.append(&mut lines).unwrap();
    wait_for(&manager, "first delivery", |s| s.lag == 0).await;
    manager.shutdown().await;
    drop(manager);

    // More lines while the drain is down, then a new manager resumes from the cursor.
    let mut more: Vec<LogLine> = (100..200).map(line).collect();
    journal.append(&mut more).unwrap();
    let manager = DrainManager::new(
        journal.clone(),
        dir.path().join("dead"),
        DrainFamilies::default(),
    )
    .with_backoff(backoff());
    manager.add(&app_spec).unwrap();
    let s = wait_for(&manager, "delivery after restart", |s| s.lag == 0).await;
    // Second run: the odd ids in 101..=200, 50 shop lines (107 and 113 refused).
    assert_eq!(s.delivered + s.failed, 50);
    manager.shutdown().await;
    let es = es.lock().unwrap();
    assert!(es.docs.values().all(|(_, d)| d["app"] == "shop"));
    // Shop ids are the odd ids 1..=199; 7, 13, 107 and 113 are refused.
    assert_eq!(es.docs.len(), 100 - 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_requests_are_split_and_an_oversized_line_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let es = Arc::new(Mutex::new(Es::default()));
    tokio::spawn(serve_limited(listener, Arc::clone(&es), 30_000));
    let journal = Journal::open(dir.path().join("journal"), JournalConfig::default()).unwrap();
    let manager = DrainManager::new(
        journal.clone(),
        dir.path().join("dead"),
        DrainFamilies::default(),
    )
    .with_backoff(backoff());
    let mut big_batches = spec("split", addr);
    big_batches.batch_bytes = Some(1 << 20);
    big_batches.flush_ms = Some(200);
    manager.add(&big_batches).unwrap();
    let mut lines: Vec<LogLine> = (0..501).map(line).collect();
    lines[250].message = "x".repeat(40_000);
    journal.append(&mut lines).unwrap();

    let s = wait_for(&manager, "delivery", |s| s.lag == 0).await;
    manager.shutdown().await;
    // Ids 1..=501: ten end in 07/13 (refused items) and id 251 is too large alone.
    assert_eq!(s.failed, 11);
    assert_eq!(s.delivered, 490);
    assert_eq!(es.lock().unwrap().docs.len(), 490);
    let dead = std::fs::read_to_string(dir.path().join("dead/split.ndjson")).unwrap();
    let too_large: Vec<Value> = dead
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["status"] == 413)
        .collect();
    assert_eq!(too_large.len(), 1);
    assert_eq!(too_large[0]["line"]["id"], 251);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_dropped_by_the_journal_limit_are_counted_and_marked() {
    let dir = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let journal = Journal::open(
        dir.path().join("journal"),
        JournalConfig {
            segment_bytes: 16 * 1024,
            max_bytes: 64 * 1024,
        },
    )
    .unwrap();
    let manager = DrainManager::new(
        journal.clone(),
        dir.path().join("dead"),
        DrainFamilies::default(),
    )
    .with_backoff(backoff());
    manager.add(&spec("small", addr)).unwrap();
    // While the sink is unreachable, far more than 64 KiB is appended.
    let mut lines: Vec<LogLine> = (0..5000).map(line).collect();
    for chunk in lines.chunks_mut(50) {
        journal.append(chunk).unwrap();
    }
    assert!(
        journal.stats().first_id > 1,
        "the journal dropped old segments"
    );

    let es = Arc::new(Mutex::new(Es::default()));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(serve(listener, Arc::clone(&es)));
    let s = wait_for(&manager, "delivery", |s| s.lag == 0).await;
    manager.shutdown().await;
    assert!(s.dropped > 0);

    // A marker carries the last dropped id; the scripted rules may refuse it like any
    // line, so look in both the stored documents and the dead-letter file.
    let mut docs: Vec<Value> = es
        .lock()
        .unwrap()
        .docs
        .values()
        .map(|(_, d)| d.clone())
        .collect();
    let dead_path = dir.path().join("dead/small.ndjson");
    let dead: Vec<Value> = std::fs::read_to_string(&dead_path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["line"].clone())
        .collect();
    let stored = docs.len() as u64;
    docs.extend(dead.iter().cloned());
    let is_marker = |d: &Value| d["message"].as_str().unwrap().starts_with("Error L10");
    let marked: u64 = docs
        .iter()
        .filter(|d| is_marker(d))
        .map(|d| {
            let msg = d["message"].as_str().unwrap();
            msg.split_whitespace()
                .nth(5)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(marked, s.dropped, "markers account for every dropped line");
    let real = docs.iter().filter(|d| !is_marker(d)).count() as u64;
    assert_eq!(
        real + s.dropped,
        5000,
        "every line delivered, refused or dropped"
    );
    assert_eq!(s.delivered, stored);
    assert_eq!(s.failed, dead.len() as u64);
}
