//! Redis as a user gets it from `paas up`: `resource add redis` creates a dedicated
//! replication group and hands out a REDIS_URL through its leader-following endpoint;
//! `redis cli` uses it; one app's password does not open another's group; the primary's
//! job dies and a `WAIT`-confirmed write is still there behind the same URL; the group
//! comes back with its data after a restart of `paas up`; `resource remove` stops it and
//! deletes its data, its records and its system app.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ok, paas, Daemon};

fn start(home: &Path, listen: &str) -> Daemon {
    common::start_up(home, listen, &["--redis-members", "2"]).0
}

fn cli(home: &Path, app: &str, args: &[&str]) -> String {
    let mut all = vec!["redis", "cli", "-a", app, "--"];
    all.extend_from_slice(args);
    ok(paas(home, &all)).trim().to_string()
}

/// `(host, port, password)` of a `rediss://default:PASSWORD@HOST:PORT` URL (the group
/// has a certificate of the cluster CA).
fn parts(url: &str) -> (String, String, String) {
    let rest = url.strip_prefix("rediss://default:").expect("rediss URL");
    let (password, hostport) = rest.rsplit_once('@').unwrap();
    let (host, port) = hostport.trim_end_matches('/').rsplit_once(':').unwrap();
    (host.into(), port.into(), password.into())
}

#[test]
fn resource_add_redis_gives_a_dedicated_group_that_survives_failover_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    // The members run redis-server as the redis user: it must traverse to the data dir.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = tmp.path();
    let listen = format!("127.0.0.1:{}", paas_it::free_port().unwrap());
    let up = start(home, &listen);

    ok(paas(home, &["apps", "create", "shop"]));
    ok(paas(home, &["apps", "create", "blog"]));
    let r: serde_json::Value = serde_json::from_str(&ok(paas(
        home,
        &["--json", "resource", "add", "redis", "-a", "shop"],
    )))
    .unwrap();
    let id = r["id"].as_str().unwrap().to_string();
    let group = r["data"]["group"].as_str().unwrap().to_string();
    let url = r["env"]["REDIS_URL"].as_str().unwrap().to_string();
    let (host, port, password) = parts(&url);
    assert_eq!(host, "127.0.0.1");
    let ca = r["env"]["REDIS_TLS_CA"].as_str().unwrap().to_string();
    assert!(Path::new(&ca).exists(), "REDIS_TLS_CA {ca} does not exist");
    assert!(
        password.len() >= 32,
        "password of at least 128 bits: {password}"
    );
    ok(paas(
        home,
        &["resource", "add", "redis", "-a", "blog", "--members", "1"],
    ));

    assert_eq!(cli(home, "shop", &["SET", "k", "v"]), "OK");
    assert_eq!(cli(home, "shop", &["WAIT", "1", "2000"]), "1");
    let info = ok(paas(home, &["redis", "info", "-a", "shop"]));
    assert!(
        info.contains(&format!("redis group {group}: generation 1")),
        "{info}"
    );

    // Blog's password does not open shop's group.
    let blog_env: serde_json::Value =
        serde_json::from_str(&ok(paas(home, &["--json", "env", "get", "-a", "blog"]))).unwrap();
    let (_, _, blog_password) = parts(blog_env["REDIS_URL"].as_str().unwrap());
    let cross = Command::new("redis-cli")
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "--user",
            "default",
            "--no-auth-warning",
            "--tls",
            "--cacert",
            &ca,
        ])
        .env("REDISCLI_AUTH", &blog_password)
        .args(["GET", "k"])
        .output()
        .unwrap();
    let cross = String::from_utf8_lossy(&cross.stdout).to_string()
        + &String::from_utf8_lossy(&cross.stderr);
    assert!(
        cross.contains("WRONGPASS") || cross.contains("NOAUTH"),
        "{cross}"
    );

    // kill -9 the primary's whole job (supervisor and redis-server): the replica takes
    // over behind the same URL with the confirmed write.
    let member = info
        .split_once(", primary r")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no primary in {info}"));
    let system_app = format!("paas-redis-{group}");
    let jobs: serde_json::Value =
        serde_json::from_str(&ok(paas(home, &["--json", "ps", "-a", &system_app]))).unwrap();
    let job = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["process_type"] == format!("r{member}"))
        .unwrap();
    unsafe { libc::kill(-(job["pid"].as_i64().unwrap() as i32), libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = paas(
            home,
            &["redis", "cli", "-a", "shop", "--", "SET", "k2", "v2"],
        );
        if String::from_utf8_lossy(&out.stdout).trim() == "OK" {
            break;
        }
        assert!(Instant::now() < deadline, "writes did not resume");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(cli(home, "shop", &["GET", "k"]), "v");

    up.stop();
    let up = start(home, &listen);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = paas(home, &["redis", "cli", "-a", "shop", "--", "GET", "k"]);
        if String::from_utf8_lossy(&out.stdout).trim() == "v" {
            break;
        }
        if Instant::now() >= deadline {
            // Say why: the daemon's lines about the group.
            let log = std::fs::read_to_string(home.join("paas-up.log")).unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("redis") && !l.contains("logshipper"))
                .rev()
                .take(25)
                .collect();
            panic!(
                "the group did not come back with its data:\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    ok(paas(home, &["resource", "remove", &id, "-a", "shop"]));
    let env = ok(paas(home, &["env", "get", "-a", "shop"]));
    assert!(!env.contains("REDIS_URL"), "{env}");
    let gone = Command::new("redis-cli")
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "--user",
            "default",
            "--no-auth-warning",
        ])
        .env("REDISCLI_AUTH", &password)
        .arg("PING")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&gone.stdout).contains("PONG"),
        "the removed group must be gone"
    );
    // Nothing of it is left: no system app, no directory, no records.
    let apps = ok(paas(home, &["apps", "list"]));
    assert!(!apps.contains(&system_app), "{apps}");
    assert!(apps.contains("shop"), "{apps}");
    assert!(
        !home.join("data/redis").join(&group).exists(),
        "the group's directory must be deleted"
    );
    let info = paas(home, &["redis", "info", "-a", "shop"]);
    assert!(!info.status.success(), "shop has no redis resource left");
    let cluster: serde_json::Value =
        serde_json::from_str(&ok(paas(home, &["--json", "cluster", "status"]))).unwrap();
    assert!(
        cluster["providers"]["redis"]["groups"]
            .get(&group)
            .is_none(),
        "the group's records must be deleted: {cluster}"
    );
    up.stop();
}
