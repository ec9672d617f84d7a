//! TLS with the group's certificate, against real etcd, two real supervisors and real
//! redis-servers: through the leader-following endpoint, `redis-cli --tls --cacert`
//! and redis-rs (`rediss://`, the CA as its root) connect and write; a client trusting
//! another CA is refused, and so is a plain client (the plain port is off). Replication
//! runs over TLS (the only port a member has), before and after the primary's
//! redis-server is killed.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{make_ca, password, Harness};

/// `redis-cli` through the endpoint over TLS, trusting `ca_file`.
fn redis_cli(h: &Harness, ca_file: &Path, args: &[&str]) -> Output {
    let addr = h.endpoint.local_addr();
    std::process::Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["--tls", "--cacert"])
        .arg(ca_file)
        .args(["--user", "default", "--no-auth-warning"])
        .env("REDISCLI_AUTH", password())
        .args(args)
        .output()
        .expect("redis-cli runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// SET then GET of `key` with redis-rs over TLS trusting `ca_file`.
async fn set_get(url: &str, ca_file: &Path, key: &str) -> Result<String, String> {
    let client = paas_redis::tls::open(url, Some(ca_file)).map_err(|e| e.to_string())?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    redis::cmd("SET")
        .arg(key)
        .arg("v")
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    redis::cmd("GET")
        .arg(key)
        .query_async::<String>(&mut conn)
        .await
        .map_err(|e| e.to_string())
}

/// Waits until the primary (through the endpoint, with redis-cli over TLS) reports
/// `replicas` online replicas.
fn wait_replicas_online(h: &Harness, ca_file: &Path, replicas: usize) {
    let started = std::time::Instant::now();
    loop {
        let out = redis_cli(h, ca_file, &["INFO", "replication"]);
        let info = text(&out);
        let online = info
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains("state=online"))
            .count();
        if info.contains("role:master") && online == replicas {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "replicas not online over TLS: {info}\n{}",
            h.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_and_replication_verify_the_group_certificate() {
    let h = Harness::start_with(2, true).await;
    let ca_file = h.ca_file.clone().expect("a CA");
    let url = h.url();
    assert!(url.starts_with("rediss://"), "{url}");

    let out = redis_cli(&h, &ca_file, &["PING"]);
    assert_eq!(text(&out), "PONG", "redis-cli --tls --cacert");
    assert_eq!(
        set_get(&url, &ca_file, "k1")
            .await
            .expect("redis-rs over TLS"),
        "v"
    );

    // Another CA: refused by both clients' verification.
    let _other = make_ca(h.dir.path(), "other-ca.pem", "another CA");
    let other_ca = h.dir.path().join("other-ca.pem");
    let out = redis_cli(&h, &other_ca, &["PING"]);
    assert_ne!(text(&out), "PONG", "redis-cli trusting another CA");
    assert!(set_get(&url, &other_ca, "k2").await.is_err());

    // Plain: the member's only port speaks TLS.
    let plain = url.replacen("rediss://", "redis://", 1);
    assert!(
        set_get(&plain, &ca_file, "k3").await.is_err(),
        "plain client served"
    );

    // Each member: plain port off, replication over TLS.
    for m in h.group.members() {
        let conf = std::fs::read_to_string(m.dir.join("redis.conf")).unwrap();
        for line in ["port 0", "tls-replication yes", "tls-auth-clients no"] {
            assert!(conf.lines().any(|l| l == line), "{}: no {line:?}", m.name);
        }
    }
    wait_replicas_online(&h, &ca_file, 1);

    let state = h.wait_healthy(Duration::from_secs(60), None).await;
    let i = h.index(&state.primary);
    let pid = h.redis_pid(i).expect("redis.pid");
    // SAFETY: kill(2) on the redis-server of a test group.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let after = h
        .wait_healthy(Duration::from_secs(60), Some(&state.primary))
        .await;
    println!("failover: {} -> {}", state.primary, after.primary);
    wait_replicas_online(&h, &ca_file, 1);
    assert_eq!(
        set_get(&url, &ca_file, "k4")
            .await
            .expect("after the failover"),
        "v"
    );
}
