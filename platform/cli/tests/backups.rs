//! Backups as a user gets them from `paas up --backup-store s3://...` (moto, configured
//! through the AWS_* variables): `paas backup create/list/download/restore/delete`, a
//! restore into another app, app-scoped tokens kept to their app, the backup's lines in
//! the app's log, and a schedule that runs and applies its retention.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{fails, ok, paas};
use sha2::{Digest, Sha256};

fn psql(home: &Path, app: &str, sql: &str) -> String {
    ok(paas(
        home,
        &["pg", "psql", "-a", app, "--", "-tA", "-c", sql],
    ))
}

fn json(out: String) -> serde_json::Value {
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn backup_restore_download_schedule_through_the_cli() {
    let s3 = paas_it::S3Server::start().expect("moto");
    s3.create_bucket("paas-backups").unwrap();
    let tmp = common::home();
    let home = tmp.path();
    let (_up, out) = common::start_up_on_s3(home, &s3, "s3://paas-backups/cluster-a");
    assert!(
        out.contains("backups:  s3://paas-backups/cluster-a"),
        "{out}"
    );

    ok(paas(home, &["apps", "create", "shop"]));
    ok(paas(home, &["apps", "create", "blog"]));
    ok(paas(home, &["resource", "add", "postgres", "-a", "shop"]));
    ok(paas(home, &["resource", "add", "postgres", "-a", "blog"]));
    psql(
        home,
        "shop",
        "create table orders (id int primary key, note text); \
         insert into orders select i, md5(i::text) from generate_series(1, 5000) i",
    );

    // Create: the manifest comes back; the listing shows it.
    let m = json(ok(paas(
        home,
        &["--json", "backup", "create", "-a", "shop"],
    )));
    let id = m["id"].as_str().unwrap().to_string();
    assert_eq!(m["engine"], "postgres");
    assert_eq!(m["state"], "complete");
    let list = json(ok(paas(home, &["--json", "backup", "list", "-a", "shop"])));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], id.as_str());
    let table = ok(paas(home, &["backup", "list", "-a", "shop"]));
    assert!(table.contains(&id) && table.contains("complete"), "{table}");

    // A schedule every minute, keeping one scheduled backup. It is set now, so its
    // first two minutes pass while the rest is checked; its runs are checked last.
    ok(paas(
        home,
        &[
            "backup",
            "schedule",
            "-a",
            "shop",
            "--cron",
            "* * * * *",
            "--keep-last",
            "1",
        ],
    ));
    let scheduled_at = Instant::now();

    // The backup is in the app's log, like a job.
    let started = Instant::now();
    loop {
        let log = ok(paas(home, &["log", "-a", "shop", "--type", "backup"]));
        if log.contains(&format!("backup {id} complete")) {
            assert!(log.contains(&format!("backup {id} of postgres-")), "{log}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no backup lines in the log: {log}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Download: the pg_dump file, as recorded.
    let file = home.join("shop.dump");
    let out = common::base(home)
        .args(["backup", "download", "-a", "shop", &id])
        .stdout(std::fs::File::create(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = std::fs::read(&file).unwrap();
    assert_eq!(&dump[..5], b"PGDMP");
    assert_eq!(dump.len() as u64, m["size"].as_u64().unwrap());
    assert_eq!(
        hex::encode(Sha256::digest(&dump)),
        m["sha256"].as_str().unwrap()
    );

    // Restore over a damaged table.
    psql(
        home,
        "shop",
        "delete from orders where id > 10; update orders set note = 'x'",
    );
    ok(paas(home, &["backup", "restore", "-a", "shop", &id]));
    assert_eq!(
        psql(
            home,
            "shop",
            "select count(*), sum(length(note)) from orders"
        ),
        "5000|160000\n"
    );

    // Into another app's database.
    ok(paas(
        home,
        &["backup", "restore", "-a", "shop", &id, "--into-app", "blog"],
    ));
    assert_eq!(psql(home, "blog", "select count(*) from orders"), "5000\n");

    // A token of blog cannot see shop's backups, nor restore them into blog.
    let created = json(ok(paas(
        home,
        &["--json", "tokens", "create", "-a", "blog"],
    )));
    let blog_token = created["token"].as_str().unwrap();
    let as_blog = |args: &[&str]| {
        common::base(home)
            .env("PAAS_TOKEN", blog_token)
            .args(args)
            .output()
            .unwrap()
    };
    fails(as_blog(&["backup", "list", "-a", "shop"]), "not found");
    fails(
        as_blog(&["backup", "restore", "-a", "shop", &id, "--into-app", "blog"]),
        "not found",
    );
    fails(
        as_blog(&["backup", "download", "-a", "shop", &id]),
        "not found",
    );
    assert!(ok(as_blog(&["--json", "backup", "list", "-a", "blog"])).contains("[]"));

    // The schedule's runs (set above) and its retention: after two runs there is one
    // scheduled backup, and the manual one.
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let list = json(ok(paas(home, &["--json", "backup", "list", "-a", "shop"])));
        for b in list.as_array().unwrap() {
            if b["trigger"] == "schedule" {
                seen.insert(b["id"].as_str().unwrap().to_string());
            }
        }
        let scheduled = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["trigger"] == "schedule")
            .count();
        // The runner lists a backup once complete and applies the retention after it,
        // so the second run's backup can be seen before the first one is deleted.
        if seen.len() >= 2 && scheduled == 1 {
            let kept = list
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["trigger"] == "schedule")
                .and_then(|b| b["id"].as_str())
                .unwrap();
            assert_eq!(
                Some(kept),
                seen.last().map(String::as_str),
                "the newest is kept"
            );
            // The runner wakes at the cron time, not at its next look (every 20 s).
            let started = list
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["id"] == kept)
                .and_then(|b| b["started"].as_str())
                .unwrap();
            let second: u32 = started[17..19].parse().unwrap();
            assert!(second < 10, "a run for a minute's start began at {started}");
            println!(
                "schedule: two runs and the retention {:?} after it was set",
                scheduled_at.elapsed()
            );
            assert!(
                list.as_array()
                    .unwrap()
                    .iter()
                    .any(|b| b["id"] == id.as_str()),
                "manual backups are not retention's: {list}"
            );
            break;
        }
        assert!(
            scheduled_at.elapsed() < Duration::from_secs(200),
            "two scheduled runs, and the retention keeping one, within 200 s; saw {seen:?}, \
             listed {list}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let shown = ok(paas(home, &["backup", "schedule", "-a", "shop"]));
    assert!(
        shown.contains("* * * * *") && shown.contains(" ok: "),
        "{shown}"
    );
    ok(paas(home, &["backup", "unschedule", "-a", "shop"]));

    // Delete.
    ok(paas(home, &["backup", "delete", "-a", "shop", &id]));
    let list = json(ok(paas(home, &["--json", "backup", "list", "-a", "shop"])));
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|b| b["id"] != id.as_str()),
        "{list}"
    );
    fails(
        paas(home, &["backup", "restore", "-a", "shop", &id]),
        "not found",
    );
}
