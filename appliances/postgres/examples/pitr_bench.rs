//! Point-in-time restore figures against real etcd, a real 2-member cluster archiving
//! with pgBackRest, and a database of a stated size.
//!
//! `pitr_bench [MIB]` (default 256): loads about MIB MiB of rows into an app database,
//! takes a full base backup, writes a little more, notes the time, drops the table, and
//! restores the database as of the noted time into a new one (`paas pg restore
//! --to-time`'s path: scratch restore, recovery, `pg_dump -Fc | pg_restore`). Prints the
//! database size, each step's time and the whole restore's, and checks the row count.
//! Run by `scripts/bench`; needs the `paas-pg-supervisor` binary built next to it
//! (`cargo build -p paas-postgres --bins --examples`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use common::{connect, Harness, PASSWORD};
use paas_appliance::provider::Provider;
use paas_postgres::archive::{ArchiveConfig, Archiver};
use paas_postgres::pitr::PitrConfig;
use paas_postgres::provision::{PostgresProvider, ProviderConfig};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mib: i64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let h = Harness::start_with(2, |dir| {
        vec![
            "--archive-repo".into(),
            dir.join("repo").display().to_string(),
        ]
    })
    .await;
    let dir = h.dir.path().to_path_buf();
    let archive = ArchiveConfig::new(dir.join("repo"), "main");
    let addr = h.endpoint_addr();
    let provider = PostgresProvider::new(ProviderConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        superuser_password: PASSWORD.into(),
        tls: None,
    })
    .with_pitr(PitrConfig {
        archive: archive.clone(),
        scratch_root: dir.join("scratch"),
        bin_dir: paas_postgres::dump::DEFAULT_BIN_DIR.into(),
        superuser_password: PASSWORD.into(),
    });
    let (env, data) = provider.provision_database("bench", "db").await.unwrap();
    let url = env["DATABASE_URL"].clone();
    let app = connect(&url).await.unwrap();
    // ~120 bytes a row on disk with its index.
    let rows = mib * 1024 * 1024 / 120;
    let started = Instant::now();
    app.batch_execute(&format!(
        "CREATE TABLE t (id bigint PRIMARY KEY, note text);
         INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, {rows}) i"
    ))
    .await
    .unwrap();
    let size: i64 = app
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .unwrap()
        .get(0);
    println!(
        "loaded {rows} rows, database {:.0} MiB, in {:.1} s",
        size as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );

    // A full base backup on the primary with the data in it, as a daily one would be.
    let primary = h.wait_healthy(Duration::from_secs(30), None).await.primary;
    let member = &h.cluster.members()[h.index(&primary)];
    let archiver = Archiver::prepare(
        &archive,
        &member.dir,
        &member.dir.join("data"),
        member.addr().port(),
        PASSWORD,
    )
    .unwrap();
    let started = Instant::now();
    archiver.run("backup", &["--type=full"]).await.unwrap();
    println!(
        "pgbackrest full backup: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    app.batch_execute(
        "INSERT INTO t SELECT i, 'after the backup' FROM generate_series(-1000, -1) i",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let noted = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.batch_execute("DROP TABLE t").await.unwrap();

    let (into_env, into) = provider
        .provision_database("bench", "restored")
        .await
        .unwrap();
    let steps = Mutex::new(Vec::<(Instant, String)>::new());
    let tell = |line: &str| {
        steps
            .lock()
            .unwrap()
            .push((Instant::now(), line.to_string()))
    };
    let started = Instant::now();
    let said = provider
        .restore_to_time(
            &serde_json::to_value(&data).unwrap(),
            noted,
            &serde_json::to_value(&into).unwrap(),
            &tell,
        )
        .await
        .unwrap_or_else(|e| panic!("restore: {e}\n{}", h.logs()));
    let took = started.elapsed();
    let mut last = started;
    for (at, line) in steps.lock().unwrap().iter() {
        println!(
            "  +{:>6.1} s  {line}",
            at.duration_since(last).as_secs_f64()
        );
        last = *at;
    }
    println!(
        "  +{:>6.1} s  (copied; scratch removed)",
        (started + took).duration_since(last).as_secs_f64()
    );
    let count: i64 = connect(&into_env["DATABASE_URL"])
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, rows + 1000, "rows at the noted time");
    println!(
        "point-in-time restore of a {:.0} MiB database: {:.1} s ({said})",
        size as f64 / 1048576.0,
        took.as_secs_f64()
    );
}
