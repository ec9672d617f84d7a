//! MariaDB backup and restore throughput against the plain tools, on one database:
//! `paas-backups` create (`mariadb-dump --single-transaction` as the app's user,
//! streamed, hashed, uploaded to a directory store) against the same `mariadb-dump >
//! /dev/null`, and restore (checksum pass, load into a scratch database, swap) against
//! `mariadb < file` into an empty database. Rates are dump bytes per second.
//!
//! Usage: `mysql_backup_bench [MIB]` (default 256: the table's data in MiB).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use paas_backups::{Backups, Target, Trigger};
use paas_mysql::provision::{MysqlProvider, ProviderConfig};

const MIB: f64 = 1024.0 * 1024.0;

fn rate(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / MIB / secs
}

#[tokio::main]
async fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let server = paas_it::MariaDbServer::start_with(&[
        "--log-bin=binlog",
        "--server-id=1",
        "--binlog-format=ROW",
        "--innodb-buffer-pool-size=256M",
    ])
    .expect("mariadb");
    let root = || {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(server.port())
            .user(Some("root"))
            .prefer_socket(false)
    };
    let mut admin = Conn::new(root()).await.unwrap();
    admin
        .query_drop(
            "CREATE USER 'paas'@'%' IDENTIFIED BY 'bench';
             GRANT ALL PRIVILEGES ON *.* TO 'paas'@'%' WITH GRANT OPTION;",
        )
        .await
        .unwrap();
    let provider = Arc::new(MysqlProvider::new(ProviderConfig {
        host: "127.0.0.1".into(),
        port: server.port(),
        superuser_password: "bench".into(),
        tls: None,
    }));
    let (_, data) = provider.provision_database("bench", "r1").await.unwrap();
    let target = Target {
        app: "bench".into(),
        resource: "r1".into(),
        kind: "mysql".into(),
        data: serde_json::to_value(&data).unwrap(),
        provider: provider.clone(),
    };
    let password = data.password.clone().unwrap();
    // ~110 bytes per row of hex text, loaded in chunks of a million rows.
    let rows = mib * 1024 * 1024 / 110;
    let clock = Instant::now();
    admin
        .query_drop(format!(
            "CREATE TABLE {db}.orders (id BIGINT PRIMARY KEY, note TEXT) ENGINE=InnoDB",
            db = data.database
        ))
        .await
        .unwrap();
    let mut from = 1;
    while from <= rows {
        let to = (from + 999_999).min(rows);
        admin
            .query_drop(format!(
                "INSERT INTO {db}.orders SELECT seq, CONCAT(MD5(seq), MD5(seq * 7), MD5(seq * 13)) FROM {db}.seq_{from}_to_{to}",
                db = data.database
            ))
            .await
            .unwrap();
        from = to + 1;
    }
    println!(
        "database: {mib} MiB of rows ({rows} rows, filled in {:.1} s)",
        clock.elapsed().as_secs_f64()
    );

    let port = server.port().to_string();
    let client = |tool: &str| {
        let mut cmd = Command::new(format!("{}/{tool}", paas_mysql::dump::DEFAULT_BIN_DIR));
        cmd.arg("--no-defaults")
            .args(["-h", "127.0.0.1", "-P", &port, "--protocol=TCP"])
            .arg("--default-character-set=utf8mb4")
            .args(["-u", &data.user])
            .env("MYSQL_PWD", &password);
        cmd
    };
    let dump = |out: Stdio| {
        let clock = Instant::now();
        let status = client("mariadb-dump")
            .args([
                "--single-transaction",
                "--routines",
                "--events",
                "--no-tablespaces",
                "--hex-blob",
            ])
            .arg(&data.database)
            .stdout(out)
            .status()
            .unwrap();
        assert!(status.success());
        clock.elapsed().as_secs_f64()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain.sql");
    dump(Stdio::from(std::fs::File::create(&file).unwrap()));
    let dump_bytes = std::fs::metadata(&file).unwrap().len();
    let plain = dump(Stdio::null());

    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let backups = Backups::new(
        // The store as `paas up` opens a directory store.
        paas_backups::Location::Dir(store.clone())
            .open(&paas_backups::location::S3Options::default())
            .unwrap(),
    );
    let (progress, _) = tokio::sync::watch::channel(0);
    let clock = Instant::now();
    let m = backups
        .create(&target, Trigger::Manual, &progress)
        .await
        .unwrap();
    let ours = clock.elapsed().as_secs_f64();
    println!(
        "backup: mariadb-dump > /dev/null {:.1} MiB/s ({:.1} s); paas backup create {:.1} MiB/s ({:.1} s, {} bytes); ratio {:.2}x",
        rate(dump_bytes, plain),
        plain,
        rate(m.size, ours),
        ours,
        m.size,
        plain / ours
    );

    // The plain load: the same dump into an empty database the app's user may fill.
    admin
        .query_drop(format!(
            "CREATE DATABASE plain_load; GRANT ALL ON plain_load.* TO '{}'@'%'",
            data.user
        ))
        .await
        .unwrap();
    let clock = Instant::now();
    let status = client("mariadb")
        .args(["--batch", "--database=plain_load"])
        .stdin(std::fs::File::open(&file).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let plain = clock.elapsed().as_secs_f64();
    admin.query_drop("DROP DATABASE plain_load").await.unwrap();

    let clock = Instant::now();
    backups.restore(&m, &target).await.unwrap();
    let ours = clock.elapsed().as_secs_f64();
    let clock = Instant::now();
    backups.verify(&m).await.unwrap();
    let check = clock.elapsed().as_secs_f64();
    println!(
        "restore: mariadb < file into an empty database {:.1} MiB/s ({:.1} s); paas backup restore {:.1} MiB/s ({:.1} s, of which the checksum pass {:.1} s); ratio {:.2}x",
        rate(dump_bytes, plain),
        plain,
        rate(m.size, ours),
        ours,
        check,
        plain / ours
    );
}
