//! The Postgres appliance as `paas up` runs it: what the common launcher
//! (`crate::appliance`) needs to know about PostgreSQL, and `paas appliance postgres`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use paas_appliance::provider::Provider;
use paas_appliance::records::Keys;
use paas_postgres::archive::ArchiveConfig;
use paas_postgres::args::SupervisorArgs;
use paas_postgres::pitr::PitrConfig;
use paas_postgres::provision::{PostgresProvider, ProviderConfig};

use crate::appliance::{ApplianceKind, Launched};

/// PostgreSQL 15 with synchronous replication (`paas-postgres`).
pub struct PostgresKind;

#[async_trait::async_trait]
impl ApplianceKind for PostgresKind {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn member_prefix(&self) -> &'static str {
        "pg"
    }

    fn port_bases(&self) -> (u16, u16) {
        (
            paas_appliance::addr::POSTGRES_PORT,
            paas_appliance::addr::POSTGRES_HEALTH_PORT,
        )
    }

    fn keys(&self, cluster: &str) -> Keys {
        paas_postgres::cluster::keys(cluster)
    }

    fn secret_env(&self) -> &'static str {
        paas_postgres::args::PASSWORD_ENV
    }

    fn default_listen(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 6432))
    }

    /// The members run PostgreSQL as the postgres user: fail now, naming the directory,
    /// rather than wait for a cluster that cannot start.
    fn check_dir(&self, dir: &Path) -> Result<()> {
        Ok(paas_postgres::pg::check_reachable(dir)?)
    }

    /// Ready when a primary is reachable through the endpoint with a synchronous
    /// standby streaming.
    async fn not_ready(
        &self,
        endpoint: SocketAddr,
        password: &str,
        _ca_file: Option<&Path>,
    ) -> Option<String> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(endpoint.ip().to_string())
            .port(endpoint.port())
            .user("postgres")
            .password(password)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5));
        let (client, conn) = match config.connect(tokio_postgres::NoTls).await {
            Ok(c) => c,
            Err(e) => return Some(format!("cannot connect: {e}")),
        };
        let conn = tokio::spawn(conn);
        let row = client
            .query_one(
                "select pg_is_in_recovery(), \
                 (select count(*) from pg_stat_replication where sync_state = 'sync')",
                &[],
            )
            .await;
        conn.abort();
        match row {
            Err(e) => Some(format!("query failed: {e}")),
            Ok(row) if row.get::<_, bool>(0) => Some("the endpoint reaches a standby".into()),
            Ok(row) if row.get::<_, i64>(1) == 0 => Some("no synchronous standby yet".into()),
            Ok(_) => None,
        }
    }

    fn speaks_tls(&self) -> bool {
        true
    }

    /// Continuous archiving with pgBackRest into `DIR/pgbackrest` (`paas pg restore
    /// --to-time`).
    fn member_args(&self, dir: &Path) -> Vec<String> {
        vec![
            "--archive-repo".into(),
            archive_repo(dir).display().to_string(),
        ]
    }

    /// `DATABASE_URL` requires `sslmode=verify-full` once clients may be on another
    /// machine (`crate::appliance::clients_off_host`), asked at each `resource add`.
    fn provider(&self, cluster: &Launched, etcd: &[String]) -> Arc<dyn Provider> {
        let prefix = format!("{}/", paas_model::keys::DEFAULT_PREFIX);
        let tls = crate::appliance::client_tls(cluster);
        Arc::new(
            PostgresProvider::new(ProviderConfig {
                host: cluster.endpoint.ip().to_string(),
                port: cluster.endpoint.port(),
                superuser_password: cluster.secret.clone(),
                tls,
            })
            .with_status_from(etcd.to_vec(), &prefix, &cluster.cluster)
            .with_pitr(PitrConfig {
                archive: ArchiveConfig::new(archive_repo(&cluster.dir), &cluster.cluster),
                scratch_root: cluster.dir.join("pitr"),
                bin_dir: paas_postgres::dump::DEFAULT_BIN_DIR.into(),
                superuser_password: cluster.secret.clone(),
            }),
        )
    }
}

/// The pgBackRest repository of the cluster whose members live in `dir`.
fn archive_repo(dir: &Path) -> std::path::PathBuf {
    dir.join("pgbackrest")
}

/// Runs one supervisor until SIGINT/SIGTERM.
pub async fn supervise(args: SupervisorArgs) -> Result<()> {
    crate::up::init_tracing();
    args.member.load_etcd_identity()?;
    paas_postgres::supervisor::run(args.into_config()?, crate::up::wait_for_signal())
        .await
        .context("postgres supervisor failed")
}
