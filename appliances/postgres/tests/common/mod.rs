//! Shared helpers of the integration tests: a real etcd, a 3-member cluster of real
//! supervisor processes with real PostgreSQL, and the leader-following endpoint. The
//! members get a server certificate of a CA made here (`--tls-dir`), as `paas up`
//! gives them one of the cluster CA, so every test runs with TLS on and replication
//! verifying it.

#![allow(dead_code)] // each test binary uses a different subset

pub mod pitr;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paas_appliance::launcher::{LocalCluster, LocalClusterSpec};
use paas_postgres::cluster::{ClusterState, Keys, MemberStatus, Role};
use paas_postgres::store::{Snapshot, Store};
use paas_router::tcp::{EndpointConfig, TcpEndpoint};

pub const PASSWORD: &str = "test-superuser-secret";

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
    /// Starts etcd, `n` supervisors and the endpoint, and waits for a primary with a sync.
    pub async fn start(n: usize) -> Harness {
        Harness::start_with(n, |_| vec![]).await
    }

    /// [`Harness::start`] with more supervisor flags, made from the test's directory.
    pub async fn start_with(
        n: usize,
        more_args: impl FnOnce(&std::path::Path) -> Vec<String>,
    ) -> Harness {
        Harness::start_with_env(n, more_args, vec![]).await
    }

    /// [`Harness::start_with`] with more variables in the supervisors' environment.
    pub async fn start_with_env(
        n: usize,
        more_args: impl FnOnce(&std::path::Path) -> Vec<String>,
        more_env: Vec<(String, String)>,
    ) -> Harness {
        let etcd = paas_it::EtcdServer::start().expect("etcd");
        let dir = tempfile::Builder::new()
            .prefix("paas-pg-test")
            .tempdir()
            .expect("tempdir");
        // PostgreSQL runs as `postgres`: it must be able to traverse to its directory.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let keys = paas_postgres::cluster::keys("main");
        let host = paas_appliance::addr::cluster_ip(&dir.path().to_string_lossy());
        let tls_dir = dir.path().join("tls");
        make_certificate(
            &tls_dir,
            &[host.into(), std::net::Ipv4Addr::LOCALHOST.into()],
        );
        let cluster = LocalCluster::start(LocalClusterSpec {
            program: supervisor_program(),
            args_prefix: vec![],
            args: [
                vec!["--tls-dir".into(), tls_dir.display().to_string()],
                more_args(dir.path()),
            ]
            .concat(),
            env: [
                vec![(paas_postgres::args::PASSWORD_ENV.into(), PASSWORD.into())],
                more_env,
            ]
            .concat(),
            cluster: "main".into(),
            member_prefix: "pg".into(),
            port_base: paas_appliance::addr::POSTGRES_PORT,
            health_port_base: paas_appliance::addr::POSTGRES_HEALTH_PORT,
            members: n,
            etcd_endpoints: vec![etcd.endpoint()],
            prefix: "/paas/".into(),
            base_dir: dir.path().to_path_buf(),
            ttl_secs: 3,
        })
        .expect("cluster");
        let store = paas_postgres::store::connect(&[etcd.endpoint()], "/paas/", "main")
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
        harness.wait_healthy(Duration::from_secs(90), None).await;
        harness
    }

    /// Reads the cluster's records, retrying a failed read for a while
    /// ([`paas_it::patiently`]): the harness's own reads are not what is tested.
    pub async fn snapshot(&self) -> Snapshot {
        paas_it::patiently("etcd read", || self.store.read()).await
    }

    /// Waits until a primary leads with a streaming sync and every member runs as
    /// primary or standby; `not_primary` excludes a member from leading. Returns the
    /// state document.
    pub async fn wait_healthy(&self, timeout: Duration, not_primary: Option<&str>) -> ClusterState {
        let started = Instant::now();
        loop {
            let snapshot = self.snapshot().await;
            if let (Some((state, _)), Some(leader)) = (&snapshot.state, &snapshot.leader) {
                let members = &snapshot.members;
                let all_up = members.len() == self.cluster.members().len()
                    && members.values().all(|m| {
                        m.running
                            && (m.role == Role::Primary
                                || (m.streaming && matches!(m.role, Role::Sync | Role::Async)))
                    });
                let sync_ok = state
                    .sync
                    .as_ref()
                    .is_some_and(|s| members.get(s).is_some_and(|m| m.role == Role::Sync));
                if all_up
                    && sync_ok
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

    /// The tail of every supervisor log, for panic messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, m) in self.cluster.members().iter().enumerate() {
            let text = std::fs::read_to_string(self.cluster.log_path(i)).unwrap_or_default();
            let tail: Vec<&str> = text
                .lines()
                .rev()
                .filter(|l| !l.contains("DEBUG"))
                .take(120)
                .collect();
            out.push_str(&format!("--- {} supervisor.log (tail)\n", m.name));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
            let pg = std::fs::read_to_string(m.dir.join("postgres.log")).unwrap_or_default();
            let tail: Vec<&str> = pg.lines().rev().take(10).collect();
            out.push_str(&format!("--- {} postgres.log (tail)\n", m.name));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
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
}

pub fn describe(snapshot: &Snapshot) -> String {
    let members: BTreeMap<&String, (Role, bool, &str)> = snapshot
        .members
        .iter()
        .map(|(k, m): (&String, &MemberStatus)| (k, (m.role, m.running, m.decision.as_str())))
        .collect();
    format!(
        "state={:?} leader={:?} members={members:#?}",
        snapshot.state.as_ref().map(|s| &s.0),
        snapshot.leader.as_ref().map(|l| &l.record.member)
    )
}

/// A superuser connection straight to a member's PostgreSQL (bypassing the endpoint).
pub async fn connect_direct(
    addr: SocketAddr,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (host, port) = (addr.ip(), addr.port());
    connect(&format!("host={host} port={port} user=postgres password={PASSWORD} dbname=postgres connect_timeout=2")).await
}

/// A connection through `conninfo`, its driver task spawned.
pub async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The rows the writer got an acknowledgement for, and when the last one came.
/// The rows the writer got an acknowledgement for: id, when, and which server's port.
#[derive(Default)]
pub struct Acked {
    pub ids: Vec<i64>,
    pub at: Vec<Instant>,
    pub ports: Vec<i32>,
}

impl Acked {
    /// When the first write acknowledged by a server other than `old_port` after `t0` came.
    pub fn first_elsewhere_after(&self, t0: Instant, old_port: u16) -> Option<Instant> {
        let from = self.at.partition_point(|at| *at <= t0);
        (from..self.at.len())
            .find(|&i| self.ports[i] != i32::from(old_port))
            .map(|i| self.at[i])
    }
}

/// Provisions an app database the way `paas resource add postgres` does, creates the
/// writer's table in it with the app's own credentials, and the monitor's probe table in
/// the `postgres` database. Returns the app's `DATABASE_URL`.
pub async fn prepare_app_database(h: &Harness) -> String {
    let addr = h.endpoint_addr();
    let provider =
        paas_postgres::provision::PostgresProvider::new(paas_postgres::provision::ProviderConfig {
            host: addr.ip().to_string(),
            port: addr.port(),
            superuser_password: PASSWORD.into(),
            tls: None,
        });
    let (env, _) = provider
        .provision_database("shop", "db")
        .await
        .expect("provision");
    let url = env["DATABASE_URL"].clone();
    connect(&url)
        .await
        .expect("connect with DATABASE_URL")
        .batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
        .await
        .expect("create acked");
    connect(&endpoint_conninfo(h))
        .await
        .expect("connect as superuser")
        .batch_execute("CREATE TABLE probe (at timestamptz)")
        .await
        .expect("create probe");
    url
}

pub fn endpoint_conninfo(h: &Harness) -> String {
    let addr = h.endpoint_addr();
    format!(
        "host={} port={} user=postgres password={PASSWORD} dbname=postgres connect_timeout=3",
        addr.ip(),
        addr.port()
    )
}

/// Creates table `kept` through the endpoint and inserts the ids `0..rows`, each
/// acknowledged before the next: the rows a later check must find again.
pub async fn create_kept(h: &Harness, rows: i32) {
    let client = connect(&endpoint_conninfo(h)).await.unwrap();
    client
        .batch_execute("CREATE TABLE kept (id int)")
        .await
        .unwrap();
    for id in 0..rows {
        client
            .execute("INSERT INTO kept VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
}

/// Inserts ids 1, 2, 3... through the endpoint, recording the acknowledged ones. An id
/// whose insert failed or timed out is never retried (its fate is unknown, so it is not
/// counted as acknowledged).
pub async fn writer(conninfo: String, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>) {
    let mut next = 0i64;
    while !stop.load(Ordering::SeqCst) {
        let Ok(client) = connect(&conninfo).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while !stop.load(Ordering::SeqCst) {
            next += 1;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&next];
            let insert = client.query_one(
                "INSERT INTO acked (id) VALUES ($1) RETURNING inet_server_port()",
                &params,
            );
            match tokio::time::timeout(Duration::from_secs(20), insert).await {
                Ok(Ok(row)) => {
                    let mut a = acked.lock().unwrap();
                    a.ids.push(next);
                    a.at.push(Instant::now());
                    a.ports.push(row.get(0));
                }
                _ => break,
            }
        }
    }
}

/// Probes every instance with a direct write each round; returns the rounds in which
/// more than one instance acknowledged a write.
pub async fn monitor(ports: Vec<(String, SocketAddr)>, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut clients: Vec<Option<tokio_postgres::Client>> = ports.iter().map(|_| None).collect();
    let mut violations = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let mut probes = Vec::new();
        for (i, (_, port)) in ports.iter().enumerate() {
            let client = clients[i].take();
            let port = *port;
            probes.push(tokio::spawn(async move {
                let client = match client {
                    Some(c) if !c.is_closed() => c,
                    _ => match tokio::time::timeout(Duration::from_secs(1), connect_direct(port))
                        .await
                    {
                        Ok(Ok(c)) => c,
                        _ => return (false, None),
                    },
                };
                // No statement_timeout: cancelling a commit that waits for the sync would
                // make it visible locally. A timed-out probe's connection is dropped.
                let write = client.execute("INSERT INTO probe (at) VALUES (now())", &[]);
                match tokio::time::timeout(Duration::from_millis(800), write).await {
                    Ok(Ok(_)) => (true, Some(client)),
                    Ok(Err(_)) => (false, Some(client)),
                    Err(_) => (false, None),
                }
            }));
        }
        let mut writable = Vec::new();
        for (i, probe) in probes.into_iter().enumerate() {
            let (ok, client) = probe.await.unwrap();
            clients[i] = client;
            if ok {
                writable.push(ports[i].0.clone());
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
    KillPostgres,
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
                "{what}: not within {timeout:?}\n{}\n{}",
                describe(&h.snapshot().await),
                h.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn verify_acked(h: &Harness, conninfo: &str, acked: &Arc<Mutex<Acked>>) -> usize {
    let expected: BTreeSet<i64> = acked.lock().unwrap().ids.iter().copied().collect();
    let started = Instant::now();
    loop {
        let present = async {
            let client = connect(conninfo).await.ok()?;
            let rows = client.query("SELECT id FROM acked", &[]).await.ok()?;
            Some(
                rows.iter()
                    .map(|r| r.get::<_, i64>(0))
                    .collect::<BTreeSet<i64>>(),
            )
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

/// The supervisor binary: Cargo's path for tests, next to the examples dir otherwise.
fn supervisor_program() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_paas-pg-supervisor") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            exe.parent()
                .and_then(|p| p.parent())
                .expect("target dir")
                .join("paas-pg-supervisor")
        }
    }
}

/// One forced failover's outcome.
pub struct Failover {
    pub old: String,
    pub new: String,
    pub generation: u64,
    /// From the kill to the first write acknowledged by another server.
    pub took: Duration,
    /// Acknowledged rows, all verified present.
    pub rows: usize,
}

/// Forces the current primary out by `kind`, waits until another member leads, writes are
/// acknowledged by it through the endpoint, the old primary rejoined as a standby, and
/// every acknowledged row is present. Panics (with logs) otherwise.
pub async fn force_failover(
    h: &mut Harness,
    kind: Kind,
    conninfo: &str,
    acked: &Arc<Mutex<Acked>>,
) -> Failover {
    let state = h.wait_healthy(Duration::from_secs(90), None).await;
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
        Kind::KillPostgres => {
            let pid = postmaster_pid(&h.cluster.members()[i].dir).expect("postmaster.pid");
            // SAFETY: kill(2) on the postmaster of a test cluster.
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
        Kind::KillPostgres => {}
        Kind::KillSupervisor => h.cluster.restart(i).expect("restart supervisor"),
        Kind::FreezeSupervisor => {
            // Let the monitor watch the frozen side's still-running PostgreSQL a while.
            tokio::time::sleep(Duration::from_secs(2)).await;
            h.cluster.signal(i, libc::SIGCONT);
        }
    }
    let healthy = h.wait_healthy(Duration::from_secs(90), Some(&old)).await;
    assert!(healthy.generation > state.generation);
    let rows = verify_acked(h, conninfo, acked).await;
    Failover {
        old,
        new: healthy.primary,
        generation: healthy.generation,
        took,
        rows,
    }
}

/// The postmaster's pid, from the member's PGDATA `postmaster.pid`, if present.
pub fn postmaster_pid(member_dir: &std::path::Path) -> Option<i32> {
    let text = std::fs::read_to_string(member_dir.join("data/postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
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
        .push(DnType::CommonName, "test postgres");
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
