//! MariaDB as a user gets it from `paas up --appliance mysql=3`: `resource add mysql`
//! hands out a DATABASE_URL (and MYSQL_URL) through the leader-following endpoint;
//! `mysql shell` uses it; the primary's job dies and writes resume through the same URL;
//! `mysql info` shows the cluster; `resource remove` drops the database and user.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{ok, paas, Daemon};

fn start(home: &Path, listen: &str, my: &str) -> Daemon {
    let (up, out) = common::start_up(
        home,
        listen,
        &[
            "--appliance",
            "mysql=3",
            "--appliance-listen",
            &format!("mysql={my}"),
        ],
    );
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("mysql:") && l.contains(my)),
        "{out}"
    );
    up
}

fn shell(home: &Path, app: &str, sql: &str) -> std::process::Output {
    paas(
        home,
        &["mysql", "shell", "-a", app, "--", "-N", "-B", "-e", sql],
    )
}

#[test]
fn resource_add_mysql_gives_a_working_database_that_fails_over() {
    let tmp = tempfile::tempdir().unwrap();
    // The members run as the mysql user: it must traverse to the data dir.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = tmp.path();
    let listen = format!("127.0.0.1:{}", paas_it::free_port().unwrap());
    let my = format!("127.0.0.1:{}", paas_it::free_port().unwrap());
    let up = start(home, &listen, &my);

    ok(paas(home, &["apps", "create", "shop"]));
    let r: serde_json::Value = serde_json::from_str(&ok(paas(
        home,
        &["--json", "resource", "add", "mysql", "-a", "shop"],
    )))
    .unwrap();
    let id = r["id"].as_str().unwrap().to_string();
    let url = r["env"]["DATABASE_URL"].as_str().unwrap().to_string();
    assert!(url.starts_with("mysql://"), "{url}");
    assert!(url.contains(&my), "{url} must go through the endpoint {my}");
    assert_eq!(r["env"]["MYSQL_URL"].as_str(), Some(url.as_str()));
    let password = r["env"]["MYSQL_PASSWORD"].as_str().unwrap();
    assert!(password.len() >= 32, "password of at least 128 bits");

    let out = ok(shell(
        home,
        "shop",
        "create table t (x int primary key); insert into t values (42); select x from t",
    ));
    assert_eq!(out, "42\n");
    // `paas up` is ready once the primary takes writes with one replica acknowledging;
    // the third member may still be seeding its empty data dir from the primary
    // (mariadb-backup), which on a slow machine outlasts the steps above.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let info = loop {
        let info = ok(paas(home, &["mysql", "info"]));
        if info.matches(" yes ").count() == 3 || std::time::Instant::now() > deadline {
            break info;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(info.contains("mysql cluster main: generation"), "{info}");
    assert_eq!(
        info.matches(" yes ").count(),
        3,
        "three running members: {info}"
    );

    // kill -9 of the primary's job: its supervisor's process group. mariadbd leads a
    // group of its own and dies by its parent-death signal a moment later. The sync takes
    // over behind the same DATABASE_URL and every acknowledged row is there.
    let primary_port: u16 = ok(shell(home, "shop", "select @@port"))
        .trim()
        .parse()
        .unwrap();
    let member = primary_port
        .checked_sub(13306) // member N listens on 13306 + N of the cluster's address
        .filter(|m| *m < 3)
        .expect("primary is a member");
    let jobs: serde_json::Value =
        serde_json::from_str(&ok(paas(home, &["--json", "ps", "-a", "paas-mysql"]))).unwrap();
    let job = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["process_type"] == format!("my{member}"))
        .unwrap();
    // SAFETY: kill(2) on the process group of a job of this test's platform.
    unsafe { libc::kill(-(job["pid"].as_i64().unwrap() as i32), libc::SIGKILL) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // Only a write that was not acknowledged is sent again (`insert ignore`: it may have
    // been committed all the same). One acknowledged by the old primary, in the moment
    // before its mariadbd died (a replica acknowledged it too), is not: it must be on
    // the new primary, which then answers the reads.
    let mut taken_by_old = false;
    loop {
        let sql = if taken_by_old {
            "select @@port"
        } else {
            "insert ignore into t values (43); select @@port"
        };
        let out = shell(home, "shop", sql);
        if out.status.success() {
            let port: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            if port != primary_port {
                break;
            }
            taken_by_old = true;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "writes did not resume: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        ok(shell(home, "shop", "select x from t order by x")),
        "42\n43\n"
    );

    // Removing the resource drops the database and unsets the variables.
    ok(paas(home, &["resource", "remove", &id, "-a", "shop"]));
    let env = ok(paas(home, &["env", "get", "-a", "shop"]));
    assert!(!env.contains("DATABASE_URL"), "{env}");
    assert!(!shell(home, "shop", "select 1").status.success());
    up.stop();
}
