//! Each fixture started for real and checked with its own protocol, plus the cleanup
//! guarantees: a panicking test and a SIGKILLed test process leave no server behind.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use paas_it::{EtcdServer, MariaDbServer, PostgresServer, RedisServer, S3Server, PG_BIN};

/// Whether a process with this pid exists (zombies count as gone: they were reaped or
/// are about to be, and hold no port).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// One HTTP GET with `Connection: close`, returning the whole answer.
fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
}

#[test]
fn etcd_is_healthy_and_serves_keys() {
    let etcd = EtcdServer::start().expect("etcd starts");
    assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));
    assert!(http_get(etcd.client_port(), "/health").contains("\"health\":\"true\""));
    let put = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.endpoint(), "put", "k", "v"])
        .output()
        .expect("etcdctl runs");
    assert!(put.status.success(), "{put:?}");
    let get = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.endpoint(),
            "get",
            "k",
            "--print-value-only",
        ])
        .output()
        .expect("etcdctl runs");
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "v");
}

#[test]
fn etcd_restart_keeps_data() {
    let mut etcd = EtcdServer::start().expect("etcd starts");
    let etcdctl = |args: &[&str], endpoint: &str| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint])
            .args(args)
            .output()
            .expect("etcdctl runs")
    };
    assert!(etcdctl(&["put", "kept", "yes"], &etcd.endpoint())
        .status
        .success());
    let pid = etcd.process().pid().expect("running");
    etcd.stop();
    assert!(!process_alive(pid));
    assert!(!etcdctl(
        &[
            "get",
            "kept",
            "--dial-timeout=300ms",
            "--command-timeout=500ms"
        ],
        &etcd.endpoint()
    )
    .status
    .success());
    etcd.restart().expect("etcd restarts");
    let get = etcdctl(&["get", "kept", "--print-value-only"], &etcd.endpoint());
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "yes");
}

#[test]
fn panicking_test_still_cleans_up() {
    let seen = std::sync::Mutex::new((0u32, std::path::PathBuf::new()));
    let outcome = std::panic::catch_unwind(|| {
        let etcd = EtcdServer::start().expect("etcd starts");
        *seen.lock().unwrap() = (etcd.process().pid().unwrap(), etcd.data_dir());
        panic!("the test body fails while etcd runs");
    });
    assert!(outcome.is_err());
    let (pid, data_dir) = seen.into_inner().unwrap();
    assert!(pid != 0);
    assert!(!process_alive(pid), "etcd {pid} survived the panic");
    assert!(!data_dir.parent().unwrap().exists(), "temp dir survived");
}

/// Helper for `sigkilled_test_process_leaves_no_server`: started as a child test
/// process, prints the etcd pid and blocks until killed.
#[test]
#[ignore = "run only as the child of sigkilled_test_process_leaves_no_server"]
fn child_holding_etcd() {
    let etcd = EtcdServer::start().expect("etcd starts");
    println!(
        "ETCD_PID={} DIR={}",
        etcd.process().pid().unwrap(),
        etcd.data_dir().parent().unwrap().display()
    );
    std::io::stdout().flush().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(600));
}

