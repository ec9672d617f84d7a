//! A flood of hostile log input must not starve the control plane: for `FLOOD_SECS`
//! (default 60) seconds, both log inputs of `paas up` get hostile input at full speed
//! (the Forward message that once built a 536 MB line, garbage, oversized and invalid
//! syslog frames) while a writer commits through DATABASE_URL. Expected: no lease of
//! the process is lost, the Postgres cluster does not fail over, the writer never waits
//! more than 2 s between acknowledged commits, and another app's lines still arrive.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ok, paas};

const HOSTILE_FORWARD: &[u8] =
    include_bytes!("../../../logshipper/tests/regressions/forward/nested-map-keys-536mb-line.bin");

fn addr_after(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {label} in {out}"))
        .to_string()
}

fn generation(home: &std::path::Path) -> u64 {
    let info = ok(paas(home, &["pg", "info"]));
    let first = info.lines().next().unwrap_or_default();
    first
        .split("generation ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or_else(|| panic!("no generation in {info}"))
}

/// Sends `payload` over fresh connections until `stop`, as fast as the server takes it;
/// counts connections.
fn flood(addr: String, payload: Vec<u8>, stop: Arc<AtomicBool>, conns: Arc<AtomicU64>) {
    let mut sink = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(&addr) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        conns.fetch_add(1, Ordering::Relaxed);
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        // Keep writing until the server closes the connection (it must, on this input).
        while !stop.load(Ordering::Relaxed) && s.write_all(&payload).is_ok() {}
        let _ = s.read(&mut sink);
    }
}

fn syslog_hostile() -> Vec<u8> {
    let mut out = Vec::new();
    // Invalid UTF-8 (each byte would become three) in valid frames of an app.
    let msg = [b"<14>1 - h flood web.1 stdout - ".as_slice(), &[0xff; 2000]].concat();
    for _ in 0..20 {
        out.extend_from_slice(format!("{} ", msg.len()).as_bytes());
        out.extend_from_slice(&msg);
    }
    // Framed garbage that is not RFC 5424, then a frame over the size limit.
    out.extend_from_slice(b"11 not syslog");
    out.extend_from_slice(b"99999999 <14>1");
    out
}

#[test]
fn hostile_log_flood_does_not_starve_the_control_plane() {
    let secs: u64 = std::env::var("FLOOD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = tmp.path();
    let listen = common::free_addr();
    let pg = common::free_addr();
    let log_path = home.join("paas-up.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (up, out) = common::start_up_logged(
        home,
        &listen,
        &[
            "--postgres-listen",
            &pg,
            "--postgres-members",
            "3",
            // The hostile syslog bytes must reach the parser, so they go to the plain
            // input; the TLS one is flooded too, with connections it refuses.
            "--unauthenticated-syslog-listen",
            "127.0.0.1:0",
        ],
        &[("RUST_LOG", "info")],
        log.into(),
    );
    let syslog = addr_after(&out, "syslog-unauthenticated:");
    let tls_syslog = addr_after(&out, "syslog:");
    let forward = addr_after(&out, "forward:");

    ok(paas(home, &["apps", "create", "shop"]));
    ok(paas(home, &["apps", "create", "calm"]));
    let r: serde_json::Value = serde_json::from_str(&ok(paas(
        home,
        &["--json", "resource", "add", "postgres", "-a", "shop"],
    )))
    .unwrap();
    let url = r["env"]["DATABASE_URL"].as_str().unwrap().to_string();
    let gen_before = generation(home);

    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let writer = {
        let stop = Arc::clone(&stop);
        rt.spawn(async move {
            let mut commits = 0u64;
            let mut last = Instant::now();
            let mut longest = Duration::ZERO;
            let mut client = None;
            while !stop.load(Ordering::Relaxed) {
                if client.is_none() {
                    match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                        Ok((c, conn)) => {
                            tokio::spawn(conn);
                            let _ = c
                                .batch_execute("create table if not exists w (n bigint)")
                                .await;
                            client = Some(c);
                        }
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                let c = client.as_ref().unwrap();
                let n = commits as i64;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&n];
                let write = c.execute("insert into w values ($1)", &params);
                match tokio::time::timeout(Duration::from_secs(5), write).await {
                    Ok(Ok(_)) => {
                        commits += 1;
                        longest = longest.max(last.elapsed());
                        last = Instant::now();
                    }
                    _ => client = None,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            longest = longest.max(last.elapsed());
            (commits, longest)
        })
    };

    let conns = Arc::new(AtomicU64::new(0));
    let mut flooders = Vec::new();
    for (addr, payload) in [
        (forward.clone(), HOSTILE_FORWARD.to_vec()),
        (forward.clone(), vec![0xc1; 4096]),
        (syslog.clone(), syslog_hostile()),
        (syslog.clone(), b"\x00garbage".repeat(512)),
        (tls_syslog.clone(), syslog_hostile()),
    ] {
        let (stop, conns) = (Arc::clone(&stop), Arc::clone(&conns));
        flooders.push(std::thread::spawn(move || {
            flood(addr, payload, stop, conns)
        }));
    }

    // Another app logs a line every second through the same input, during the flood.
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        if let Ok(mut s) = TcpStream::connect(&syslog) {
            let msg = format!("<14>1 - h calm web.1 stdout - calm {sent}");
            if s.write_all(format!("{} {msg}", msg.len()).as_bytes())
                .is_ok()
            {
                sent += 1;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    let (commits, longest) = rt.block_on(writer).unwrap();
    let gen_after = generation(home);
    let calm = ok(paas(home, &["log", "-a", "calm", "-n", "1000"]));
    let arrived = (0..sent)
        .filter(|i| calm.contains(&format!("calm {i}\n")))
        .count();
    up.stop();

    let log = std::fs::read_to_string(&log_path).unwrap();
    let lost = log.matches("lease lost").count();
    println!(
        "flood {secs} s: {} hostile connections; writer {commits} commits, longest gap {longest:?}; \
         generation {gen_before} -> {gen_after}; leases lost {lost}; calm lines {arrived}/{sent}",
        conns.load(Ordering::Relaxed)
    );
    assert!(conns.load(Ordering::Relaxed) > 100, "the flood did not run");
    assert_eq!(lost, 0, "leases lost during the flood:\n{log}");
    assert_eq!(gen_before, gen_after, "the Postgres cluster failed over");
    assert!(
        longest <= Duration::from_secs(2),
        "writer waited {longest:?}"
    );
    assert!(commits > secs * 10, "only {commits} commits");
    assert_eq!(arrived, sent, "calm lines lost:\n{calm}");
}
