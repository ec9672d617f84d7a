//! Backup and restore throughput against the engine's own tools, on one database:
//! `paas-backups` create (pg_dump -Fc streamed, hashed, uploaded to a directory store)
//! against `pg_dump -Fc > /dev/null`, and restore (checked pass + pg_restore) against
//! `pg_restore` from a local file. Rates are dump bytes per second.
//!
//! Usage: `backup_bench [MIB]` (default 1024: the table's size in MiB).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use object_store::local::LocalFileSystem;
use paas_backups::{Backups, Target, Trigger};
use paas_postgres::provision::{PostgresProvider, ProviderConfig};

const MIB: f64 = 1024.0 * 1024.0;

fn rate(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / MIB / secs
}

#[tokio::main]
async fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let server = paas_it::PostgresServer::start().expect("postgres");
    let provider = Arc::new(PostgresProvider::new(ProviderConfig {
        host: "127.0.0.1".into(),
        port: server.port(),
        superuser_password: "unused-with-trust".into(),
        tls: None,
    }));
    let (_, data) = provider.provision_database("bench", "r1").await.unwrap();
    let target = Target {
        app: "bench".into(),
        resource: "r1".into(),
        kind: "postgres".into(),
        data: serde_json::to_value(&data).unwrap(),
        provider: provider.clone(),
    };
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user={} dbname={}",
            server.port(),
            data.role,
            data.database
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // ~130 bytes per row of hex text (compresses about 2:1 in pg_dump -Fc).
    let rows = mib * 1024 * 1024 / 130;
    let clock = Instant::now();
    client
        .batch_execute(&format!(
            "CREATE TABLE orders (id bigint, note text);
             INSERT INTO orders SELECT i, md5(i::text) || md5((i * 7)::text) || md5((i * 13)::text)
               FROM generate_series(1, {rows}) i;"
        ))
        .await
        .unwrap();
    let size: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .unwrap()
        .get(0);
    println!(
        "database: {:.0} MiB ({rows} rows, filled in {:.1} s)",
        size as f64 / MIB,
        clock.elapsed().as_secs_f64()
    );

    let bin = paas_postgres::dump::DEFAULT_BIN_DIR;
    let port = server.port().to_string();
    let pg_dump = |out: Stdio| {
        let clock = Instant::now();
        let status = Command::new(format!("{bin}/pg_dump"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-Fc",
                "-d",
            ])
            .arg(&data.database)
            .stdout(out)
            .status()
            .unwrap();
        assert!(status.success());
        clock.elapsed().as_secs_f64()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain.dump");
    pg_dump(Stdio::from(std::fs::File::create(&file).unwrap()));
    let dump_bytes = std::fs::metadata(&file).unwrap().len();
    let plain = pg_dump(Stdio::null());

    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let backups = Backups::new(Arc::new(LocalFileSystem::new_with_prefix(&store).unwrap()));
    let (progress, _) = tokio::sync::watch::channel(0);
    let clock = Instant::now();
    let m = backups
        .create(&target, Trigger::Manual, &progress)
        .await
        .unwrap();
    let ours = clock.elapsed().as_secs_f64();
    println!(
        "backup: pg_dump -Fc > /dev/null {:.1} MiB/s ({:.1} s); paas backup create {:.1} MiB/s ({:.1} s, {} bytes); ratio {:.2}x",
        rate(dump_bytes, plain),
        plain,
        rate(m.size, ours),
        ours,
        m.size,
        plain / ours
    );

    // The same flags as the Postgres restore hook; from the file by name (pg_restore
    // may seek) and from stdin (a pipe, as the hook feeds it).
    let restore = |from_stdin: bool| {
        let clock = Instant::now();
        let mut cmd = Command::new(format!("{bin}/pg_restore"));
        cmd.args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
            .args([
                "--single-transaction",
                "--clean",
                "--if-exists",
                "--no-owner",
                "--no-privileges",
            ])
            .arg(format!("--role={}", data.role))
            .args(["-d", &data.database]);
        if from_stdin {
            cmd.stdin(std::fs::File::open(&file).unwrap());
        } else {
            cmd.arg(&file);
        }
        assert!(cmd.status().unwrap().success());
        clock.elapsed().as_secs_f64()
    };
    let plain = restore(false);
    let piped = restore(true);
    let clock = Instant::now();
    backups.restore(&m, &target).await.unwrap();
    let ours = clock.elapsed().as_secs_f64();
    let clock = Instant::now();
    backups.verify(&m).await.unwrap();
    let check = clock.elapsed().as_secs_f64();
    println!(
        "restore: pg_restore from a local file {:.1} MiB/s ({:.1} s), from stdin {:.1} MiB/s ({:.1} s); paas backup restore {:.1} MiB/s ({:.1} s, of which the checksum pass {:.1} s); ratio {:.2}x",
        rate(dump_bytes, plain),
        plain,
        rate(dump_bytes, piped),
        piped,
        rate(m.size, ours),
        ours,
        check,
        plain / ours
    );
}
