//! Shared helpers of the integration tests: a real etcd, a cluster of real supervisor
//! processes with real MariaDB, and the leader-following endpoint. The members get a
//! server certificate of a CA made here (`--tls-dir`), as `paas up` gives them one of
//! the cluster CA, so every test runs with TLS on: replication and the supervisors'
//! connections verify it.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use paas_appliance::addr;
use paas_appliance::launcher::{LocalCluster, LocalClusterSpec};
use paas_mysql::cluster::{ClusterState, Keys, MemberStatus, Role, Snapshot, Store};
use paas_mysql::provision::{MysqlProvider, ProviderConfig};
use paas_router::tcp::{EndpointConfig, TcpEndpoint};

pub const PASSWORD: &str = "test-superuser-secret";

/// The probe account: INSERT on `probe.*` and nothing global, so `read_only` stops it
/// like it stops an app.
pub const PROBE_USER: &str = "probe";

/// Everything a test needs, torn down in the right order on drop.
pub struct Harness {
    pub endpoint: TcpEndpoint,
    pub cluster: LocalCluster,
    pub store: Store,
    pub keys: Keys,
    /// The CA's certificate the members' certificate verifies against.
    pub ca_file: PathBuf,
    // Dropped last: the processes above must stop before etcd and the files go.
    pub dir: tempfile::TempDir,
    pub etcd: paas_it::EtcdServer,
}

impl Harness {
    /// Starts etcd, `n` supervisors and the endpoint, and waits for a primary with a
    /// sync (or just a primary when `n == 1`).
    pub async fn start(n: usize) -> Harness {
        let etcd = paas_it::EtcdServer::start().expect("etcd");
        let dir = tempfile::Builder::new()
            .prefix("paas-mysql-test")
            .tempdir()
            .expect("tempdir");
        // mariadbd runs as `mysql`: it must be able to traverse to its directory.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let keys = paas_mysql::cluster::keys("main");
        let host = addr::cluster_ip(&dir.path().to_string_lossy());
        let tls_dir = dir.path().join("tls");
        make_certificate(
            &tls_dir,
            &[host.into(), std::net::Ipv4Addr::LOCALHOST.into()],
        );
        let cluster = LocalCluster::start(LocalClusterSpec {
            program: supervisor_program(),
            args_prefix: vec![],
            args: vec!["--tls-dir".into(), tls_dir.display().to_string()],
            env: vec![(
                paas_mysql::args::PASSWORD_ENV.to_string(),
                PASSWORD.to_string(),
            )],
            cluster: "main".into(),
            member_prefix: "my".into(),
            port_base: addr::MYSQL_PORT,
            health_port_base: addr::MYSQL_HEALTH_PORT,
            members: n,
            etcd_endpoints: vec![etcd.endpoint()],
            prefix: "/paas/".into(),
            base_dir: dir.path().to_path_buf(),
            ttl_secs: 3,
        })
        .expect("cluster");
        let store = paas_mysql::cluster::connect(&[etcd.endpoint()], "/paas/", "main")
            .await
            .expect("store");
        let endpoint = TcpEndpoint::start(
            "127.0.0.1:0".parse().unwrap(),
            EndpointConfig {
                coord: store.coord().clone(),
                leader_key: keys.leader(),
                no_leader_wait: Duration::from_secs(15),
            },
        )
        .await
        .expect("endpoint");
        let harness = Harness {
            endpoint,
            cluster,
            store,
            keys,
            ca_file: tls_dir.join(paas_appliance::tls::CA_FILE),
            dir,
            etcd,
        };
        harness.wait_healthy(Duration::from_secs(120), None).await;
        harness
    }

    /// Reads the cluster's records, retrying a failed read for a while
    /// ([`paas_it::patiently`]): the harness's own reads are not what is tested.
    pub async fn snapshot(&self) -> Snapshot {
        paas_it::patiently("etcd read", || self.store.read()).await
    }

