//! Databases for apps: `paas resource add mysql -a APP` creates a user and a database
//! only that user (and the supervisor's account) may use, and returns the variables
//! the app connects with; `resource remove` ends the user's sessions and drops both.
//!
//! Every statement goes through the leader-following endpoint, so provisioning works
//! whichever member leads, and the `DATABASE_URL` handed out points at the same
//! endpoint. An operation failing on a broken connection (a failover in progress) is
//! retried on a fresh connection for up to [`RETRY_FOR`]; both operations are
//! idempotent, so a retry after an unknown outcome is safe.
//!
//! Names: user and database are both `<app>_<id>` reduced to `[a-z0-9_]`, at most 63
//! bytes, quoted in SQL. Passwords are 24 random bytes from the OS-seeded CSPRNG,
//! hex-encoded (192 bits). The user gets `ALL` on its database and nothing global: no
//! READ ONLY ADMIN (so `read_only` replicas refuse its writes), no SUPER, no access to
//! other databases.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::server::{quote, SUPERUSER};

/// How long an operation is retried on connection failures (covers a failover).
pub const RETRY_FOR: Duration = Duration::from_secs(30);

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The app or resource id yields no usable name.
    #[error("cannot derive a database name from app {app:?} and id {id:?}")]
    BadName {
        /// The app name given.
        app: String,
        /// The resource id given.
        id: String,
    },
    /// The data handed back to `deprovision` is not what `provision` returned.
    #[error("unrecognised resource data: {0}")]
    BadData(#[from] serde_json::Error),
    /// A resource cannot be re-created from what was recorded of it.
    #[error("cannot reinstate the database: {0}")]
    Reinstate(String),
    /// MariaDB refused a statement, or stayed unreachable for [`RETRY_FOR`].
    #[error("mariadb: {0}")]
    Mariadb(#[from] mysql_async::Error),
}

/// Where the provider reaches the cluster and how it logs in.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The leader-following endpoint's host, as apps should use it.
    pub host: String,
    /// The endpoint's port.
    pub port: u16,
    /// The superuser's password.
    pub superuser_password: String,
}

/// What `provision` remembers for `deprovision` (stored opaquely by the controller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceData {
    /// The user created.
    pub user: String,
    /// The database created.
    pub database: String,
    /// The user's password, which backups log in with (recorded since backups exist:
    /// `None` for older resources, whose backups take it from their environment, see
    /// [`complete_data`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

#[derive(Debug, Clone)]
struct StatusSource {
    etcd_endpoints: Vec<String>,
    prefix: String,
    cluster: String,
}

/// Creates and removes app databases in the shared cluster.
pub struct MysqlProvider {
    config: ProviderConfig,
    admin: Mutex<Option<Conn>>,
    status: Option<StatusSource>,
}

impl MysqlProvider {
    /// A provider for the cluster behind `config`; connects on first use.
    pub fn new(config: ProviderConfig) -> Self {
        MysqlProvider {
            config,
            admin: Mutex::new(None),
            status: None,
        }
    }

    /// The dump and restore tools, reaching the cluster like provisioning does.
    pub fn tools(&self) -> crate::dump::Tools {
        crate::dump::Tools::new(
            std::path::Path::new(crate::dump::DEFAULT_BIN_DIR),
            self.config.clone(),
        )
    }

    /// Reports cluster `cluster` (under `prefix` in etcd) as the provider's status, for
    /// `paas mysql info` and `paas cluster status`.
    pub fn with_status_from(
        mut self,
        etcd_endpoints: Vec<String>,
        prefix: &str,
        cluster: &str,
    ) -> Self {
        self.status = Some(StatusSource {
            etcd_endpoints,
            prefix: prefix.to_string(),
            cluster: cluster.to_string(),
        });
        self
    }

    /// Creates user and database for (`app`, `id`); returns the app's variables and
    /// the data `deprovision` needs. Calling it again for the same pair sets a new
    /// password.
    pub async fn provision_database(
        &self,
        app: &str,
        id: &str,
    ) -> Result<(BTreeMap<String, String>, ResourceData), ProvisionError> {
        let name = derive_name(app, id).ok_or_else(|| ProvisionError::BadName {
            app: app.into(),
            id: id.into(),
        })?;
        let password = hex::encode(rand::random::<[u8; 24]>());
        let started = Instant::now();
        self.with_retry(&create_statements(&name, &password))
            .await?;
        tracing::info!(%app, %id, database = %name, took = ?started.elapsed(), "mysql database provisioned");
        let (host, port) = (&self.config.host, self.config.port);
        let url = format!("mysql://{name}:{password}@{host}:{port}/{name}");
        let env = BTreeMap::from([
            ("DATABASE_URL".to_string(), url.clone()),
            ("MYSQL_URL".to_string(), url),
            ("MYSQL_HOST".to_string(), host.clone()),
            ("MYSQL_PORT".to_string(), port.to_string()),
            ("MYSQL_USER".to_string(), name.clone()),
            ("MYSQL_PASSWORD".to_string(), password.clone()),
            ("MYSQL_DATABASE".to_string(), name.clone()),
        ]);
        Ok((
            env,
            ResourceData {
                user: name.clone(),
                database: name,
                password: Some(password),
            },
        ))
    }

