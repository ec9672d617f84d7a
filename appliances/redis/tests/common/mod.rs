//! Shared helpers of the integration tests: a real etcd, a replication group of real
//! supervisor processes with real redis-servers, and the leader-following endpoint.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paas_appliance::launcher::LocalCluster;
use paas_appliance::records::Records;
use paas_redis::cluster::{GroupState, MemberStatus, Role};
use paas_redis::launcher::{self, GroupSpec};
use paas_router::tcp::{EndpointConfig, TcpEndpoint};

pub const SECRET: &str = "test0123456789abcdef0123456789abcdef0123456789abcdef0123456789";

/// The app's password of the test group.
pub fn password() -> String {
    paas_redis::secret::app_password(SECRET)
}

/// The supervisors' password of the test group.
pub fn admin_password() -> String {
    paas_redis::secret::admin_password(SECRET)
}

pub type Store = Records<GroupState, MemberStatus>;
pub type Snapshot = paas_appliance::records::Snapshot<GroupState, MemberStatus>;

/// Everything a test needs, torn down in the right order on drop.
pub struct Harness {
    pub endpoint: TcpEndpoint,
    pub group: LocalCluster,
    pub store: Store,
    /// The CA the members' certificate verifies against, when they have one.
    pub ca_file: Option<PathBuf>,
    // Dropped last: the processes above must stop before etcd and the files go.
    pub dir: tempfile::TempDir,
    pub etcd: paas_it::EtcdServer,
}

/// The supervisor binary built with this crate (next to the example for the bench,
/// which cargo does not tell where the binaries are).
pub fn supervisor_program() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_paas-redis-supervisor") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            exe.parent()
                .and_then(|p| p.parent())
                .expect("target dir")
                .join("paas-redis-supervisor")
        }
    }
}

/// A temporary directory the `redis` OS user can traverse (tests run as root).
pub fn reachable_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

impl Harness {
    /// Starts etcd, an `n`-member group and the endpoint, and waits until it is healthy.
    pub async fn start(n: usize) -> Harness {
        Harness::start_with(n, false).await
    }

    /// [`Harness::start`], the members with a certificate of a CA made here when `tls`.
    pub async fn start_with(n: usize, tls: bool) -> Harness {
        let etcd = paas_it::EtcdServer::start().expect("etcd");
        let dir = reachable_tempdir("paas-redis-test");
        let tls_dir = tls.then(|| {
            let tls_dir = dir.path().join("tls");
            let host = paas_appliance::addr::cluster_ip(&dir.path().to_string_lossy());
            make_certificate(
                &tls_dir,
                &[host.into(), std::net::Ipv4Addr::LOCALHOST.into()],
            );
            tls_dir
        });
        let spec = GroupSpec {
            group: "g".into(),
            members: n,
            base_dir: dir.path().to_path_buf(),
            secret: SECRET.into(),
            etcd_endpoints: vec![etcd.endpoint()],
            prefix: "/paas/".into(),
            ttl_secs: 3,
            tls_dir: tls_dir.clone(),
        };
        let group = LocalCluster::start(launcher::local_spec(&spec, supervisor_program(), vec![]))
            .expect("group");
        let coord =
            paas_coord::Coord::connect(&[etcd.endpoint()], "/paas/", Duration::from_secs(5))
                .await
                .expect("etcd client");
        let keys = paas_redis::cluster::keys("g");
        let store = Store::new(coord.clone(), keys.clone());
        let endpoint = TcpEndpoint::start(
            "127.0.0.1:0".parse().unwrap(),
            EndpointConfig {
                coord,
                leader_key: keys.leader(),
                no_leader_wait: Duration::from_secs(15),
            },
        )
        .await
        .expect("endpoint");
        let harness = Harness {
            endpoint,
            group,
            store,
            ca_file: tls_dir.map(|d| {
                let ca = d.join(paas_appliance::tls::CA_FILE);
                assert!(
                    HARNESS_CA.set(ca.clone()).is_ok(),
                    "one group with a certificate per process"
                );
                ca
            }),
            dir,
            etcd,
        };
        harness.wait_healthy(Duration::from_secs(60), None).await;
        harness
    }

    /// Reads the group's records, retrying a failed read for a while
    /// ([`paas_it::patiently`]): the harness's own reads are not what is tested.
    pub async fn snapshot(&self) -> Snapshot {
        paas_it::patiently("etcd read", || self.store.read()).await
    }

