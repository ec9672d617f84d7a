//! A Redis resource through `paas cluster backup` and `paas cluster restore`, end to end
//! with real `paas up`s (Redis alone, so every restart is the Redis group's): a group
//! holding keys backed up; the first cluster stopped; the file restored into a new data
//! dir; a `paas up` on it while something else holds the group's endpoint port stops,
//! naming the port, and the next one resumes: the same REDIS_URL serves the same keys,
//! verified with a REDIS_TLS_CA that names the new data dir's CA (the restored cluster
//! has a new one); removing the resource there leaves the old cluster's group alone.

mod common;

use std::path::Path;

use common::{ok, paas, up_fails};

fn json(out: String) -> serde_json::Value {
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `paas redis cli -a cache -- ARGS` (redis-cli on the app's REDIS_URL, verifying the
/// server with its REDIS_TLS_CA); its output.
fn cli(home: &Path, args: &[&str]) -> String {
    let mut all = vec!["redis", "cli", "-a", "cache", "--"];
    all.extend_from_slice(args);
    ok(paas(home, &all)).trim().to_string()
}

/// What the test compares: the key count and some keys of each type.
fn state(home: &Path) -> Vec<String> {
    vec![
        cli(home, &["DBSIZE"]),
        cli(home, &["GET", "k:1"]),
        cli(home, &["GET", "k:300"]),
        cli(home, &["HGETALL", "h"]),
        cli(home, &["LRANGE", "l", "0", "-1"]),
    ]
}

#[test]
fn a_redis_group_comes_back_behind_its_url_and_a_taken_port_is_resumed() {
    let tmp = common::home();
    let home = tmp.path();
    let (up, _) = common::start_up(home, &common::free_addr(), &[]);
    ok(paas(home, &["apps", "create", "cache"]));
    let added = json(ok(paas(
        home,
        &[
            "--json",
            "resource",
            "add",
            "redis",
            "-a",
            "cache",
            "--members",
            "1",
        ],
    )));
    let id = added["id"].as_str().unwrap().to_string();
    let url = added["env"]["REDIS_URL"].as_str().unwrap().to_string();
    assert!(url.starts_with("rediss://"), "{url}");
    cli(
        home,
        &[
            "EVAL",
            "for i = 1, 300 do redis.call('SET', 'k:' .. i, 'v' .. i) end return 1",
            "0",
        ],
    );
    cli(home, &["HSET", "h", "a", "1"]);
    cli(home, &["RPUSH", "l", "x", "y"]);
    let before = state(home);
    assert_eq!(before[0], "302");
    let file = home.join("cluster.tar");
    let report = ok(paas(home, &["cluster", "backup", file.to_str().unwrap()]));
    assert!(report.contains("redis"), "{report}");
    up.stop();

    let tmp2 = common::home();
    let home2 = tmp2.path();
    ok(paas(
        home2,
        &[
            "cluster",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            home2.join("data").to_str().unwrap(),
        ],
    ));
    // Something else on the group's endpoint port: the Redis step fails, naming it,
    // and the restore waits for the next start.
    let endpoint = paas_redis::provision::parse_url(&url).unwrap().endpoint;
    let squatter = std::net::TcpListener::bind(endpoint).unwrap();
    let stderr = up_fails(home2, &["--postgres-members", "0"]);
    assert!(stderr.contains(&format!("{endpoint} ")), "{stderr}");
    assert!(stderr.contains("is in use"), "{stderr}");
    assert!(home2.join("data/restore/pending.json").exists());
    drop(squatter);

    let (up2, _) = common::start_up(home2, &common::free_addr(), &[]);
    assert!(!home2.join("data/restore").exists());
    let env = json(ok(paas(home2, &["--json", "env", "get", "-a", "cache"])));
    assert_eq!(env["REDIS_URL"].as_str(), Some(url.as_str()));
    let ca = env["REDIS_TLS_CA"].as_str().unwrap();
    assert_eq!(
        Path::new(ca).canonicalize().unwrap(),
        home2.join("data/ca.pem").canonicalize().unwrap()
    );
    assert_ne!(
        std::fs::read(ca).unwrap(),
        std::fs::read(home.join("data/ca.pem")).unwrap(),
        "the restored cluster has a CA of its own"
    );
    assert_eq!(state(home2), before);
    cli(home2, &["SET", "after", "1"]);
    let releases = json(ok(paas(home2, &["--json", "releases", "-a", "cache"])));
    let newest = releases[0]["description"].as_str().unwrap();
    assert!(
        newest.starts_with("Cluster restore: the CA is now"),
        "{newest}"
    );

    // Removing the resource removes the restored group, not the old cluster's.
    let group = paas_redis::provision::group_name(&id).unwrap();
    assert!(home2.join("data/redis").join(&group).exists());
    ok(paas(home2, &["resource", "remove", &id, "-a", "cache"]));
    assert!(!home2.join("data/redis").join(&group).exists());
    assert!(home.join("data/redis").join(&group).exists());
    up2.stop();
}
