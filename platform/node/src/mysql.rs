//! The MariaDB appliance as `paas up` runs it: what the common launcher
//! (`crate::appliance`) needs to know about MariaDB, and `paas appliance mysql`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use mysql_async::prelude::Queryable;
use paas_appliance::provider::Provider;
use paas_appliance::records::Keys;
use paas_mysql::args::SupervisorArgs;
use paas_mysql::provision::{MysqlProvider, ProviderConfig};

use crate::appliance::{ApplianceKind, Launched};

/// MariaDB 10.11 with lossless semi-sync GTID replication (`paas-mysql`).
pub struct MysqlKind;

#[async_trait::async_trait]
impl ApplianceKind for MysqlKind {
    fn kind(&self) -> &'static str {
        "mysql"
    }

    fn member_prefix(&self) -> &'static str {
        "my"
    }

    fn port_bases(&self) -> (u16, u16) {
        (
            paas_appliance::addr::MYSQL_PORT,
            paas_appliance::addr::MYSQL_HEALTH_PORT,
        )
    }

    fn keys(&self, cluster: &str) -> Keys {
        paas_mysql::cluster::keys(cluster)
    }

    fn secret_env(&self) -> &'static str {
        paas_mysql::args::PASSWORD_ENV
    }

    fn default_listen(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 6033))
    }

    /// The members run mariadbd as the mysql user: fail now, naming the directory,
    /// rather than wait for a cluster that cannot start.
    fn check_dir(&self, dir: &Path) -> Result<()> {
        Ok(paas_mysql::server::check_reachable(dir)?)
    }

    fn speaks_tls(&self) -> bool {
        true
    }

    /// Ready when the endpoint reaches a writable primary that a replica acknowledges
    /// to (its commits do not wait); over TLS verified against the cluster CA when the
    /// members have its certificate (the endpoint may lead to another host).
    async fn not_ready(
        &self,
        endpoint: SocketAddr,
        password: &str,
        ca_file: Option<&Path>,
    ) -> Option<String> {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname(paas_mysql::tls::dial_host(&endpoint.ip().to_string()))
            .tcp_port(endpoint.port())
            .user(Some(paas_mysql::server::SUPERUSER))
            .pass(Some(password))
            .prefer_socket(false);
        let opts = paas_mysql::tls::with_tls(opts, ca_file);
        let mut conn = match tokio::time::timeout(
            Duration::from_secs(5),
            mysql_async::Conn::new(opts),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Some(format!("cannot connect: {e}")),
            Err(_) => return Some("cannot connect: timed out".into()),
        };
        let row: Result<Option<(i64, String)>, _> = conn
            .query_first(
                "SELECT @@read_only, VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
                 WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_CLIENTS'",
            )
            .await;
        let _ = conn.disconnect().await;
        match row {
            Err(e) => Some(format!("query failed: {e}")),
            Ok(None) => Some("no semi-sync status".into()),
            Ok(Some((read_only, _))) if read_only != 0 => {
                Some("the endpoint reaches a read-only replica".into())
            }
            Ok(Some((_, clients))) if clients == "0" => Some("no replica acknowledges yet".into()),
            Ok(Some(_)) => None,
        }
    }

    /// The app's user `REQUIRE SSL` and its URLs require TLS once clients may be on
    /// another machine (`crate::appliance::clients_off_host`), asked at each
    /// `resource add`.
    fn provider(&self, cluster: &Launched, etcd: &[String]) -> Arc<dyn Provider> {
        let prefix = format!("{}/", paas_model::keys::DEFAULT_PREFIX);
        Arc::new(
            MysqlProvider::new(ProviderConfig {
                host: cluster.endpoint.ip().to_string(),
                port: cluster.endpoint.port(),
                superuser_password: cluster.secret.clone(),
                tls: crate::appliance::client_tls(cluster),
            })
            .with_status_from(etcd.to_vec(), &prefix, &cluster.cluster),
        )
    }
}

/// Runs one supervisor until SIGINT/SIGTERM.
pub async fn supervise(args: SupervisorArgs) -> Result<()> {
    crate::up::init_tracing();
    args.member.load_etcd_identity()?;
    paas_mysql::supervisor::run(args.into_config(), crate::up::wait_for_signal())
        .await
        .context("mysql supervisor failed")
}
