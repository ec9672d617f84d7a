//! Backup and restore throughput against the engine's own tools, on one database:
//! `paas-backups` create (pg_dump -Fc streamed, hashed, uploaded to a directory store)
//! against `pg_dump -Fc > /dev/null`, and restore (checked pass + pg_restore) against
//! `pg_restore` from a local file. Rates are dump bytes per second. Then, on the same
//! database, the time of a point-in-time restore (`paas pg restore --to-time`'s hook:
//! pgBackRest restore into a scratch instance, recovery to the moment, `pg_dump |
//! pg_restore` into a new database) from a full base backup taken after the figures
//! above. The server archives its WAL into pgBackRest only from then on (before, its
//! `archive_command` is `/bin/true`): WAL older than the base backup is never needed,
//! and the pushes would take CPU from the dump and restore figures.
//!
//! Usage: `backup_bench [MIB]` (default 1024: the table's size in MiB).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use paas_appliance::provider::Provider;
use paas_backups::{Backups, Target, Trigger};
use paas_postgres::archive::{push_script_file, socket_dir, ArchiveConfig, Archiver};
use paas_postgres::pitr::PitrConfig;
use paas_postgres::provision::{PostgresProvider, ProviderConfig};

/// The superuser's password, set before the base backup: the scratch instance is a copy
/// of the server and requires it.
const PASSWORD: &str = "bench-superuser-secret";

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
    // The archive repository, the server's pgBackRest files and the scratch instance, in
    // a directory the postgres user can reach.
    let pitr_dir = tempfile::Builder::new()
        .prefix("paas-backup-bench")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(pitr_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let archive = ArchiveConfig::new(pitr_dir.path().join("repo"), "bench");
    let member = pitr_dir.path().join("server");
    std::fs::create_dir_all(&member).unwrap();
    // Makes the socket directory pgBackRest reaches the server through; the
    // configuration is written again once the server's port is known.
    Archiver::prepare(&archive, &member, Path::new("/nonexistent"), 1, PASSWORD).unwrap();
    let socket = socket_dir(&member).display().to_string();
    let server = paas_it::PostgresServer::start_with(&[
        ("unix_socket_directories", &socket),
        ("archive_mode", "on"),
    ])
    .expect("postgres");
    let (superuser, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            server.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // Set with ALTER SYSTEM, not on the command line, which would win over it later.
    let set_archive_command = async |command: &str| {
        for sql in [
            format!("ALTER SYSTEM SET archive_command = '{command}'"),
            "SELECT pg_reload_conf()".into(),
        ] {
            // One statement at a time: ALTER SYSTEM refuses to run in a transaction block.
            superuser.batch_execute(&sql).await.unwrap();
        }
    };
    set_archive_command("/bin/true").await;
    // The lines a member's initdb gets (`paas_postgres::pg`): the scratch instance, a
    // copy of this data directory, is configured through them (its port, no archiving).
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(server.data_dir().join("postgresql.conf"))
        .unwrap();
    std::io::Write::write_all(
        &mut conf,
        b"\ninclude_if_exists = 'paas.conf'\ninclude_if_exists = 'paas_sync.conf'\n\
          include_if_exists = 'paas_standby.conf'\n",
    )
    .unwrap();
    let cluster = ProviderConfig {
        host: "127.0.0.1".into(),
        port: server.port(),
        superuser_password: PASSWORD.into(),
        tls: None,
    };
    let provider = Arc::new(
        PostgresProvider::new(cluster.clone()).with_pitr(PitrConfig {
            archive: archive.clone(),
            scratch_root: pitr_dir.path().join("scratch"),
            bin_dir: paas_postgres::dump::DEFAULT_BIN_DIR.into(),
            superuser_password: PASSWORD.into(),
        }),
    );
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
    // Point-in-time restore of the same database: WAL archived from now on, a full
    // base backup, a moment noted after it, the table dropped, then the restore.
    let archiver = Archiver::prepare(
        &archive,
        &member,
        &server.data_dir(),
        server.port(),
        PASSWORD,
    )
    .unwrap();
    superuser
        .batch_execute(&format!("ALTER ROLE postgres PASSWORD '{PASSWORD}'"))
        .await
        .unwrap();
    set_archive_command(&format!("{} %p", push_script_file(&member).display())).await;
    archiver.ensure_stanza().await.unwrap();
    let clock = Instant::now();
    archiver.run("backup", &["--type=full"]).await.unwrap();
    let base_backup = clock.elapsed().as_secs_f64();
    // A base backup serves targets from the second after it ended.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let noted = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.batch_execute("DROP TABLE orders").await.unwrap();
    let (_, into) = provider.provision_database("bench", "r2").await.unwrap();
    let steps = Mutex::new(Vec::<(Instant, String)>::new());
    let tell = |line: &str| {
        steps
            .lock()
            .unwrap()
            .push((Instant::now(), line.to_string()))
    };
    let clock = Instant::now();
    provider
        .restore_to_time(
            &serde_json::to_value(&data).unwrap(),
            noted,
            &serde_json::to_value(&into).unwrap(),
            &tell,
        )
        .await
        .unwrap();
    let pitr = clock.elapsed().as_secs_f64();
    let (restored, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname={}",
            server.port(),
            into.database
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let count: i64 = restored
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count as u64, rows, "the rows at the noted time");
    // Each step's time, up to the next step (the last: to the end).
    let steps: Vec<(Instant, String)> = [(
        clock,
        "listing the base backups, archiving the current WAL segment".to_string(),
    )]
    .into_iter()
    .chain(steps.into_inner().unwrap())
    .collect();
    let ends = steps
        .iter()
        .skip(1)
        .map(|(at, _)| *at)
        .chain([clock + Duration::from_secs_f64(pitr)]);
    let breakdown: Vec<String> = steps
        .iter()
        .zip(ends)
        .map(|((at, line), end)| format!("{:.1} s {line}", end.duration_since(*at).as_secs_f64()))
        .collect();
    println!(
        "point-in-time restore of the same database: {pitr:.1} s, from a full base backup taken in {base_backup:.1} s ({})",
        breakdown.join("; ")
    );
}
