//! Shared helpers of the integration tests: a real etcd, a 3-member cluster of real
//! supervisor processes with real PostgreSQL, and the leader-following endpoint.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use paas_postgres::cluster::{ClusterState, Keys, MemberStatus, Role};
use paas_postgres::launcher::{LocalCluster, LocalClusterSpec};
use paas_postgres::store::{Snapshot, Store};
use paas_router::tcp::{EndpointConfig, TcpEndpoint};

pub const PASSWORD: &str = "test-superuser-secret";

/// Everything a test needs, torn down in the right order on drop.
pub struct Harness {
    pub endpoint: TcpEndpoint,
    pub cluster: LocalCluster,
    pub store: Store,
    pub keys: Keys,
    // Dropped last: the processes above must stop before etcd and the files go.
    pub dir: tempfile::TempDir,
    pub etcd: paas_it::EtcdServer,
}

impl Harness {
    /// Starts etcd, `n` supervisors and the endpoint, and waits for a primary with a sync.
    pub async fn start(n: usize) -> Harness {
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
        let keys = Keys::new("/paas/", "main");
        let cluster = LocalCluster::start(LocalClusterSpec {
            program: PathBuf::from(env!("CARGO_BIN_EXE_paas-pg-supervisor")),
            args_prefix: vec![],
            cluster: "main".into(),
            members: n,
            etcd_endpoints: vec![etcd.endpoint()],
            prefix: "/paas/".into(),
            base_dir: dir.path().to_path_buf(),
            superuser_password: PASSWORD.into(),
            ttl_secs: 3,
        })
        .expect("cluster");
        let store = Store::connect(&[etcd.endpoint()], keys.clone())
            .await
            .expect("store");
        let endpoint = TcpEndpoint::start(
            "127.0.0.1:0".parse().unwrap(),
            EndpointConfig {
                etcd_endpoints: vec![etcd.endpoint()],
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
            dir,
            etcd,
        };
        harness.wait_healthy(Duration::from_secs(90), None).await;
        harness
    }

    /// Reads the cluster's records.
    pub async fn snapshot(&self) -> Snapshot {
        self.store.clone().read().await.expect("etcd read")
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
                        m.running && matches!(m.role, Role::Primary | Role::Sync | Role::Async)
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
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
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
pub async fn connect_direct(port: u16) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect(&format!("host=127.0.0.1 port={port} user=postgres password={PASSWORD} dbname=postgres connect_timeout=2")).await
}

/// A connection through `conninfo`, its driver task spawned.
pub async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}
