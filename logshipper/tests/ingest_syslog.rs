//! Syslog input end to end: real `logger` (util-linux) over TCP with octet counting and
//! with newline framing, real `rsyslogd` forwarding a file with octet counting, TLS, bad
//! input isolation, stalls, graceful shutdown, restart, follow and metrics.

mod ingest_support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ingest_support::{messages, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Runs util-linux `logger` against the aggregator; panics if it is missing or fails.
async fn logger(args: &[&str]) {
    let out = tokio::process::Command::new("logger")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("util-linux `logger` must be installed (apt-get install util-linux)");
    assert!(
        out.status.success(),
        "logger failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn frame(msg: &str) -> Vec<u8> {
    format!("{} {msg}", msg.len()).into_bytes()
}

/// Reads until the server closes the connection; returns how many bytes came.
async fn read_until_closed(stream: &mut TcpStream) -> usize {
    let mut total = 0;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(ingest_support::DEADLINE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return total,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("server did not close the connection"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_octet_counted_and_newline_lines_all_appear_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), |_| {}).await;
    let port = h.syslog().port().to_string();
    let file = dir.path().join("lines.txt");
    let lines: Vec<String> = (0..500).map(|i| format!("octet line {i}")).collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    logger(&[
        "--tcp",
        "--octet-count",
        "--rfc5424",
        "-n",
        "127.0.0.1",
        "-P",
        &port,
        "-t",
        "shop",
        "--id=4242",
        "--msgid",
        "stdout",
        "-f",
        file.to_str().unwrap(),
    ])
    .await;
    logger(&[
        "--tcp",
        "--rfc5424",
        "-n",
        "127.0.0.1",
        "-P",
        &port,
        "-t",
        "shop",
        "--msgid",
        "stderr",
        "newline framed",
    ])
    .await;

    let got = h.wait_for_lines("shop", 501).await;
    let mut expected = lines.clone();
    expected.push("newline framed".into());
    assert_eq!(messages(&got), expected);
    assert_eq!(got[0]["job"], "4242");
    assert_eq!(got[0]["stream"], "stdout");
    assert_eq!(got[500]["stream"], "stderr");
    let ids: Vec<u64> = got.iter().map(|l| l["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    // Filters.
    let stderr = h.log("shop", "lines=1000&stream=stderr").await;
    assert_eq!(messages(&stderr), vec!["newline framed"]);
    let by_job = h.log("shop", "lines=3&job=4242").await;
    assert_eq!(
        messages(&by_job),
        vec!["octet line 497", "octet line 498", "octet line 499"]
    );
    let metrics = h.metrics().await;
    assert!(
        metrics.contains(r#"logshipper_lines_received_total{input="syslog"} 501"#),
        "{metrics}"
    );

    // Restart: the last lines are still there.
    h.stop().await;
    let h = Harness::start(dir.path(), |_| {}).await;
    let after = h.log("shop", "lines=2").await;
    assert_eq!(messages(&after), vec!["octet line 499", "newline framed"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_forwards_a_file_with_octet_counting() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), |_| {}).await;
    let input = dir.path().join("app.log");
    let lines: Vec<String> = (0..1000).map(|i| format!("rsyslog line {i}")).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let conf = dir.path().join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{work}")
module(load="imfile")
input(type="imfile" File="{input}" Tag="blog")
action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp"
       TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
"#,
            work = dir.path().display(),
            input = input.display(),
            port = h.syslog().port(),
        ),
    )
    .unwrap();
    let _rsyslogd = tokio::process::Command::new("rsyslogd")
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.path().join("rsyslogd.pid"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("rsyslogd must be installed (apt-get install rsyslog)");
    let got = h.wait_for_lines("blog", 1000).await;
    assert_eq!(messages(&got), lines);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_every_complete_message_of_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), |_| {}).await;
    let mut open = TcpStream::connect(h.syslog()).await.unwrap();
    let mut bytes = Vec::new();
    for i in 0..100 {
        bytes.extend(frame(&format!("<14>1 - h keep 1 stdout - line {i}")));
    }
    bytes.extend_from_slice(b"50 <14>1 - h keep"); // an unfinished message
    open.write_all(&bytes).await.unwrap();
    h.wait_for_lines("keep", 100).await;
    // The client never closes; shutdown must still finish, and nothing is lost.
    h.stop().await;
    assert_eq!(read_until_closed(&mut open).await, 0);
    let h = Harness::start(dir.path(), |_| {}).await;
    let got = h.log("keep", "lines=1000").await;
    assert_eq!(got.len(), 100);
    assert_eq!(got[99]["message"], "line 99");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), |c| {
        c.max_message_bytes = 4096;
        c.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let addr = h.syslog();

    let mut good = TcpStream::connect(addr).await.unwrap();
    good.write_all(&frame("<14>1 - h app 1 stdout - before"))
        .await
        .unwrap();
    h.wait_for_lines("app", 1).await;

    // A bad frame length after a valid frame: the valid one is kept, the connection closed.
    let mut bad = TcpStream::connect(addr).await.unwrap();
    let mut bytes = frame("<14>1 - h app 1 stdout - valid then garbage");
    bytes.extend_from_slice(b"12x <14>1 ...");
    bad.write_all(&bytes).await.unwrap();
    read_until_closed(&mut bad).await;

    // An oversized frame.
    let mut big = TcpStream::connect(addr).await.unwrap();
    big.write_all(b"999999 <14>1 - h app 1 stdout - ")
        .await
        .unwrap();
    read_until_closed(&mut big).await;

    // A client that stalls mid-message.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(b"100 <14>1 - h app").await.unwrap();
    read_until_closed(&mut stalled).await;

    // Not syslog at all.
    let mut junk = TcpStream::connect(addr).await.unwrap();
    junk.write_all(b"\x00\x01\x02GET / HTTP/1.1\r\n")
        .await
        .unwrap();
    read_until_closed(&mut junk).await;

    // A well-framed but invalid message is skipped; the connection goes on.
    good.write_all(&frame("<14>9 not rfc5424")).await.unwrap();
    good.write_all(&frame("<14>1 - h app 1 stdout - after"))
        .await
        .unwrap();
    let got = h.wait_for_lines("app", 3).await;
    assert_eq!(
        messages(&got),
        vec!["before", "valid then garbage", "after"]
    );
    for needle in [
        r#"logshipper_parse_errors_total{input="syslog",reason="stalled"} 1"#,
        r#"logshipper_parse_errors_total{input="syslog",reason="frame"} 2"#,
        r#"logshipper_parse_errors_total{input="syslog",reason="too_large"} 1"#,
        r#"logshipper_parse_errors_total{input="syslog",reason="message"} 1"#,
    ] {
        h.wait_for_metric(needle).await;
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_new_lines_after_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), |_| {}).await;
    let mut conn = TcpStream::connect(h.syslog()).await.unwrap();
    conn.write_all(&frame("<14>1 - h web web.j1 stdout - old"))
        .await
        .unwrap();
    h.wait_for_lines("web", 1).await;

    let mut resp = reqwest::get(h.url("/apps/web/log?lines=10&follow=true&type=web"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = String::new();
    let mut wanted = vec!["new 1", "new 2"];
    conn.write_all(&frame("<14>1 - h web worker.j2 stdout - filtered out"))
        .await
        .unwrap();
    for m in &wanted {
        conn.write_all(&frame(&format!("<14>1 - h web web.j1 stdout - {m}")))
            .await
            .unwrap();
    }
    wanted.insert(0, "old");
    while body.lines().count() < wanted.len() {
        let chunk = tokio::time::timeout(ingest_support::DEADLINE, resp.chunk())
            .await
            .expect("follow stream stalled")
            .unwrap()
            .expect("follow stream ended");
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let got: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(messages(&got), wanted);
    assert_eq!(got[1]["process_type"], "web");
    assert_eq!(got[1]["job"], "j1");

    let bad = reqwest::get(h.url("/apps/web/log?stream=sideways"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad
        .text()
        .await
        .unwrap()
        .contains("stream must be stdout or stderr"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_falls_behind_gets_skipped_markers_not_gaps() {
    const TOTAL: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start_with_store(dir.path(), |s| s.follow_buffer = 2, |_| {}).await;
    // The follower connects, then reads nothing while the lines arrive.
    let mut resp = reqwest::get(h.url("/apps/flood/log?lines=0&follow=true"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut conn = TcpStream::connect(h.syslog()).await.unwrap();
    let pad = "x".repeat(150);
    let mut bytes = Vec::new();
    for i in 0..TOTAL {
        bytes.extend(frame(&format!("<14>1 - h flood 1 stdout - {i} {pad}")));
    }
    conn.write_all(&bytes).await.unwrap();
    h.wait_for_metric(&format!(
        r#"logshipper_lines_received_total{{input="syslog"}} {TOTAL}"#
    ))
    .await;
    // Every line is either delivered or counted in a marker, in order.
    let (mut delivered, mut skipped, mut markers) = (0u64, 0u64, 0u64);
    let mut last_seen: Option<u64> = None;
    let mut pending = String::new();
    while delivered + skipped < TOTAL {
        let chunk = tokio::time::timeout(ingest_support::DEADLINE, resp.chunk())
            .await
            .expect("follow stream stalled")
            .unwrap()
            .expect("follow stream ended");
        pending.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(nl) = pending.find('\n') {
            let line: serde_json::Value = serde_json::from_str(&pending[..nl]).unwrap();
            pending.drain(..=nl);
            if let Some(n) = line["skipped"].as_u64() {
                assert_eq!(line["message"], format!("{n} lines skipped"));
                skipped += n;
                markers += 1;
                let next = last_seen.map_or(0, |l| l + 1) + n;
                last_seen = Some(next - 1);
            } else {
                let msg = line["message"].as_str().unwrap();
                let n: u64 = msg.split(' ').next().unwrap().parse().unwrap();
                assert_eq!(n, last_seen.map_or(0, |l| l + 1), "gap before line {n}");
                last_seen = Some(n);
                delivered += 1;
            }
        }
    }
    assert_eq!(delivered + skipped, TOTAL);
    assert!(markers > 0 && skipped > 0, "the follower never fell behind");
    assert!(delivered > 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_syslog() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let tls = paas_logshipper::tls::server_config(&cert_path, &key_path).unwrap();
    let h = Harness::start(dir.path(), |c| c.syslog_tls = Some(tls)).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(h.syslog()).await.unwrap();
    let mut tls_stream = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    for i in 0..3 {
        tls_stream
            .write_all(&frame(&format!("<14>1 - h sec 1 stdout - tls {i}")))
            .await
            .unwrap();
    }
    tls_stream.flush().await.unwrap();
    let got = h.wait_for_lines("sec", 3).await;
    assert_eq!(messages(&got), vec!["tls 0", "tls 1", "tls 2"]);

    // A plain-text client on the TLS port is closed without affecting anything.
    let mut plain = TcpStream::connect(h.syslog()).await.unwrap();
    plain
        .write_all(&frame("<14>1 - h sec 1 stdout - plain"))
        .await
        .unwrap();
    read_until_closed(&mut plain).await;
    h.wait_for_metric(r#"logshipper_parse_errors_total{input="syslog",reason="tls"} 1"#)
        .await;
    assert_eq!(h.log("sec", "lines=10").await.len(), 3);
    h.stop().await;
}