    /// Waits until a primary leads with an acknowledging sync (when there is more than
    /// one member) and every member runs as primary or streaming replica;
    /// `not_primary` excludes a member from leading. Returns the state document.
    pub async fn wait_healthy(&self, timeout: Duration, not_primary: Option<&str>) -> ClusterState {
        let started = Instant::now();
        let n = self.cluster.members().len();
        loop {
            let snapshot = self.snapshot().await;
            if let (Some((state, _)), Some(leader)) = (&snapshot.state, &snapshot.leader) {
                let members = &snapshot.members;
                let all_up = members.len() == n
                    && members.values().all(|m| {
                        m.running
                            && (m.role == Role::Primary
                                || (m.streaming && matches!(m.role, Role::Sync | Role::Async)))
                    });
                let sync_ok = n == 1
                    || state.sync.as_ref().is_some_and(|s| {
                        members
                            .get(s)
                            .is_some_and(|m| m.role == Role::Sync && m.acks)
                    });
                let primary_ok = members
                    .get(&state.primary)
                    .is_some_and(|m| m.decision.contains("acknowledges") || n == 1);
                if all_up
                    && sync_ok
                    && primary_ok
                    && leader.record.member == state.primary
                    && Some(state.primary.as_str()) != not_primary
                {
                    return state.clone();
                }
            }
            if started.elapsed() > timeout {
                panic!(
                    "cluster not healthy after {timeout:?}: {}\n{}",
                    describe(&snapshot),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The endpoint's address.
    pub fn endpoint_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// A provider through the endpoint, as the controller of a one-host platform would
    /// hold it: its own connections verify the CA, the URLs it hands out do not
    /// require TLS.
    pub fn provider(&self) -> MysqlProvider {
        self.provider_requiring_tls(false)
    }

    /// A provider whose URLs require TLS when `required` (clients on other hosts).
    pub fn provider_requiring_tls(&self, required: bool) -> MysqlProvider {
        let addr = self.endpoint_addr();
        let verify_full: paas_mysql::provision::VerifyRule =
            Arc::new(move || Box::pin(async move { required }));
        MysqlProvider::new(ProviderConfig {
            host: addr.ip().to_string(),
            port: addr.port(),
            superuser_password: PASSWORD.into(),
            tls: Some(paas_mysql::provision::ClientTls {
                ca_file: self.ca_file.display().to_string(),
                verify_full,
            }),
        })
    }

    /// The tail of every supervisor log and mariadb error log, for panic messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, m) in self.cluster.members().iter().enumerate() {
            let text = std::fs::read_to_string(self.cluster.log_path(i)).unwrap_or_default();
            let tail: Vec<&str> = text
                .lines()
                .rev()
                .filter(|l| !l.contains("DEBUG"))
                .take(80)
                .collect();
            out.push_str(&format!("--- {} supervisor.log (tail)\n", m.name));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
            let log = std::fs::read_to_string(m.dir.join("mariadb.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            out.push_str(&format!("--- {} mariadb.log (tail)\n", m.name));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Every member's sessions and semi-sync counters, for panic messages.
    pub async fn sessions(&self) -> String {
        let mut out = String::new();
        for i in 0..self.cluster.members().len() {
            let name = &self.cluster.members()[i].name;
            let Ok(mut conn) = connect_direct(self.member_addr(i)).await else {
                out.push_str(&format!("--- {name}: no connection\n"));
                continue;
            };
            let rows: Vec<(String, String, String, String)> = conn
                .query("SELECT CAST(id AS CHAR), user, command, COALESCE(CONCAT(state, ' | ', LEFT(info, 80)), '') FROM information_schema.PROCESSLIST")
                .await
                .unwrap_or_default();
            let status: Vec<(String, String)> = conn
                .query("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_%'")
                .await
                .unwrap_or_default();
            out.push_str(&format!("--- {name} sessions\n"));
            for row in rows {
                out.push_str(&format!("{row:?}\n"));
            }
            for (k, v) in status.iter().filter(|(k, _)| {
                k.contains("status")
                    || k.contains("clients")
                    || k.contains("wait_sessions")
                    || k.contains("yes_tx")
                    || k.contains("no_tx")
            }) {
                out.push_str(&format!("{k}={v}\n"));
            }
        }
        out
    }

    /// The index of member `name`.
    pub fn index(&self, name: &str) -> usize {
        self.cluster
            .members()
            .iter()
            .position(|m| m.name == name)
            .expect("member")
    }

    /// Member `i`'s mariadbd address.
    pub fn member_addr(&self, i: usize) -> SocketAddr {
        let m = &self.cluster.members()[i];
        SocketAddr::from((m.host, m.port))
    }
}

pub fn describe(snapshot: &Snapshot) -> String {
    let members: BTreeMap<&String, (Role, bool, bool, &str)> = snapshot
        .members
        .iter()
        .map(|(k, m): (&String, &MemberStatus)| {
            (k, (m.role, m.running, m.acks, m.decision.as_str()))
        })
        .collect();
    format!(
        "state={:?} leader={:?} members={members:#?}",
        snapshot.state.as_ref().map(|s| &s.0),
        snapshot.leader.as_ref().map(|l| &l.record.member)
    )
}

/// Options for `user`@`addr` (TCP only: mysql_async would otherwise switch to the
/// server's unix socket and bypass the endpoint).
pub fn opts(addr: SocketAddr, user: &str, password: &str, db: Option<&str>) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname(addr.ip().to_string())
        .tcp_port(addr.port())
        .user(Some(user))
        .pass(Some(password))
        .db_name(db)
        .prefer_socket(false)
}

/// Options from an app's `DATABASE_URL`, TCP only.
pub fn url_opts(url: &str) -> OptsBuilder {
    OptsBuilder::from_opts(Opts::from_url(url).expect("DATABASE_URL")).prefer_socket(false)
}

/// A connection, bounded by 3 s.
pub async fn connect(opts: OptsBuilder) -> Result<Conn, String> {
    match tokio::time::timeout(Duration::from_secs(3), Conn::new(opts)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}

/// A superuser connection straight to a member (bypassing the endpoint).
pub async fn connect_direct(addr: SocketAddr) -> Result<Conn, String> {
    connect(opts(addr, "paas", PASSWORD, None)).await
}

/// The rows the writer got an acknowledgement for: id, when, and which server's port.
#[derive(Default)]
pub struct Acked {
    pub ids: Vec<i64>,
    pub at: Vec<Instant>,
    pub ports: Vec<u16>,
}

impl Acked {
    /// When the first write acknowledged by a server other than `old_port` after `t0`
    /// came.
    pub fn first_elsewhere_after(&self, t0: Instant, old_port: u16) -> Option<Instant> {
        let from = self.at.partition_point(|at| *at <= t0);
        (from..self.at.len())
            .find(|&i| self.ports[i] != old_port)
            .map(|i| self.at[i])
    }
}

/// Provisions an app database the way `paas resource add mysql` does, creates the
/// writer's table with the app's own credentials, and the probe account and table.
/// Returns the app's `DATABASE_URL`.
pub async fn prepare_app_database(h: &Harness) -> String {
    let (env, _) = h
        .provider()
        .provision_database("shop", "db")
        .await
        .expect("provision");
    let url = env["DATABASE_URL"].clone();
    let mut app = connect(url_opts(&url))
        .await
        .expect("connect with DATABASE_URL");
    app.query_drop("CREATE TABLE acked (id BIGINT PRIMARY KEY) ENGINE=InnoDB")
        .await
        .expect("create acked");
    let mut admin = connect(opts(h.endpoint_addr(), "paas", PASSWORD, None))
        .await
        .expect("superuser through the endpoint");
    for sql in [
        "CREATE DATABASE probe".to_string(),
        "CREATE TABLE probe.probe (at DATETIME(6)) ENGINE=InnoDB".into(),
        format!("CREATE USER '{PROBE_USER}'@'%' IDENTIFIED BY '{PASSWORD}'"),
        format!("GRANT INSERT ON probe.* TO '{PROBE_USER}'@'%'"),
    ] {
        admin.query_drop(sql).await.expect("probe setup");
    }
    url
}

/// Inserts ids 1, 2, 3... through `url`, recording the acknowledged ones. An id whose
/// insert failed or timed out is never retried (its fate is unknown, so it is not
/// counted as acknowledged).
pub async fn writer(url: String, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>) {
    let mut next = 0i64;
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut conn) = connect(url_opts(&url)).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(Ok(Some(port))) = tokio::time::timeout(
            Duration::from_secs(3),
            conn.query_first::<u16, _>("SELECT @@port"),
        )
        .await
        else {
            continue;
        };
        while !stop.load(Ordering::SeqCst) {
            next += 1;
            let insert = conn.exec_drop("INSERT INTO acked (id) VALUES (?)", (next,));
            match tokio::time::timeout(Duration::from_secs(20), insert).await {
                Ok(Ok(())) => {
                    let mut a = acked.lock().unwrap();
                    a.ids.push(next);
                    a.at.push(Instant::now());
                    a.ports.push(port);
                }
                _ => break,
            }
        }
    }
}

/// Probes every member directly with a write by the probe account each round; returns
/// the rounds in which more than one member acknowledged a write.
pub async fn monitor(members: Vec<(String, SocketAddr)>, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut conns: Vec<Option<Conn>> = members.iter().map(|_| None).collect();
    let mut violations = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let mut probes = Vec::new();
        for (i, (_, addr)) in members.iter().enumerate() {
            let conn = conns[i].take();
            let addr = *addr;
            probes.push(tokio::spawn(async move {
                let mut conn = match conn {
                    Some(c) => c,
                    None => match tokio::time::timeout(
                        Duration::from_secs(1),
                        Conn::new(opts(addr, PROBE_USER, PASSWORD, None)),
                    )
                    .await
                    {
                        Ok(Ok(c)) => c,
                        _ => return (false, None),
                    },
                };
                // A write waiting for an acknowledgement is abandoned with its
                // connection, never killed (that would commit it locally).
                let write = conn.query_drop("INSERT INTO probe.probe (at) VALUES (NOW(6))");
                match tokio::time::timeout(Duration::from_millis(800), write).await {
                    Ok(Ok(())) => (true, Some(conn)),
                    Ok(Err(mysql_async::Error::Server(_))) => (false, Some(conn)),
                    _ => (false, None),
                }
            }));
        }
        let mut writable = Vec::new();
        for (i, probe) in probes.into_iter().enumerate() {
            let (ok, conn) = probe.await.unwrap();
            conns[i] = conn;
            if ok {
                writable.push(members[i].0.clone());
            }
        }
        if writable.len() > 1 {
            violations.push(format!("{writable:?} accepted writes in the same round"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    violations
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    KillServer,
    KillSupervisor,
    FreezeSupervisor,
}

pub async fn wait_until(
    what: &str,
    h: &Harness,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> bool,
) {
    let started = Instant::now();
    while !check().await {
        if started.elapsed() > timeout {
            panic!(
                "{what}: not within {timeout:?}\n{}\n{}\n{}",
                describe(&h.snapshot().await),
                h.logs(),
                h.sessions().await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads every id back through the endpoint; panics if an acknowledged one is missing.
pub async fn verify_acked(h: &Harness, url: &str, acked: &Arc<Mutex<Acked>>) -> usize {
    let expected: BTreeSet<i64> = acked.lock().unwrap().ids.iter().copied().collect();
    let started = Instant::now();
    loop {
        let present = async {
            let mut conn = connect(url_opts(url)).await.ok()?;
            let ids: Vec<i64> = conn.query("SELECT id FROM acked").await.ok()?;
            Some(ids.into_iter().collect::<BTreeSet<i64>>())
        }
        .await;
        if let Some(present) = present {
            let missing: Vec<&i64> = expected.difference(&present).collect();
            assert!(
                missing.is_empty(),
                "acknowledged rows lost: {missing:?}\n{}",
                h.logs()
            );
            return expected.len();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "cannot read back rows through the endpoint"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// mariadbd's pid, from its pid file in the member directory.
pub fn server_pid(member_dir: &std::path::Path) -> Option<i32> {
    let text = std::fs::read_to_string(member_dir.join("mysqld.pid")).ok()?;
    text.trim().parse().ok()
}

/// The supervisor binary: Cargo's path for tests, next to the examples dir otherwise.
fn supervisor_program() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_paas-mysql-supervisor") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            exe.parent()
                .and_then(|p| p.parent())
                .expect("target dir")
                .join("paas-mysql-supervisor")
        }
    }
}

/// One forced failover's outcome.
pub struct Failover {
    pub old: String,
    pub new: String,
    pub generation: u64,
    /// From the fault to the first write acknowledged by another server.
    pub took: Duration,
    /// Acknowledged rows, all verified present.
    pub rows: usize,
}

/// Forces the current primary out by `kind`, waits until another member leads, writes
/// are acknowledged by it through the endpoint, the old primary rejoined as a replica,
/// and every acknowledged row is present. Panics (with logs) otherwise.
pub async fn force_failover(
    h: &mut Harness,
    kind: Kind,
    url: &str,
    acked: &Arc<Mutex<Acked>>,
) -> Failover {
    let state = h.wait_healthy(Duration::from_secs(120), None).await;
    let old = state.primary.clone();
    let i = h.index(&old);
    let old_port = h.cluster.members()[i].port;
    let before = acked.lock().unwrap().ids.len();
    wait_until(
        "writes flowing before the failover",
        h,
        Duration::from_secs(30),
        async || acked.lock().unwrap().ids.len() > before + 5,
    )
    .await;
    let t0 = Instant::now();
    match kind {
        Kind::KillServer => {
            let pid = server_pid(&h.cluster.members()[i].dir).expect("mysqld.pid");
            // SAFETY: kill(2) on the mariadbd of a test cluster.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        Kind::KillSupervisor => h.cluster.signal(i, libc::SIGKILL),
        Kind::FreezeSupervisor => h.cluster.signal(i, libc::SIGSTOP),
    }
    wait_until(
        "writes resume on a new primary through the same endpoint",
        h,
        Duration::from_secs(30),
        async || {
            acked
                .lock()
                .unwrap()
                .first_elsewhere_after(t0, old_port)
                .is_some()
        },
    )
    .await;
    let took = acked
        .lock()
        .unwrap()
        .first_elsewhere_after(t0, old_port)
        .expect("checked")
        - t0;
    match kind {
        Kind::KillServer => {}
        Kind::KillSupervisor => h.cluster.restart(i).expect("restart supervisor"),
        Kind::FreezeSupervisor => {
            // Let the monitor watch the frozen side's still-running mariadbd a while.
            tokio::time::sleep(Duration::from_secs(2)).await;
            h.cluster.signal(i, libc::SIGCONT);
        }
    }
    let healthy = h.wait_healthy(Duration::from_secs(120), Some(&old)).await;
    assert!(healthy.generation > state.generation);
    let rows = verify_acked(h, url, acked).await;
    Failover {
        old,
        new: healthy.primary,
        generation: healthy.generation,
        took,
        rows,
    }
}

/// Makes a CA and a server certificate of it for `ips` and `localhost` in `dir`, with
/// the file names members expect (`paas_appliance::tls`); the CA's key is not kept.
pub fn make_certificate(dir: &std::path::Path, ips: &[std::net::IpAddr]) {
    use paas_appliance::tls::{CA_FILE, CERT_FILE, KEY_FILE};
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};
    std::fs::create_dir_all(dir).unwrap();
    let ca = make_ca(dir, CA_FILE, "test CA");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params
        .distinguished_name
        .push(DnType::CommonName, "test mariadb");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.0, &ca.1).unwrap();
    std::fs::write(dir.join(CERT_FILE), cert.pem()).unwrap();
    std::fs::write(dir.join(KEY_FILE), key.serialize_pem()).unwrap();
}

/// Makes a CA named `name`, writes its certificate to `dir/file` and returns it with
/// its key.
pub fn make_ca(
    dir: &std::path::Path,
    file: &str,
    name: &str,
) -> (rcgen::Certificate, rcgen::KeyPair) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(file), cert.pem()).unwrap();
    (cert, key)
}
