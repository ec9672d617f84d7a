//! Fluent Forward input end to end: the Node `@fluent-org/logger` client in all four
//! modes with acks, shared key and TLS; the Python `fluent-logger`; hand-built frames for
//! every mode; garbage and oversized input closing only their connection.
//!
//! The clients are installed by `logshipper/tests/clients/setup.sh`; the tests fail
//! (they do not skip) when the clients are missing.

mod ingest_support;

use std::process::{Output, Stdio};
use std::time::Duration;

use ingest_support::{clients_dir, messages, Harness};
use paas_logshipper::forward::handshake::SharedKey;
use rmpv::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn node(opts: serde_json::Value) -> Output {
    let dir = clients_dir();
    assert!(
        dir.join("node_modules/@fluent-org/logger").is_dir(),
        "the Node forward client is not installed: run logshipper/tests/clients/setup.sh"
    );
    tokio::process::Command::new("node")
        .arg(dir.join("forward_node.js"))
        .arg(opts.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("node must be installed to run the forward client tests")
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn encode(v: &Value) -> Vec<u8> {
    let mut buf = Vec::new();
    rmpv::encode::write_value(&mut buf, v).unwrap();
    buf
}

fn event_time(secs: u32, nanos: u32) -> Value {
    let mut data = secs.to_be_bytes().to_vec();
    data.extend_from_slice(&nanos.to_be_bytes());
    Value::Ext(0, data)
}

fn record(msg: &str) -> Value {
    Value::Map(vec![
        (Value::from("log"), Value::from(msg)),
        (Value::from("stream"), Value::from("stderr")),
        (Value::from("job"), Value::from("j9")),
    ])
}

fn options(chunk: &str, gzip: bool) -> Value {
    let mut pairs = vec![(Value::from("chunk"), Value::from(chunk))];
    if gzip {
        pairs.push((Value::from("compressed"), Value::from("gzip")));
    }
    Value::Map(pairs)
}

async fn read_ack(stream: &mut TcpStream) -> Value {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let mut rd = buf.as_slice();
        if let Ok(v) = rmpv::decode::read_value(&mut rd) {
            return v;
        }
        let n = tokio::time::timeout(ingest_support::DEADLINE, stream.read(&mut chunk))
            .await
            .expect("no ack")
            .unwrap();
        assert!(n > 0, "connection closed before the ack");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn read_until_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(ingest_support::DEADLINE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => panic!("server did not close the connection"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_all_modes_with_acks() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), |_| {}).await;
    let port = h.forward().port();
    for (mode, app) in [
        ("Message", "m1"),
        ("Forward", "m2"),
        ("PackedForward", "m3"),
        ("CompressedPackedForward", "m4"),
    ] {
        let out = node(serde_json::json!({
            "port": port, "mode": mode, "tag": app, "label": "web", "count": 300,
            "prefix": mode, "ack": true, "eventTime": true, "flushInterval": 5,
        }))
        .await;
        assert_ok(&out);
        // Acked means durable and stored: the lines are there without waiting.
        let got = h.log(app, "lines=1000").await;
        let expected: Vec<String> = (0..300).map(|i| format!("{mode} {i}")).collect();
        assert_eq!(messages(&got), expected, "{mode}");
        assert_eq!(got[0]["process_type"], "web");
        assert_eq!(got[0]["job"], "node-job");
        assert_eq!(got[0]["stream"], "stdout");
    }
    let m = h.metrics().await;
    assert!(
        m.contains(r#"logshipper_lines_received_total{input="forward"} 1200"#),
        "{m}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_shared_key_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let tls = paas_logshipper::tls::server_config(&cert_path, &key_path).unwrap();
    let h = Harness::start(dir.path(), |c| {
        c.forward_tls = Some(tls);
        c.shared_key = Some(SharedKey {
            key: "sesame".into(),
            server_hostname: "aggregator".into(),
        });
    })
    .await;
    let port = h.forward().port();
    let out = node(serde_json::json!({
        "port": port, "mode": "PackedForward", "tag": "vault", "label": "worker",
        "count": 50, "prefix": "secret", "ack": true, "sharedKey": "sesame",
        "ca": cert_path,
    }))
    .await;
    assert_ok(&out);
    let got = h.log("vault", "lines=100").await;
    assert_eq!(got.len(), 50);
    assert_eq!(got[49]["message"], "secret 49");

    // A client configured with a username and password as well: the server's HELO asks
    // for no user authentication (empty `auth`), so the shared key alone admits it.
    let out = node(serde_json::json!({
        "port": port, "mode": "Message", "tag": "vault", "label": "user",
        "count": 5, "prefix": "with user", "ack": true, "sharedKey": "sesame",
        "username": "fluent", "password": "secret", "ca": cert_path,
    }))
    .await;
    assert_ok(&out);
    let got = h.log("vault", "lines=100").await;
    assert_eq!(got.len(), 55);
    assert_eq!(got[54]["message"], "with user 4");

    // A client with the wrong key is refused at the handshake and nothing is stored.
    // (How the client itself reports the refusal is up to it; the server side is checked.)
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        node(serde_json::json!({
            "port": port, "mode": "Message", "tag": "intruder", "label": "web",
            "count": 1, "prefix": "x", "ack": true, "sharedKey": "wrong",
            "ca": cert_path,
        })),
    )
    .await;
    h.wait_for_metric(r#"logshipper_parse_errors_total{input="forward",reason="handshake"}"#)
        .await;
    assert!(h.log("intruder", "lines=10").await.is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fluent_logger() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), |_| {}).await;
    let out = tokio::process::Command::new("python3")
        .arg(clients_dir().join("forward_python.py"))
        .args([
            &h.forward().port().to_string(),
            "pyapp",
            "worker",
            "200",
            "py",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "python client failed (install it with logshipper/tests/clients/setup.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = h.wait_for_lines("pyapp", 200).await;
    let expected: Vec<String> = (0..200).map(|i| format!("py {i}")).collect();
    assert_eq!(messages(&got), expected);
    assert_eq!(got[0]["stream"], "stderr");
    assert_eq!(got[0]["process_type"], "worker");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_built_frames_in_every_mode_are_acked() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), |_| {}).await;
    let mut conn = TcpStream::connect(h.forward()).await.unwrap();

    let packed = |msgs: &[&str]| {
        let mut body = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            body.extend(encode(&Value::Array(vec![
                event_time(1_700_000_000 + i as u32, 7),
                record(m),
            ])));
        }
        body
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&packed(&["gz 1", "gz 2"])).unwrap();
    let gz = gz.finish().unwrap();

    // Acked entries must already be in the journal (an fsync covered them).
    let mut journaled = 0;
    let frames = [
        (
            "c-message",
            Value::Array(vec![
                Value::from("hand.web"),
                Value::from(1_700_000_000),
                record("message"),
                options("c-message", false),
            ]),
        ),
        (
            "c-forward",
            Value::Array(vec![
                Value::from("hand.web"),
                Value::Array(vec![
                    Value::Array(vec![event_time(1_700_000_001, 5), record("forward 1")]),
                    Value::Array(vec![Value::from(1_700_000_002), record("forward 2")]),
                ]),
                options("c-forward", false),
            ]),
        ),
        (
            "c-packed",
            Value::Array(vec![
                Value::from("hand.web"),
                Value::Binary(packed(&["packed 1", "packed 2"])),
                options("c-packed", false),
            ]),
        ),
        (
            "c-gzip",
            Value::Array(vec![
                Value::from("hand.web"),
                Value::Binary(gz),
                options("c-gzip", true),
            ]),
        ),
    ];
    for (chunk, frame) in &frames {
        // Split each frame across two writes to exercise partial reads.
        let bytes = encode(frame);
        let (a, b) = bytes.split_at(bytes.len() / 2);
        conn.write_all(a).await.unwrap();
        conn.flush().await.unwrap();
        conn.write_all(b).await.unwrap();
        let ack = read_ack(&mut conn).await;
        assert_eq!(
            ack,
            Value::Map(vec![(Value::from("ack"), Value::from(*chunk))])
        );
        // Checked at once, without waiting: the ack came after the journal append.
        journaled += if *chunk == "c-message" { 1 } else { 2 };
        assert!(
            h.journal.stats().last_id >= journaled,
            "{chunk} acked before its lines were journaled"
        );
    }
    // A heartbeat (nil) is accepted silently.
    conn.write_all(&[0xc0]).await.unwrap();
    // A UDP heartbeat to the forward port is answered.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(&[0xc0], h.forward()).await.unwrap();
    let mut reply = [0xffu8; 8];
    let (n, _) = tokio::time::timeout(ingest_support::DEADLINE, udp.recv_from(&mut reply))
        .await
        .expect("no heartbeat reply")
        .unwrap();
    assert_eq!(&reply[..n], paas_logshipper::ingest::HEARTBEAT_REPLY);
    let got = h.log("hand", "lines=100").await;
    assert_eq!(
        messages(&got),
        vec![
            "message",
            "forward 1",
            "forward 2",
            "packed 1",
            "packed 2",
            "gz 1",
            "gz 2"
        ]
    );
    assert_eq!(got[0]["timestamp_ns"], 1_700_000_000_000_000_000i64);
    assert_eq!(got[1]["timestamp_ns"], 1_700_000_001_000_000_005i64);
    assert_eq!(got[1]["stream"], "stderr");
    assert_eq!(got[1]["job"], "j9");
    assert_eq!(got[1]["process_type"], "web");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_input_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), |c| {
        c.max_message_bytes = 64 * 1024;
        c.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let addr = h.forward();
    let mut good = TcpStream::connect(addr).await.unwrap();
    let msg = |m: &str| {
        encode(&Value::Array(vec![
            Value::from("iso"),
            Value::from(1),
            record(m),
        ]))
    };
    good.write_all(&msg("first")).await.unwrap();
    h.wait_for_lines("iso", 1).await;

    // Valid message then an invalid marker: the valid one is kept.
    let mut bad = TcpStream::connect(addr).await.unwrap();
    let mut bytes = msg("kept before garbage");
    bytes.extend_from_slice(&[0xc1, 0xc1, 0xc1]);
    bad.write_all(&bytes).await.unwrap();
    read_until_closed(&mut bad).await;

    // Valid MessagePack that is not a forward message.
    let mut wrong = TcpStream::connect(addr).await.unwrap();
    wrong
        .write_all(&encode(&Value::from("just a string")))
        .await
        .unwrap();
    read_until_closed(&mut wrong).await;

    // A 1 MiB message over the 64 KiB limit.
    let mut big = TcpStream::connect(addr).await.unwrap();
    let huge = msg(&"x".repeat(1 << 20));
    let _ = big.write_all(&huge).await;
    read_until_closed(&mut big).await;

    // A stalled half message.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    let half = msg("never finished");
    stalled.write_all(&half[..half.len() / 2]).await.unwrap();
    read_until_closed(&mut stalled).await;

    good.write_all(&msg("last")).await.unwrap();
    let got = h.wait_for_lines("iso", 3).await;
    assert_eq!(messages(&got), vec!["first", "kept before garbage", "last"]);
    for needle in [
        r#"logshipper_parse_errors_total{input="forward",reason="frame"} 1"#,
        r#"logshipper_parse_errors_total{input="forward",reason="decode"} 1"#,
        r#"logshipper_parse_errors_total{input="forward",reason="too_large"} 1"#,
        r#"logshipper_parse_errors_total{input="forward",reason="stalled"} 1"#,
    ] {
        h.wait_for_metric(needle).await;
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amplifying_input_is_bounded_and_others_keep_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path(), |c| {
        c.idle_timeout = Duration::from_millis(500);
    })
    .await;
    let addr = h.forward();
    // The 232 bytes that once built a 536 MB line, on eight connections at once.
    let hostile = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/regressions/forward/nested-map-keys-536mb-line.bin"
    ))
    .unwrap();
    let mut senders = Vec::new();
    for _ in 0..8 {
        let hostile = hostile.clone();
        senders.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&hostile).await.unwrap();
            s.shutdown().await.unwrap();
            read_until_closed(&mut s).await;
        }));
    }
    // One Forward message of 200,000 three-byte entries `[0, {}]`: accepted whole, in
    // bounded batches, each entry one line of `{}`.
    let n = 200_000u32;
    let mut msg = vec![0x93, 0xa4];
    msg.extend_from_slice(b"tiny");
    msg.push(0xdd);
    msg.extend_from_slice(&n.to_be_bytes());
    for _ in 0..n {
        msg.extend_from_slice(&[0x92, 0x00, 0x80]);
    }
    rmpv::encode::write_value(&mut msg, &options("t1", false)).unwrap();
    let mut tiny = TcpStream::connect(addr).await.unwrap();
    tiny.write_all(&msg).await.unwrap();
    let ack = read_ack(&mut tiny).await;
    assert_eq!(
        ack,
        Value::Map(vec![(Value::from("ack"), Value::from("t1"))])
    );
    for s in senders {
        s.await.unwrap();
    }
    let mut good = TcpStream::connect(addr).await.unwrap();
    good.write_all(&encode(&Value::Array(vec![
        Value::from("calm"),
        Value::from(1),
        record("still here"),
    ])))
    .await
    .unwrap();
    let got = h.wait_for_lines("calm", 1).await;
    assert_eq!(messages(&got), vec!["still here"]);
    let tiny_lines = h.log("tiny", "lines=3").await;
    assert_eq!(messages(&tiny_lines), vec!["{}", "{}", "{}"]);
    let metrics = h.metrics().await;
    let received: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"logshipper_lines_received_total{input="forward"} "#))
        .expect("forward lines metric")
        .parse()
        .unwrap();
    assert!(received > u64::from(n), "{received} lines received");
    h.stop().await;
}
