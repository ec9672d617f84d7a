//! Logs as a user drives them through `paas up`: a real syslog client, `paas log`, and an
//! S3 drain (moto server) that keeps every line through an outage of the sink.
//!
//! `logger` cannot present a client certificate, so these tests open the explicit
//! `--unauthenticated-syslog-listen` door; `log_inputs_refuse_callers_without_credentials`
//! checks the authenticated inputs and the log API.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ok, paas};
use futures::TryStreamExt;
use object_store::ObjectStore;

fn syslog(port: u16, app: &str, msg: &str) {
    let status = Command::new("logger")
        .args([
            "--tcp",
            "--octet-count",
            "--rfc5424",
            "-n",
            "127.0.0.1",
            "-P",
            &port.to_string(),
        ])
        .args(["-t", app, "--msgid", "stdout", msg])
        .status()
        .expect("logger (util-linux) must be installed");
    assert!(status.success());
}

/// Every line id found in the gzip'd NDJSON objects under `prefix`.
async fn ids_in_s3(store: &object_store::aws::AmazonS3, prefix: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let objects: Vec<_> = store
        .list(Some(&prefix.into()))
        .try_collect()
        .await
        .unwrap();
    for meta in objects {
        assert!(
            meta.location.as_ref().ends_with(".ndjson.gz"),
            "{}",
            meta.location
        );
        let bytes = store
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            ids.insert(v["message"].as_str().unwrap().to_string());
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn syslog_lines_reach_paas_log_and_an_s3_drain_through_an_outage() {
    let mut s3 = paas_it::S3Server::start().expect("moto_server");
    s3.create_bucket("logs").unwrap();
    let home = common::home();
    let home = home.path().to_path_buf();
    let listen = common::free_addr();
    let syslog_port = paas_it::free_port().unwrap();
    let syslog_addr = format!("127.0.0.1:{syslog_port}");
    let (_up, _) = common::start_up_with_env(
        &home,
        &listen,
        &["--unauthenticated-syslog-listen", &syslog_addr],
        &[
            ("AWS_ACCESS_KEY_ID", s3.access_key_id()),
            ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key()),
        ],
    );

    ok(paas(&home, &["apps", "create", "shop"]));
    ok(paas(
        &home,
        &[
            "drain",
            "add",
            "-a",
            "shop",
            "s3",
            "s3://logs/paas",
            "--endpoint",
            &s3.endpoint(),
            "--region",
            s3.region(),
            "--flush-ms",
            "1000",
        ],
    ));
    tokio::time::sleep(Duration::from_secs(2)).await; // the aggregator starts drains it sees in etcd

    let mut sent = BTreeSet::new();
    for i in 0..50 {
        let msg = format!("before-{i}");
        syslog(syslog_port, "shop", &msg);
        sent.insert(msg);
    }
    // `paas log` shows them, in order.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = ok(paas(&home, &["log", "-a", "shop", "-n", "1000"]));
        if log.contains("before-49") {
            assert!(log.find("before-0").unwrap() < log.find("before-49").unwrap());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lines missing from paas log: {log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(s3.endpoint())
        .with_allow_http(true)
        .with_region(s3.region())
        .with_bucket_name("logs")
        .with_access_key_id(s3.access_key_id())
        .with_secret_access_key(s3.secret_access_key())
        .with_virtual_hosted_style_request(false)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut landed = BTreeSet::new();
    while landed.len() < 50 {
        assert!(
            Instant::now() < deadline,
            "only {} of 50 lines reached S3",
            landed.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        landed = ids_in_s3(&store, "paas/shop").await;
    }
    assert_eq!(landed, sent);

    // The sink goes away; lines keep coming and wait on disk; the drain reports the problem.
    s3.stop();
    let mut during = BTreeSet::new();
    for i in 0..50 {
        let msg = format!("during-{i}");
        syslog(syslog_port, "shop", &msg);
        during.insert(msg);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = ok(paas(&home, &["--json", "drain", "list"]));
        let v: serde_json::Value = serde_json::from_str(&list).unwrap();
        let status = &v[0]["status"];
        if status["lag"].as_u64().unwrap_or(0) > 0 && !status["last_error"].is_null() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "outage not visible in drain list: {list}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // moto keeps objects in memory: a restart empties the bucket, so only what is sent
    // after the outage is expected there.
    s3.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let landed = ids_in_s3(&store, "paas/shop").await;
        if during.is_subset(&landed) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 50 lines sent during the outage landed",
            during.intersection(&landed).count()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let list = ok(paas(&home, &["--json", "drain", "list"]));
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert!(
        v[0]["status"]["delivered"].as_u64().unwrap() >= 100,
        "{list}"
    );
    assert_eq!(v[0]["status"]["dropped"], 0, "{list}");
}

/// Sends `lines` RFC 5424 messages of app `shop` on one connection, octet-counted.
fn send_lines(port: u16, range: std::ops::Range<u32>) {
    use std::io::Write;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut bytes = Vec::new();
    for i in range {
        let msg = format!("<14>1 - host1 shop web.1 stdout - crash-{i:04}");
        bytes.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
    }
    conn.write_all(&bytes).unwrap();
}

/// Waits until `paas log` shows `needle`; returns the log.
fn wait_for_log(home: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = ok(paas(home, &["log", "-a", "shop", "-n", "10000"]));
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{needle} missing from paas log: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `paas log` keeps every accepted line through a SIGKILL of `paas up`: the recent lines
/// reach the store's files only once a second, the rest come back from the journal.
#[test]
fn paas_log_keeps_every_line_through_a_kill_9() {
    let home = common::home();
    let home = home.path().to_path_buf();
    let listen = common::free_addr();
    let port = paas_it::free_port().unwrap();
    let syslog_addr = format!("127.0.0.1:{port}");
    let (up, _) = common::start_up(
        &home,
        &listen,
        &["--unauthenticated-syslog-listen", &syslog_addr],
    );
    ok(paas(&home, &["apps", "create", "shop"]));
    send_lines(port, 0..300);
    wait_for_log(&home, "crash-0299");
    // The last batch is killed right after it shows up, well inside the persist period.
    send_lines(port, 300..400);
    wait_for_log(&home, "crash-0399");
    up.signal(libc::SIGKILL);
    drop(up);

    let (up, _) = common::start_up(
        &home,
        &listen,
        &["--unauthenticated-syslog-listen", &syslog_addr],
    );
    let log = wait_for_log(&home, "crash-0399");
    let seen: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("crash-")))
        .collect();
    let want: Vec<String> = (0..400).map(|i| format!("crash-{i:04}")).collect();
    assert_eq!(seen, want, "every line once, in order");
    up.stop();
}

/// `paas up` stops on SIGTERM also while a `paas log --follow` (or a dashboard's log view)
/// is connected: open requests get a short grace period, then their connections close.
#[test]
fn paas_up_stops_while_a_log_follow_is_open() {
    use std::io::BufRead;
    let home = common::home();
    let home = home.path();
    let port = paas_it::free_port().unwrap();
    let syslog_addr = format!("127.0.0.1:{port}");
    let (mut up, _) = common::start_up(
        home,
        &common::free_addr(),
        &["--unauthenticated-syslog-listen", &syslog_addr],
    );
    ok(paas(home, &["apps", "create", "shop"]));
    let mut follow = common::base(home)
        .args(["log", "-a", "shop", "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The follow is connected once it shows a line sent after it started.
    let stdout = follow.stdout.take().unwrap();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("follow is open") {
                let _ = seen_tx.send(());
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen_rx.try_recv().is_err() {
        assert!(Instant::now() < deadline, "the follow never showed a line");
        syslog(port, "shop", "follow is open");
        std::thread::sleep(Duration::from_millis(300));
    }

    let stopping = Instant::now();
    up.signal(libc::SIGTERM);
    let status = loop {
        if let Some(status) = up.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(20),
            "paas up still running {:?} after SIGTERM with a follow open",
            stopping.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "paas up exited with {status}");
    let _ = follow.kill();
    let _ = follow.wait();
}

/// What a job on the machine could try against `paas up`'s log inputs and API, without
/// the platform's credentials: every attempt is refused, nothing reaches the app's log,
/// and the aggregator keeps serving; the controller (which has the cluster secret) still
/// answers `paas log`.
#[test]
fn log_inputs_refuse_callers_without_credentials() {
    let home = common::home();
    let home = home.path();
    let (up, out) = common::start_up(home, &common::free_addr(), &[]);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_string()
    };
    let (syslog, forward) = (field("syslog:"), field("forward:"));
    assert!(
        !out.contains("syslog-unauthenticated:"),
        "no plain input unless asked for: {out}"
    );
    ok(paas(home, &["apps", "create", "shop"]));

    // A forged syslog frame on plain TCP: the TLS input takes no line from it.
    let msg = "<14>1 - h shop web.1 stdout - forged-syslog";
    let mut conn = std::net::TcpStream::connect(&syslog).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = std::io::Write::write_all(&mut conn, format!("{} {msg}", msg.len()).as_bytes());
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest); // the server closes the connection
    drop(conn);

    // A forged forward event without the shared-key handshake: the server sends HELO,
    // then closes on the event.
    let mut conn = std::net::TcpStream::connect(&forward).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut helo = [0u8; 64];
    let n = conn.read(&mut helo).unwrap();
    assert!(
        helo[..n].windows(4).any(|w| w == b"HELO"),
        "{:?}",
        &helo[..n]
    );
    // ["shop.web", 1700000000, {"log": "forged-forward"}]
    let mut event = vec![0x93, 0xa8];
    event.extend_from_slice(b"shop.web");
    event.push(0xce);
    event.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    event.extend_from_slice(&[0x81, 0xa3]);
    event.extend_from_slice(b"log");
    event.push(0xae);
    event.extend_from_slice(b"forged-forward");
    let _ = std::io::Write::write_all(&mut conn, &event);
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    drop(conn);

    // The aggregator's own API: 401 without the cluster secret, 200 with it.
    let status = ok(paas(home, &["cluster", "status"]));
    let api = status
        .lines()
        .find_map(|l| l.strip_prefix("Log aggregator: api "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no aggregator in {status}"))
        .to_string();
    let curl = |extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-m", "10", "-w", "%{http_code}"])
            .args(extra)
            .arg(format!("http://{api}/apps/shop/log"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(&[]), "401");
    assert_eq!(curl(&["-H", "Authorization: Bearer not-the-secret"]), "401");
    let secret = std::fs::read_to_string(home.join("data/cluster-secret")).unwrap();
    let header = format!("Authorization: Bearer {}", secret.trim());
    assert_eq!(curl(&["-H", &header]), "200");

    // The controller still proxies `paas log`, and the forged lines are not there. The
    // refusals are counted by the aggregator, so both attempts were seen and judged.
    let metrics = Command::new("curl")
        .args(["-s", "-m", "10", "-H", &header])
        .arg(format!("http://{api}/metrics"))
        .output()
        .expect("curl");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let deadline = Instant::now() + Duration::from_secs(20);
    for needle in [
        r#"logshipper_parse_errors_total{input="syslog",reason="tls"}"#,
        r#"logshipper_parse_errors_total{input="forward",reason="handshake"}"#,
    ] {
        let mut metrics = metrics.to_string();
        while !metrics.contains(needle) {
            assert!(Instant::now() < deadline, "{needle} not in {metrics}");
            std::thread::sleep(Duration::from_millis(200));
            let out = Command::new("curl")
                .args(["-s", "-m", "10", "-H", &header])
                .arg(format!("http://{api}/metrics"))
                .output()
                .expect("curl");
            metrics = String::from_utf8_lossy(&out.stdout).into_owned();
        }
    }
    let log = ok(paas(home, &["log", "-a", "shop", "-n", "100"]));
    assert!(!log.contains("forged"), "{log}");
    up.stop();
}