    /// Waits until a primary leads and every member runs, replicas linked to it;
    /// `not_primary` excludes a member from leading. Returns the state document.
    pub async fn wait_healthy(&self, timeout: Duration, not_primary: Option<&str>) -> GroupState {
        let started = Instant::now();
        loop {
            let snapshot = self.snapshot().await;
            if let (Some((state, _)), Some(leader)) = (&snapshot.state, &snapshot.leader) {
                let members = &snapshot.members;
                let all_up = members.len() == self.group.members().len()
                    && members.values().all(|m| {
                        m.running
                            && ((m.role == Role::Primary && m.name == state.primary)
                                || (m.role == Role::Replica
                                    && m.link_up
                                    && m.upstream.as_deref() == Some(state.primary.as_str())))
                    });
                if all_up
                    && leader.record.member == state.primary
                    && Some(state.primary.as_str()) != not_primary
                {
                    return state.clone();
                }
            }
            if started.elapsed() > timeout {
                panic!(
                    "group not healthy after {timeout:?}: {}\n{}",
                    describe(&snapshot),
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `redis://default:PASSWORD@endpoint` (`rediss://` with TLS).
    pub fn url(&self) -> String {
        format!(
            "{}default:{}@{}/",
            paas_redis::tls::scheme(self.ca_file.is_some()),
            password(),
            self.endpoint.local_addr()
        )
    }

    /// The tail of every supervisor and server log, for panic messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, m) in self.group.members().iter().enumerate() {
            for (what, path, n) in [
                ("supervisor.log", self.group.log_path(i), 60),
                ("redis.log", m.dir.join("redis.log"), 15),
            ] {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(n).collect();
                out.push_str(&format!("--- {} {what} (tail)\n", m.name));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// The index of member `name`.
    pub fn index(&self, name: &str) -> usize {
        self.group
            .members()
            .iter()
            .position(|m| m.name == name)
            .expect("member")
    }

    /// The pid of member `i`'s redis-server, from its pid file.
    pub fn redis_pid(&self, i: usize) -> Option<i32> {
        let text = std::fs::read_to_string(self.group.members()[i].dir.join("redis.pid")).ok()?;
        text.trim().parse().ok()
    }
}

pub fn describe(snapshot: &Snapshot) -> String {
    let members: BTreeMap<&String, (Role, bool, Option<&str>, &str)> = snapshot
        .members
        .iter()
        .map(|(k, m)| {
            (
                k,
                (
                    m.role,
                    m.running,
                    m.upstream.as_deref(),
                    m.decision.as_str(),
                ),
            )
        })
        .collect();
    format!(
        "state={:?} leader={:?} members={members:#?}",
        snapshot.state.as_ref().map(|s| &s.0),
        snapshot.leader.as_ref().map(|l| &l.record.member)
    )
}

/// The CA of the group with a certificate this process started (one per test binary),
/// which [`connect`] trusts for `rediss://` URLs.
static HARNESS_CA: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// A connection through `url` (`rediss://`: verified against the harness's CA),
/// bounded in time.
pub async fn connect(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    let client = paas_redis::tls::open(url, HARNESS_CA.get().map(PathBuf::as_path)).ok()?;
    match tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(Ok(conn)) => Some(conn),
        _ => None,
    }
}

/// What the writer saw: writes confirmed by `WAIT 1` (with when and which server port),
/// and writes answered OK but not confirmed.
#[derive(Default)]
pub struct Written {
    pub accepted_at: Vec<Instant>,
    pub accepted_port: Vec<u16>,
    pub confirmed: Vec<u64>,
    pub confirmed_at: Vec<Instant>,
    pub confirmed_port: Vec<u16>,
    pub unconfirmed: Vec<u64>,
}

impl Written {
    /// When the first write accepted (answered OK) by a server other than `old_port`
    /// after `t0` came.
    pub fn first_accepted_elsewhere_after(&self, t0: Instant, old_port: u16) -> Option<Instant> {
        let from = self.accepted_at.partition_point(|at| *at <= t0);
        (from..self.accepted_at.len())
            .find(|&i| self.accepted_port[i] != old_port)
            .map(|i| self.accepted_at[i])
    }
}

/// Writes `w:1`, `w:2`... through `url`, each followed by `WAIT 1 1000`: a write the
/// WAIT confirmed (>= 1 replica) goes to `confirmed`, one answered OK but not confirmed
/// to `unconfirmed`. A write whose outcome is unknown (error, timeout) is in neither.
pub async fn writer(url: String, written: Arc<Mutex<Written>>, stop: Arc<AtomicBool>) {
    let mut next = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let Some(mut conn) = connect(&url).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        // The endpoint pins a connection to one server: ask it once which one.
        let info: Result<String, _> = tokio::time::timeout(
            Duration::from_secs(2),
            redis::cmd("INFO").arg("server").query_async(&mut conn),
        )
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "timeout",
            )))
        });
        let Ok(info) = info else { continue };
        let port: u16 = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("tcp_port:"))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        while !stop.load(Ordering::SeqCst) {
            next += 1;
            let mut set = redis::cmd("SET");
            set.arg(format!("w:{next}")).arg(next);
            match tokio::time::timeout(Duration::from_secs(3), set.query_async::<String>(&mut conn))
                .await
            {
                Ok(Ok(_)) => {
                    let mut w = written.lock().unwrap();
                    w.accepted_at.push(Instant::now());
                    w.accepted_port.push(port);
                }
                Ok(Err(e)) if e.kind() == redis::ErrorKind::ResponseError => {
                    // Refused (NOREPLICAS, READONLY): certainly not written.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                _ => break,
            }
            let mut wait = redis::cmd("WAIT");
            wait.arg(1).arg(1000);
            match tokio::time::timeout(Duration::from_secs(3), wait.query_async::<i64>(&mut conn))
                .await
            {
                Ok(Ok(n)) if n >= 1 => {
                    let mut w = written.lock().unwrap();
                    w.confirmed.push(next);
                    w.confirmed_at.push(Instant::now());
                    w.confirmed_port.push(port);
                }
                Ok(Ok(_)) => written.lock().unwrap().unconfirmed.push(next),
                _ => {
                    written.lock().unwrap().unconfirmed.push(next);
                    break;
                }
            }
        }
    }
}

