//! Postgres as a user gets it from `paas up`: `resource add postgres` hands out a
//! DATABASE_URL through the leader-following endpoint; `pg psql` uses it; `resource
//! remove` drops the database and role; the data survives a restart of `paas up`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const PAAS: &str = env!("CARGO_BIN_EXE_paas");

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
}

fn base(home: &Path) -> Command {
    let mut cmd = Command::new(PAAS);
    cmd.env("HOME", home)
        .env("PAAS_DATA_DIR", home.join("data"))
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("PAAS_URL")
        .env_remove("PAAS_TOKEN")
        .env_remove("PAAS_APP");
    cmd
}

fn paas(home: &Path, args: &[&str]) -> Output {
    base(home).args(args).output().unwrap()
}

fn ok(out: Output) -> String {
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{s} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    s
}

fn start(home: &Path, listen: &str, pg: &str) -> Daemon {
    let mut child = base(home)
        .args(["up", "--listen", listen, "--postgres-listen", pg])
        .args([
            "--syslog-listen",
            "127.0.0.1:0",
            "--forward-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut out = String::new();
    while !out.contains("Press Ctrl-C") {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "paas up exited: {out}"
        );
        out.push_str(&line);
    }
    assert!(out.contains(&format!("postgres: {pg}")), "{out}");
    Daemon(child)
}

fn stop(mut d: Daemon) {
    unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) };
    assert!(d.0.wait().unwrap().success());
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
    ok(paas(home, &["resource", "add", "postgres", "-a", "blog"]));

    assert_eq!(
        psql(
            home,
            "shop",
            "create table t (x int); insert into t values (42); select x from t"
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

    // The members are jobs of the system app; kill -9 the primary's whole job (its
    // supervisor and PostgreSQL): the sync takes over behind the same DATABASE_URL and the
    // acknowledged row is there.
    let primary_port: u16 = psql(home, "shop", "select inet_server_port()")
        .trim()
        .parse()
        .unwrap();
    let ports = std::fs::read_to_string(home.join("data/postgres/ports.toml")).unwrap();
    let ports: toml::Value = toml::from_str(&ports).unwrap();
    let member = ports["members"]
        .as_array()
        .unwrap()
        .iter()
        .position(|p| p[0].as_integer() == Some(primary_port as i64))
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
    loop {
        let out = paas(
            home,
            &[
                "pg",
                "psql",
                "-a",
                "shop",
                "--",
                "-tA",
                "-c",
                "insert into t values (43) returning inet_server_port()",
            ],
        );
        if out.status.success() {
            let port: u16 = String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert_ne!(port, primary_port, "a new primary took the writes");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "writes did not resume: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(psql(home, "shop", "select x from t order by x"), "42\n43\n");

    stop(up);
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
    stop(up);
}