    /// Re-creates user and database `data` with the password it records (what an
    /// earlier `provision_database` handed out), for a whole-cluster restore into a
    /// fresh cluster: the app's `DATABASE_URL` works again unchanged. Idempotent.
    pub async fn reinstate_database(&self, data: &ResourceData) -> Result<(), ProvisionError> {
        let Some(password) = &data.password else {
            return Err(ProvisionError::Reinstate(
                "the resource records no password (made before backups existed)".into(),
            ));
        };
        if data.user != data.database {
            return Err(ProvisionError::Reinstate(format!(
                "user {:?} and database {:?} differ; provisioning makes them equal",
                data.user, data.database
            )));
        }
        self.with_retry(&create_statements(&data.user, password))
            .await?;
        tracing::info!(database = %data.database, "mysql database reinstated");
        Ok(())
    }

    /// Ends every session of the user, drops the database and the user. Succeeds when
    /// they are already gone.
    pub async fn deprovision_database(&self, data: &ResourceData) -> Result<(), ProvisionError> {
        let started = Instant::now();
        let mut admin = self.admin.lock().await;
        loop {
            let result = async {
                let conn = self.admin_conn(&mut admin).await?;
                // No new session once the account is locked; then end the open ones.
                let user = format!("{}@'%'", quote(&data.user));
                conn.query_drop(format!("ALTER USER IF EXISTS {user} ACCOUNT LOCK"))
                    .await?;
                let ids: Vec<u64> = conn
                    .exec(
                        "SELECT id FROM information_schema.PROCESSLIST WHERE user = ?",
                        (data.user.clone(),),
                    )
                    .await?;
                for id in ids {
                    match conn.query_drop(format!("KILL CONNECTION {id}")).await {
                        Ok(()) | Err(mysql_async::Error::Server(_)) => {} // already gone
                        Err(err) => return Err(err),
                    }
                }
                conn.query_drop(format!(
                    "DROP DATABASE IF EXISTS {}",
                    quote_ident(&data.database)
                ))
                .await?;
                conn.query_drop(format!("DROP USER IF EXISTS {user}")).await
            }
            .await;
            match self.retry_or(result, &mut admin, started).await? {
                true => break,
                false => continue,
            }
        }
        tracing::info!(database = %data.database, "mysql database removed");
        Ok(())
    }

    /// Runs `statements` on the admin connection, reconnecting and retrying while the
    /// failure is a connection failure (not an SQL error) and [`RETRY_FOR`] has not
    /// passed.
    async fn with_retry(&self, statements: &[String]) -> Result<(), ProvisionError> {
        let started = Instant::now();
        let mut admin = self.admin.lock().await;
        loop {
            let result = async {
                let conn = self.admin_conn(&mut admin).await?;
                for sql in statements {
                    conn.query_drop(sql).await?;
                }
                Ok(())
            }
            .await;
            if self.retry_or(result, &mut admin, started).await? {
                return Ok(());
            }
        }
    }

