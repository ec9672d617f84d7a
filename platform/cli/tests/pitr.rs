//! `paas pg restore --to-time` as a user gets it from `paas up`: the members archive
//! into `DATA_DIR/postgres/pgbackrest`, the restore lands in a new database attached
//! as its own variable (DATABASE_URL untouched), its steps are in the app's log, and a
//! time in the future is refused. Then the same from an S3 repository, as `paas up
//! --backup-store s3://...` with an HTTPS S3 endpoint (moto behind a TLS terminator)
//! whose CA is in `AWS_CA_BUNDLE` gives it: the members archive into the bucket under
//! `<prefix>/pgbackrest`, nothing into the data dir; `paas backup create` reaches the
//! same store; the restore finds the rows of the moment.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{fails, ok, paas};

fn psql_url(url: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([url, "-tA", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn psql(home: &Path, app: &str, sql: &str) -> String {
    ok(paas(
        home,
        &["pg", "psql", "-a", app, "--", "-tA", "-c", sql],
    ))
    .trim()
    .to_string()
}

/// Waits until the repository lists a complete full base backup (`backup.info` names
/// it once it ended), then a second more (pgBackRest records its end in whole seconds).
fn wait_for_base_backup(home: &Path) {
    let info = home.join("data/postgres/pgbackrest/backup/main/backup.info");
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&info).unwrap_or_default();
        if text.contains("F={") {
            std::thread::sleep(Duration::from_secs(1));
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no base backup in {}: {text}",
            info.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn utc_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string()
}

/// Inserts orders 1-100 into app `shop`'s database, notes the time, then inserts
/// 101-200 and runs `then`; returns the noted time (UTC, as `--to-time` takes it).
fn a_moment_between(home: &Path, then: &str) -> String {
    psql(
        home,
        "shop",
        "insert into orders select generate_series(1, 100)",
    );
    std::thread::sleep(Duration::from_millis(200));
    let noted = utc_now();
    std::thread::sleep(Duration::from_millis(200));
    psql(
        home,
        "shop",
        &format!("insert into orders select generate_series(101, 200); {then}"),
    );
    noted
}

/// `paas --json pg restore -a shop --to-time AT`: what it answered, the variable the
/// restored database is attached as, and that variable's URL.
fn restore_to_time(home: &Path, at: &str) -> (serde_json::Value, String, String) {
    let said = ok(paas(
        home,
        &["--json", "pg", "restore", "-a", "shop", "--to-time", at],
    ));
    let restored: serde_json::Value =
        serde_json::from_str(&said).unwrap_or_else(|e| panic!("{e}: {said}"));
    let variable = restored["variable"].as_str().unwrap().to_string();
    let url = ok(paas(home, &["env", "get", "-a", "shop", &variable]))
        .trim()
        .to_string();
    (restored, variable, url)
}

#[test]
fn a_point_in_time_restore_through_the_cli() {
    let tmp = common::home();
    let home = tmp.path();
    let listen = common::free_addr();
    let pg = common::free_addr();
    let (_up, _) = common::start_up(
        home,
        &listen,
        &["--postgres-listen", &pg, "--postgres-members", "2"],
    );
    ok(paas(home, &["apps", "create", "shop"]));
    ok(paas(home, &["resource", "add", "postgres", "-a", "shop"]));
    psql(
        home,
        "shop",
        "create table orders (id int primary key); create table gone (x int); \
         insert into gone values (7)",
    );
    wait_for_base_backup(home);

    let noted = a_moment_between(home, "drop table gone");

    fails(
        paas(
            home,
            &[
                "pg",
                "restore",
                "-a",
                "shop",
                "--to-time",
                "2999-01-01 00:00:00",
            ],
        ),
        "in the future",
    );
    let (restored, variable, url) = restore_to_time(home, &noted);
    assert!(
        variable.starts_with("POSTGRES_") && variable.ends_with("_URL"),
        "{restored}"
    );
    assert_eq!(
        psql_url(&url, "select count(*), min(id), max(id) from orders"),
        "100|1|100"
    );
    assert_eq!(psql_url(&url, "select x from gone"), "7");
    // The app's own database is untouched and still its DATABASE_URL.
    assert_eq!(psql(home, "shop", "select count(*) from orders"), "200");
    let resources = ok(paas(home, &["resource", "list", "-a", "shop"]));
    assert!(
        resources.contains(restored["resource"].as_str().unwrap()),
        "{resources}"
    );

    let started = Instant::now();
    loop {
        let log = ok(paas(home, &["log", "-a", "shop", "--type", "backup"]));
        if log.contains("point-in-time restore") && log.contains("done:") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no restore lines in the log: {log}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        std::fs::read_dir(home.join("data/postgres/pitr"))
            .unwrap()
            .next()
            .is_none(),
        "the scratch instance is gone"
    );
}

/// The bucket of the S3 test.
const BUCKET: &str = "paas-backups";

/// The members' log lines and pgBackRest's own logs, for a failure's message.
fn member_logs(home: &Path) -> String {
    let log = paas(home, &["log", "-a", "paas-postgres", "-n", "60"]);
    let mut out = String::from_utf8_lossy(&log.stdout).to_string();
    for member in ["pg0", "pg1"] {
        let dir = home.join("data/postgres").join(member).join("pgbackrest");
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out.push_str(&format!("--- {}\n", entry.path().display()));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
    }
    out
}

#[test]
fn a_point_in_time_restore_from_the_s3_backup_store() {
    let s3 = paas_it::S3Server::start_tls().expect("moto behind TLS");
    s3.create_bucket(BUCKET).unwrap();
    let endpoint = s3.tls().unwrap().endpoint();
    let tmp = common::home();
    let home = tmp.path();
    let (_up, out) = common::start_up_on_s3(home, &s3, "s3://paas-backups/cluster-a");
    assert!(
        out.contains(&format!(
            "pitr:     s3://paas-backups/cluster-a/pgbackrest at {endpoint}"
        )),
        "{out}"
    );
    ok(paas(home, &["apps", "create", "shop"]));
    ok(paas(home, &["resource", "add", "postgres", "-a", "shop"]));
    psql(
        home,
        "shop",
        "create table orders (id int primary key); insert into orders values (0)",
    );
    // The logical backups reach the same store over the same verified HTTPS.
    ok(paas(home, &["backup", "create", "-a", "shop"]));

    // The first full base backup, in the bucket: its manifest is written when it ends.
    let started = Instant::now();
    let backups = "cluster-a/pgbackrest/backup/main/2";
    loop {
        let keys = s3.keys_under(BUCKET, backups).unwrap_or_default();
        if keys.iter().any(|k| k.ends_with("F/backup.manifest")) {
            // Then backup.info names it; and pgBackRest records its end in whole seconds.
            std::thread::sleep(Duration::from_secs(2));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no base backup in s3://{BUCKET}/{backups}...\n{}",
            member_logs(home)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !s3.keys_under(BUCKET, "cluster-a/pgbackrest/archive/main/15-1/")
            .unwrap()
            .is_empty(),
        "WAL in the bucket"
    );
    assert!(
        !home.join("data/postgres/pgbackrest").exists(),
        "nothing archived into the data dir"
    );

    let noted = a_moment_between(home, "select 1");
    let (_, _, url) = restore_to_time(home, &noted);
    assert_eq!(
        psql_url(&url, "select count(*), min(id), max(id) from orders"),
        "101|0|100"
    );
    assert_eq!(psql(home, "shop", "select count(*) from orders"), "201");
}