/// Kills the child test process if the parent test fails half-way.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigkilled_test_process_leaves_no_server() {
    let me = std::env::current_exe().unwrap();
    let mut child = KillOnDrop(
        Command::new(me)
            .args([
                "--exact",
                "child_holding_etcd",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("child test process"),
    );
    let mut out = child.0.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    let line = loop {
        if let Some(line) = seen
            .split_inclusive('\n')
            .find(|l| l.contains("ETCD_PID=") && l.ends_with('\n'))
        {
            break line[line.find("ETCD_PID=").unwrap()..]
                .trim_end()
                .to_string();
        }
        let n = out.read(&mut buf).expect("read child output");
        if n == 0 {
            panic!("child ended without starting etcd: {seen}");
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    };
    let (pid, dir) = line
        .trim_start_matches("ETCD_PID=")
        .split_once(" DIR=")
        .unwrap();
    let pid: u32 = pid.parse().unwrap();
    assert!(process_alive(pid));
    child.0.kill().expect("SIGKILL the child test process");
    child.0.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while process_alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !process_alive(pid),
        "etcd {pid} outlived its SIGKILLed test process"
    );
    // No destructor ran in the child, so its temp dir is left until the next fixture
    // start sweeps dirs whose owner process is gone.
    assert!(Path::new(dir).exists());
    let _next = EtcdServer::start().expect("etcd starts");
    assert!(!Path::new(dir).exists(), "orphaned {dir} not swept");
}

/// Bucket listing as moto answers it.
fn list_buckets(port: u16) -> String {
    http_get(port, "/")
}

#[test]
fn s3_creates_buckets_and_survives_a_restart_with_its_buckets() {
    let mut s3 = S3Server::start().expect("moto_server starts");
    assert_eq!(s3.region(), "us-east-1");
    s3.create_bucket("drain-a").expect("bucket");
    assert!(list_buckets(s3.port()).contains("<Name>drain-a</Name>"));
    // Put an object with a plain unsigned request and read it back.
    let mut stream = TcpStream::connect(("127.0.0.1", s3.port())).unwrap();
    write!(
        stream,
        "PUT /drain-a/obj HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let listing = http_get(s3.port(), "/drain-a?list-type=2");
    assert!(listing.contains("<Key>obj</Key>"), "{listing}");

    s3.stop();
    assert!(TcpStream::connect(("127.0.0.1", s3.port())).is_err());
    s3.restart().expect("moto_server restarts");
    assert!(list_buckets(s3.port()).contains("<Name>drain-a</Name>"));
    // moto is in-memory: objects do not survive (documented on S3Server).
    let listing = http_get(s3.port(), "/drain-a?list-type=2");
    assert!(
        listing.starts_with("HTTP/1.1 200") && !listing.contains("<Key>obj</Key>"),
        "{listing}"
    );
}

#[test]
fn postgres_answers_sql_over_tcp_and_socket() {
    let pg = PostgresServer::start_with(&[("max_connections", "20")]).expect("postgres starts");
    let psql = format!("{PG_BIN}/psql");
    let over_tcp = Command::new(&psql)
        .args([&pg.url(), "-XAtc", "select 1 + 1"])
        .output()
        .expect("psql runs");
    assert_eq!(
        String::from_utf8_lossy(&over_tcp.stdout).trim(),
        "2",
        "{over_tcp:?}"
    );
    let over_socket = Command::new(&psql)
        .arg("-h")
        .arg(pg.socket_dir())
        .args([
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "-XAtc",
            "show max_connections",
        ])
        .output()
        .expect("psql runs");
    assert_eq!(
        String::from_utf8_lossy(&over_socket.stdout).trim(),
        "20",
        "{over_socket:?}"
    );
    assert!(pg.data_dir().join("PG_VERSION").exists());
}

#[test]
fn redis_answers_ping_and_keeps_a_key() {
    let redis = RedisServer::start().expect("redis starts");
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &redis.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["ping"]), "PONG");
    assert_eq!(cli(&["set", "k", "v"]), "OK");
    assert_eq!(cli(&["get", "k"]), "v");
    assert_eq!(
        cli(&["config", "get", "repl-diskless-sync-delay"]),
        "repl-diskless-sync-delay\n0"
    );
}

#[test]
fn mariadb_answers_sql_as_root_over_tcp() {
    let db = MariaDbServer::start().expect("mariadb starts");
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            &db.port().to_string(),
            "-u",
            "root",
        ])
        .args(["-N", "-e", "select 1 + 1"])
        .output()
        .expect("mariadb client runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2", "{out:?}");
    assert!(db.url().starts_with("mysql://root@127.0.0.1:"));
}

#[test]
fn every_fixture_cleans_up_on_drop() {
    let pg = PostgresServer::start().expect("postgres");
    let redis = RedisServer::start().expect("redis");
    let db = MariaDbServer::start().expect("mariadb");
    let dirs = [
        pg.socket_dir().to_path_buf(),
        redis.dir().to_path_buf(),
        db.dir().to_path_buf(),
    ];
    let pids = [
        pg.process().pid().unwrap(),
        redis.process().pid().unwrap(),
        db.process().pid().unwrap(),
    ];
    // Postgres forks helpers into its process group; they must go too.
    let pg_group = pids[0];
    drop((pg, redis, db));
    for pid in pids {
        assert!(!process_alive(pid), "server {pid} still running");
    }
    for dir in dirs {
        assert!(!dir.exists(), "{} still exists", dir.display());
    }
    let stray = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map_or("", |(_, r)| r)
                    .split_whitespace()
                    .collect();
                fields.get(2) == Some(&pg_group.to_string().as_str())
                    && fields.first() != Some(&"Z")
            })
        })
        .count();
    assert_eq!(stray, 0, "processes left in the postgres process group");
}

#[test]
fn mongo_runs_when_installed_and_says_skipped_otherwise() {
    let on_path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|dir| dir.join("mongod").is_file());
    match paas_it::MongoServer::start().expect("mongo fixture") {
        paas_it::MongoStart::Skipped(why) => {
            assert!(!on_path);
            assert_eq!(why, "SKIPPED: mongod not on PATH");
        }
        paas_it::MongoStart::Running(mongo) => {
            assert!(on_path);
            assert!(TcpStream::connect(("127.0.0.1", mongo.port())).is_ok());
        }
    }
}