    /// `Ok(true)` when done, `Ok(false)` to retry (connection failure within
    /// [`RETRY_FOR`]; the connection is dropped), the error otherwise.
    async fn retry_or(
        &self,
        result: Result<(), mysql_async::Error>,
        admin: &mut Option<Conn>,
        started: Instant,
    ) -> Result<bool, ProvisionError> {
        match result {
            Ok(()) => Ok(true),
            Err(mysql_async::Error::Server(err)) => Err(mysql_async::Error::Server(err).into()),
            Err(err) if started.elapsed() < RETRY_FOR => {
                tracing::warn!(error = %err, "provisioning connection failed; retrying");
                *admin = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(false)
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn admin_conn<'a>(
        &self,
        admin: &'a mut Option<Conn>,
    ) -> Result<&'a mut Conn, mysql_async::Error> {
        if admin.is_none() {
            let opts = OptsBuilder::default()
                .ip_or_hostname(self.config.host.clone())
                .tcp_port(self.config.port)
                .user(Some(SUPERUSER))
                .pass(Some(self.config.superuser_password.clone()))
                .prefer_socket(false);
            let conn = match tokio::time::timeout(Duration::from_secs(5), Conn::new(opts)).await {
                Ok(conn) => conn?,
                Err(_) => {
                    return Err(mysql_async::Error::Io(mysql_async::IoError::Io(
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
                    )))
                }
            };
            *admin = Some(conn);
        }
        Ok(admin.as_mut().expect("connected above"))
    }
}

/// `data` with the user's password taken from the resource's `MYSQL_PASSWORD` when it
/// records none (resources provisioned before backups recorded it there), provided the
/// environment names the same user; any other data as it is.
pub fn complete_data(
    data: &serde_json::Value,
    env: &BTreeMap<String, String>,
) -> serde_json::Value {
    let Ok(mut known) = serde_json::from_value::<ResourceData>(data.clone()) else {
        return data.clone();
    };
    let same_user = env.get("MYSQL_USER").is_none_or(|u| *u == known.user);
    if known.password.is_some() || !same_user {
        return data.clone();
    }
    known.password = env.get("MYSQL_PASSWORD").cloned();
    serde_json::to_value(known).unwrap_or_else(|_| data.clone())
}

/// The controller's interface: `resource add mysql` and `resource remove`.
#[async_trait::async_trait]
impl paas_appliance::provider::Provider for MysqlProvider {
    async fn provision(
        &self,
        app: &str,
        id: &str,
        options: &paas_appliance::provider::Options,
    ) -> Result<paas_appliance::provider::Provisioned, paas_appliance::provider::ProviderError>
    {
        if let Some(option) = options.keys().next() {
            return Err(paas_appliance::provider::ProviderError(format!(
                "unknown option {option:?}: mysql takes no options"
            )));
        }
        let (env, data) = self.provision_database(app, id).await.map_err(|err| {
            tracing::error!(%app, %id, error = %err, "mysql provisioning failed");
            paas_appliance::provider::ProviderError(err.to_string())
        })?;
        let data = serde_json::to_value(data).expect("ResourceData serializes");
        Ok(paas_appliance::provider::Provisioned { env, data })
    }

    fn backup_data(
        &self,
        data: &serde_json::Value,
        env: &BTreeMap<String, String>,
    ) -> serde_json::Value {
        complete_data(data, env)
    }

    async fn deprovision(
        &self,
        app: &str,
        id: &str,
        data: &serde_json::Value,
    ) -> Result<(), paas_appliance::provider::ProviderError> {
        let fail = |err: ProvisionError| {
            tracing::error!(%app, %id, error = %err, "mysql removal failed");
            paas_appliance::provider::ProviderError(err.to_string())
        };
        let data: ResourceData =
            serde_json::from_value(data.clone()).map_err(|e| fail(e.into()))?;
        self.deprovision_database(&data).await.map_err(fail)
    }

    async fn status(&self) -> Result<serde_json::Value, paas_appliance::provider::ProviderError> {
        let Some(src) = &self.status else {
            return Ok(serde_json::Value::Null);
        };
        let info = crate::info::ClusterInfo::read(&src.etcd_endpoints, &src.prefix, &src.cluster)
            .await
            .map_err(|e| {
                paas_appliance::provider::ProviderError(format!("reading the cluster: {e}"))
            })?;
        Ok(serde_json::json!({
            "cluster": info.cluster,
            "text": info.render(),
            "state": info.state,
            "leader": info.leader.as_ref().map(|(member, addr)| {
                serde_json::json!({ "member": member, "addr": addr })
            }),
            "members": info.members,
        }))
    }

    fn has_backups(&self) -> bool {
        true
    }

    async fn backup(
        &self,
        app: &str,
        id: &str,
        data: &serde_json::Value,
        sink: paas_appliance::provider::BackupSink<'_>,
    ) -> Result<paas_appliance::provider::BackupInfo, paas_appliance::provider::ProviderError> {
        let fail = |err: String| {
            tracing::warn!(%app, %id, error = %err, "mysql backup failed");
            paas_appliance::provider::ProviderError(err)
        };
        let data: ResourceData =
            serde_json::from_value(data.clone()).map_err(|e| fail(e.to_string()))?;
        self.tools()
            .dump(&data, sink)
            .await
            .map_err(|e| fail(e.to_string()))
    }

    async fn restore(
        &self,
        app: &str,
        id: &str,
        data: &serde_json::Value,
        source: paas_appliance::provider::RestoreSource<'_>,
    ) -> Result<(), paas_appliance::provider::ProviderError> {
        let fail = |err: String| {
            tracing::warn!(%app, %id, error = %err, "mysql restore failed");
            paas_appliance::provider::ProviderError(err)
        };
        let data: ResourceData =
            serde_json::from_value(data.clone()).map_err(|e| fail(e.to_string()))?;
        self.tools()
            .restore(&data, source)
            .await
            .map_err(|e| fail(e.to_string()))
    }

    fn can_reinstate(&self) -> bool {
        true
    }