/// Reads back keys `w:<id>` through `url`; returns the ids missing.
pub async fn missing(url: &str, ids: &[u64]) -> Vec<u64> {
    let mut conn = connect(url).await.expect("connect to read back");
    let mut gone = Vec::new();
    for chunk in ids.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|id| format!("w:{id}")).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .expect("MGET");
        for (id, value) in chunk.iter().zip(values) {
            if value.is_none() {
                gone.push(*id);
            }
        }
    }
    gone
}

/// The endpoint's address.
pub fn addr_of(h: &Harness) -> SocketAddr {
    h.endpoint.local_addr()
}

/// Runs groups as local supervisor processes behind a `paas-router` endpoint each: the
/// `GroupRunner` of the provider tests and the bench (the node has its own).
pub struct LocalRunner {
    pub coord: paas_coord::Coord,
    pub groups: Mutex<BTreeMap<String, (LocalCluster, TcpEndpoint)>>,
    /// The secret of every group launched, kept after it stops (what `recorded_secret`
    /// answers).
    pub secrets: Mutex<BTreeMap<String, String>>,
}

impl LocalRunner {
    pub fn new(coord: paas_coord::Coord) -> Self {
        LocalRunner {
            coord,
            groups: Mutex::new(BTreeMap::new()),
            secrets: Mutex::new(BTreeMap::new()),
        }
    }

    /// Starts `spec`'s members and an endpoint on `listen`.
    async fn start(
        &self,
        spec: &GroupSpec,
        listen: SocketAddr,
    ) -> Result<SocketAddr, paas_appliance::provider::ProviderError> {
        let fail = |e: String| paas_appliance::provider::ProviderError(e);
        let cluster = LocalCluster::start(launcher::local_spec(spec, supervisor_program(), vec![]))
            .map_err(|e| fail(e.to_string()))?;
        let endpoint = TcpEndpoint::start(
            listen,
            EndpointConfig {
                coord: self.coord.clone(),
                leader_key: paas_redis::cluster::keys(&spec.group).leader(),
                no_leader_wait: Duration::from_secs(15),
            },
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
        let addr = endpoint.local_addr();
        self.secrets
            .lock()
            .unwrap()
            .insert(spec.group.clone(), spec.secret.clone());
        self.groups
            .lock()
            .unwrap()
            .insert(spec.group.clone(), (cluster, endpoint));
        Ok(addr)
    }
}

#[async_trait::async_trait]
impl paas_redis::provision::GroupRunner for LocalRunner {
    async fn launch(
        &self,
        spec: &GroupSpec,
    ) -> Result<SocketAddr, paas_appliance::provider::ProviderError> {
        self.start(spec, "127.0.0.1:0".parse().unwrap()).await
    }

    async fn recorded_secret(
        &self,
        group: &str,
    ) -> Result<Option<String>, paas_appliance::provider::ProviderError> {
        Ok(self.secrets.lock().unwrap().get(group).cloned())
    }

    async fn relaunch(
        &self,
        spec: &GroupSpec,
        listen: SocketAddr,
        tls: bool,
    ) -> Result<SocketAddr, paas_appliance::provider::ProviderError> {
        let fail = |e: String| paas_appliance::provider::ProviderError(e);
        if tls != spec.tls_dir.is_some() {
            return Err(fail("this runner issues no certificates".into()));
        }
        if let Some((_, endpoint)) = self.groups.lock().unwrap().get(&spec.group) {
            return Ok(endpoint.local_addr());
        }
        paas_appliance::addr::check_free(listen, "the group's endpoint").map_err(fail)?;
        self.start(spec, listen).await
    }

    async fn stop(&self, group: &str) -> Result<(), paas_appliance::provider::ProviderError> {
        let running = self.groups.lock().unwrap().remove(group);
        if let Some(running) = running {
            // Stopping waits for the supervisors to exit: not on a runtime thread.
            tokio::task::spawn_blocking(move || drop(running))
                .await
                .map_err(|e| paas_appliance::provider::ProviderError(e.to_string()))?;
        }
        Ok(())
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
        .push(DnType::CommonName, "test redis");
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
