//! Postgres as a user gets it from `paas up`: `resource add postgres` hands out a
//! DATABASE_URL through the leader-following endpoint, whose server certificate a
//! client verifies with the published cluster CA; `pg psql` uses it; the primary's
//! job dies and writes resume through the same URL; `resource remove` drops the database
//! and role; the data survives a restart of `paas up`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{ok, paas, Daemon};

fn start(home: &Path, listen: &str, pg: &str) -> Daemon {
    let (up, out) = common::start_up(
        home,
        listen,
        &["--postgres-listen", pg, "--postgres-members", "3"],
    );
    assert!(out.contains(&format!("postgres: {pg}")), "{out}");
    up
}

fn psql(home: &Path, app: &str, sql: &str) -> String {
    ok(paas(
        home,
        &["pg", "psql", "-a", app, "--", "-tA", "-c", sql],
    ))
}

#[test]
fn resource_add_postgres_gives_a_working_database_that_survives_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    // The members run as the postgres user: it must traverse to the data dir.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = tmp.path();
    let listen = format!("127.0.0.1:{}", paas_it::free_port().unwrap());
    let pg = format!("127.0.0.1:{}", paas_it::free_port().unwrap());
    let up = start(home, &listen, &pg);

    ok(paas(home, &["apps", "create", "shop"]));
    ok(paas(home, &["apps", "create", "blog"]));
    let r: serde_json::Value = serde_json::from_str(&ok(paas(
        home,
        &["--json", "resource", "add", "postgres", "-a", "shop"],
    )))
    .unwrap();
    let id = r["id"].as_str().unwrap().to_string();
    let url = r["env"]["DATABASE_URL"].as_str().unwrap().to_string();
    assert!(url.contains(&pg), "{url} must go through the endpoint {pg}");
    let password = r["env"]["PGPASSWORD"].as_str().unwrap();
    assert!(
        password.len() >= 32,
        "password of at least 128 bits: {password}"
    );
    // One host, loopback endpoint: the URL leaves TLS to the client's default (libpq
    // prefers it), and names the cluster CA, published readable for every job.
    assert!(!url.contains("sslmode"), "{url}");
    let ca = r["env"]["PGSSLROOTCERT"].as_str().unwrap().to_string();
    let mode = std::fs::metadata(&ca).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "{ca}");
    // The members' certificate is the cluster CA's and names the endpoint's address.
    let verified = Command::new("psql")
        .arg(format!("{url}?sslmode=verify-full&sslrootcert={ca}"))
        .args([
            "-X",
            "-tA",
            "-c",
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&verified.stdout).trim(),
        "t",
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    ok(paas(home, &["resource", "add", "postgres", "-a", "blog"]));
    let info = ok(paas(home, &["pg", "info"]));
    assert!(info.contains("postgres cluster main: generation"), "{info}");
    assert_eq!(
        info.matches(" yes ").count(),
        3,
        "three running members: {info}"
    );
    let status = ok(paas(home, &["cluster", "status"]));
    assert!(
        status.contains("Scheduler leader:") && status.contains("primary"),
        "{status}"
    );

    assert_eq!(
        psql(
            home,
            "shop",
            "create table t (x int primary key); insert into t values (42); select x from t"
        ),
        "CREATE TABLE\nINSERT 0 1\n42\n"
    );
    // Another app's credentials do not open this database.
    let blog_env: serde_json::Value =
        serde_json::from_str(&ok(paas(home, &["--json", "env", "get", "-a", "blog"]))).unwrap();
    let shop_db = r["env"]["PGDATABASE"].as_str().unwrap();
    let cross = Command::new("psql")
        .arg(format!(
            "postgres://{}:{}@{pg}/{shop_db}",
            blog_env["PGUSER"].as_str().unwrap(),
            blog_env["PGPASSWORD"].as_str().unwrap()
        ))
        .args(["-c", "select 1"])
        .output()
        .unwrap();
    assert!(
        !cross.status.success(),
        "blog's role must not connect to shop's database"
    );

    // The members are jobs of the system app; kill -9 the primary's job: its
    // supervisor's process group. PostgreSQL leads a group of its own and dies by its
    // parent-death signal a moment later. The sync takes over behind the same
    // DATABASE_URL and every acknowledged row is there.
    let primary_port: u16 = psql(home, "shop", "select inet_server_port()")
        .trim()
        .parse()
        .unwrap();
    // Member N listens on the fixed port 15432 + N of the cluster's own address.
    let member = primary_port
        .checked_sub(15432)
        .filter(|m| *m < 3)
        .expect("primary is a member");
    let jobs: serde_json::Value =
        serde_json::from_str(&ok(paas(home, &["--json", "ps", "-a", "paas-postgres"]))).unwrap();
    let job = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["process_type"] == format!("pg{member}"))
        .unwrap();
    unsafe { libc::kill(-(job["pid"].as_i64().unwrap() as i32), libc::SIGKILL) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // Only a write that was not acknowledged is sent again (`on conflict do nothing`: it
    // may have been committed all the same). One acknowledged by the old primary, in the
    // moment before its PostgreSQL died (the sync acknowledged it too), is not: it must
    // be on the new primary, which then answers the reads.
    let mut taken_by_old = false;
    loop {
        let sql = if taken_by_old {
            "select inet_server_port()"
        } else {
            "insert into t values (43) on conflict do nothing; select inet_server_port()"
        };
        let out = paas(home, &["pg", "psql", "-a", "shop", "--", "-tA", "-c", sql]);
        if out.status.success() {
            // The last line: psql prints the insert's tag first.
            let port: u16 = String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap()
                .trim()
                .parse()
                .unwrap();
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
    assert_eq!(psql(home, "shop", "select x from t order by x"), "42\n43\n");

    up.stop();
    let up = start(home, &listen, &pg);
    assert_eq!(psql(home, "shop", "select x from t order by x"), "42\n43\n");

    // Removing the resource drops the database and unsets the variables.
    ok(paas(home, &["resource", "remove", &id, "-a", "shop"]));
    let env = ok(paas(home, &["env", "get", "-a", "shop"]));
    assert!(!env.contains("DATABASE_URL"), "{env}");
    let gone = Command::new("psql")
        .arg(&url)
        .args(["-c", "select 1"])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "the removed database must be gone");
    up.stop();
}

#[test]
fn a_data_dir_the_postgres_user_cannot_reach_fails_fast_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    // mktemp -d makes 0700 directories: the postgres user cannot enter this one.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let home = tmp.path();
    let data = home.join("data");
    let started = std::time::Instant::now();
    let child = common::base(home)
        .args(["up", "--listen", &common::free_addr()])
        .args([
            "--syslog-listen",
            "127.0.0.1:0",
            "--forward-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--postgres-members",
            "3",
            "--postgres-listen",
            &common::free_addr(),
        ])
        .arg("--data-dir")
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut up = Daemon(child);
    let status = loop {
        if let Some(status) = up.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "paas up kept waiting on an unreachable data directory"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(up.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "paas up should have failed");
    assert!(
        // Jobs (each as its own user) and the postgres members both need to traverse
        // it; whichever is checked first names it.
        stderr.contains(&home.display().to_string())
            && (stderr.contains("postgres") || stderr.contains("cannot run jobs")),
        "the error must name the directory: {stderr}"
    );
    println!(
        "failed after {:?}: {}",
        started.elapsed(),
        stderr.lines().last().unwrap_or("")
    );
}