    async fn reinstate(
        &self,
        app: &str,
        id: &str,
        _env: &BTreeMap<String, String>,
        data: &serde_json::Value,
    ) -> Result<(), paas_appliance::provider::ProviderError> {
        let fail = |err: ProvisionError| {
            tracing::error!(%app, %id, error = %err, "mysql reinstate failed");
            paas_appliance::provider::ProviderError(err.to_string())
        };
        let data: ResourceData =
            serde_json::from_value(data.clone()).map_err(|e| fail(e.into()))?;
        self.reinstate_database(&data).await.map_err(fail)
    }

    async fn recover(
        &self,
        member: Option<&str>,
    ) -> Result<String, paas_appliance::provider::ProviderError> {
        let fail = paas_appliance::provider::ProviderError;
        let Some(src) = &self.status else {
            return Err(fail(
                "this provider does not know where its cluster's records are".into(),
            ));
        };
        let store = crate::cluster::connect(&src.etcd_endpoints, &src.prefix, &src.cluster)
            .await
            .map_err(|e| fail(format!("reading the cluster: {e}")))?;
        let snapshot = store
            .read()
            .await
            .map_err(|e| fail(format!("reading the cluster: {e}")))?;
        let state = crate::recover::plan(&snapshot, member).map_err(fail)?;
        let done = crate::recover::describe(&state, &snapshot);
        let written = store
            .reset_state(&state, snapshot.state_revision())
            .await
            .map_err(|e| fail(format!("writing the new state: {e}")))?;
        if !written {
            return Err(fail(
                "the cluster's records changed meanwhile; look again".into(),
            ));
        }
        tracing::warn!(cluster = %src.cluster, "{done}");
        Ok(done)
    }
}

/// The statements that make user and database `name` with `password` (creating them,
/// or setting the password of an existing user), idempotent.
fn create_statements(name: &str, password: &str) -> [String; 4] {
    let user = format!("{}@'%'", quote(name));
    let db = quote_ident(name);
    [
        format!(
            "CREATE USER IF NOT EXISTS {user} IDENTIFIED BY {}",
            quote(password)
        ),
        format!("ALTER USER {user} IDENTIFIED BY {}", quote(password)),
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        format!("GRANT ALL PRIVILEGES ON {db}.* TO {user}"),
    ]
}

/// `<app>_<id>` reduced to `[a-z0-9_]`, at most 63 bytes.
pub fn derive_name(app: &str, id: &str) -> Option<String> {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    let (app, id) = (clean(app), clean(id));
    if app.trim_matches('_').is_empty() || id.trim_matches('_').is_empty() {
        return None;
    }
    let mut name = format!("{app}_{id}");
    if name.len() > 63 {
        // Keep the id whole: it is what makes the name unique within the app.
        let keep = 63usize.checked_sub(id.len() + 1)?;
        name = format!("{}_{id}", &app[..keep.min(app.len())]);
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, 'r');
        name.truncate(63);
    }
    Some(name)
}

/// `` `ident` `` with embedded backticks doubled.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_resources_take_their_password_from_their_environment() {
        let env = BTreeMap::from([
            ("MYSQL_USER".to_string(), "shop_r1".to_string()),
            ("MYSQL_PASSWORD".to_string(), "secret".to_string()),
        ]);
        let old = serde_json::json!({"user": "shop_r1", "database": "shop_r1"});
        assert_eq!(
            complete_data(&old, &env),
            serde_json::json!({"user": "shop_r1", "database": "shop_r1", "password": "secret"})
        );
        let recorded =
            serde_json::json!({"user": "shop_r1", "database": "shop_r1", "password": "own"});
        assert_eq!(complete_data(&recorded, &env), recorded);
        let other = serde_json::json!({"user": "blog_r2", "database": "blog_r2"});
        assert_eq!(
            complete_data(&other, &env),
            other,
            "another user's password"
        );
        assert_eq!(complete_data(&old, &BTreeMap::new()), old);
        let odd = serde_json::json!("not data");
        assert_eq!(complete_data(&odd, &env), odd);
    }

    #[test]
    fn names_are_reduced_and_bounded() {
        assert_eq!(derive_name("shop", "db").as_deref(), Some("shop_db"));
        assert_eq!(
            derive_name("My-Shop", "a.b").as_deref(),
            Some("my_shop_a_b")
        );
        assert_eq!(derive_name("1shop", "x").as_deref(), Some("r1shop_x"));
        assert_eq!(derive_name("--", "x"), None);
        let long = derive_name(&"a".repeat(100), "abcdef").unwrap();
        assert_eq!(long.len(), 63);
        assert!(long.ends_with("_abcdef"));
    }

    #[test]
    fn identifiers_double_backticks() {
        assert_eq!(quote_ident("we`ird"), "`we``ird`");
    }
}
