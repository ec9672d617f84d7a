//! Databases for apps: `paas resource add postgres -a APP` creates a login role and a
//! database it owns in the shared cluster, and returns the variables the app connects
//! with; `resource remove` ends the database's sessions and drops both.
//!
//! Every statement goes through the leader-following endpoint, so provisioning works
//! whichever member leads, and the `DATABASE_URL` handed out points at the same endpoint
//! and keeps working across failovers. An operation that fails on a broken connection
//! (a failover in progress) is retried on a fresh connection for up to
//! [`RETRY_FOR`]; both operations are idempotent, so a retry after an unknown outcome is
//! safe.
//!
//! Names: role and database are both `<app>_<id>` reduced to `[a-z0-9_]` (anything else
//! becomes `_`), at most 63 bytes, always double-quoted in SQL. Passwords are 24 random
//! bytes from the OS-seeded CSPRNG, hex-encoded (192 bits), so they need no escaping in a
//! URL or SQL literal. `CONNECT` on the database is revoked from `PUBLIC`: only its owner
//! (and the superuser) may connect to it. So is `CONNECT` on the maintenance databases
//! (`postgres`, `template1`), which app roles have no business in.
//!
//! TLS ([`ClientTls`]): the servers always offer it with the cluster CA's certificate.
//! While every client is on the endpoint's own machine (one host, loopback endpoint),
//! `DATABASE_URL` names no `sslmode`, so libpq's default (`prefer`) encrypts and drivers
//! without TLS (tokio-postgres with `NoTls`) still connect; `PGSSLROOTCERT` names the CA
//! for clients that verify. Once [`ClientTls::verify_full`] says clients may be on
//! another machine (more than one host, or an endpoint on a non-loopback address), the
//! URL and `PGSSLMODE` require `verify-full` against the CA: a client that cannot
//! verify the server does not connect, rather than send the password in the clear. The
//! rule is asked at each provisioning; a URL handed out earlier keeps its form (add the
//! resource again for a new one).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

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
    /// PostgreSQL refused a statement, or stayed unreachable for [`RETRY_FOR`].
    #[error("postgres: {}", detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
}

/// The server's own message for database errors (the driver's `Display` says only
/// "db error").
fn detail(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}

/// Where the provider reaches the cluster and how it logs in.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The leader-following endpoint's host, as apps should use it.
    pub host: String,
    /// The endpoint's port.
    pub port: u16,
    /// The `postgres` superuser's password.
    pub superuser_password: String,
    /// What the URLs handed to apps say about TLS; `None`: the servers have no
    /// certificate and the URLs do not mention TLS.
    pub tls: Option<ClientTls>,
}

pub use paas_appliance::tls::{ClientTls, VerifyRule};

/// What the app's variables say about TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlTls<'a> {
    /// The servers have no certificate: nothing.
    Off,
    /// Encrypted when the client can (libpq's `prefer`); the CA in `PGSSLROOTCERT`.
    Offered {
        /// The CA's certificate.
        ca_file: &'a str,
    },
    /// `sslmode=verify-full` against the CA, in the URL and `PGSSLMODE`.
    VerifyFull {
        /// The CA's certificate.
        ca_file: &'a str,
    },
}

/// Whether a failure with SQLSTATE `code` (`None`: no server error, the connection
/// failed) is worth a retry on a fresh connection through the endpoint. During a
/// failover the endpoint forwards to the member holding the leader key as soon as it
/// holds it, which is before its promotion has finished: statements there fail as
/// read-only (25006), and a server shutting down or starting up refuses with 57P01,
/// 57P02 or 57P03. Every other server error is the statement's own and final.
pub fn retryable(code: Option<&str>) -> bool {
    matches!(code, None | Some("25006" | "57P01" | "57P02" | "57P03"))
}

/// The variables an app connects with (pure: the URL's form is decided here).
pub fn client_env(
    host: &str,
    port: u16,
    name: &str,
    password: &str,
    tls: UrlTls<'_>,
) -> BTreeMap<String, String> {
    let mut url = format!("postgres://{name}:{password}@{host}:{port}/{name}");
    let mut env = BTreeMap::from([
        ("PGHOST".to_string(), host.to_string()),
        ("PGPORT".to_string(), port.to_string()),
        ("PGUSER".to_string(), name.to_string()),
        ("PGPASSWORD".to_string(), password.to_string()),
        ("PGDATABASE".to_string(), name.to_string()),
    ]);
    match tls {
        UrlTls::Off => {}
        UrlTls::Offered { ca_file } => {
            env.insert("PGSSLROOTCERT".into(), ca_file.into());
        }
        UrlTls::VerifyFull { ca_file } => {
            url.push_str(&format!(
                "?sslmode=verify-full&sslrootcert={}",
                percent_encode(ca_file)
            ));
            env.insert("PGSSLMODE".into(), "verify-full".into());
            env.insert("PGSSLROOTCERT".into(), ca_file.into());
        }
    }
    env.insert("DATABASE_URL".into(), url);
    env
}

/// `text` with every byte but unreserved characters and `/` percent-encoded, for a URL
/// query value (public: a whole-cluster restore finds and moves the CA path it wrote).
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What `provision` remembers for `deprovision` (the controller stores it opaquely).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceData {
    /// The role created.
    pub role: String,
    /// The database created.
    pub database: String,
}

/// Where the cluster's records live in etcd, for [`PostgresProvider::with_status_from`].
#[derive(Debug, Clone)]
struct StatusSource {
    etcd_endpoints: Vec<String>,
    prefix: String,
    cluster: String,
}

/// Creates and removes app databases in the shared cluster.
pub struct PostgresProvider {
    config: ProviderConfig,
    admin: Mutex<Option<Client>>,
    status: Option<StatusSource>,
    bin_dir: std::path::PathBuf,
    pitr: Option<crate::pitr::PitrConfig>,
}

impl PostgresProvider {
    /// A provider for the cluster behind `config`; connects on first use.
    pub fn new(config: ProviderConfig) -> Self {
        PostgresProvider {
            config,
            admin: Mutex::new(None),
            status: None,
            bin_dir: crate::dump::DEFAULT_BIN_DIR.into(),
            pitr: None,
        }
    }

    /// Serves point-in-time restores from the cluster's archive (`crate::pitr`).
    pub fn with_pitr(mut self, pitr: crate::pitr::PitrConfig) -> Self {
        self.pitr = Some(pitr);
        self
    }

    /// Takes `pg_dump` and `pg_restore` from `bin_dir` (default
    /// [`crate::dump::DEFAULT_BIN_DIR`]).
    pub fn with_bin_dir(mut self, bin_dir: &std::path::Path) -> Self {
        self.bin_dir = bin_dir.to_path_buf();
        self
    }

    /// The dump and restore tools, reaching the cluster like provisioning does.
    pub fn tools(&self) -> crate::dump::Tools {
        crate::dump::Tools::new(&self.bin_dir, self.config.clone())
    }

    /// Reports cluster `cluster` (under `prefix` in etcd) as the provider's status, for
    /// `paas pg info` and `paas cluster status`.
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

    /// Creates role and database for (`app`, `id`); returns the app's variables and the
    /// data `deprovision` needs. Calling it again for the same pair sets a new password.
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
        self.with_retry(&Op::Create {
            name: name.clone(),
            password: password.clone(),
        })
        .await?;
        tracing::info!(%app, %id, database = %name, took = ?started.elapsed(), "postgres database provisioned");
        let tls = match &self.config.tls {
            None => UrlTls::Off,
            Some(t) if (t.verify_full)().await => UrlTls::VerifyFull {
                ca_file: &t.ca_file,
            },
            Some(t) => UrlTls::Offered {
                ca_file: &t.ca_file,
            },
        };
        let env = client_env(&self.config.host, self.config.port, &name, &password, tls);
        Ok((
            env,
            ResourceData {
                role: name.clone(),
                database: name,
            },
        ))
    }

    /// Re-creates role and database `data` with `password` (what an earlier
    /// `provision_database` handed out), for a whole-cluster restore into a fresh
    /// cluster: the app's `DATABASE_URL` works again unchanged. Idempotent.
    pub async fn reinstate_database(
        &self,
        data: &ResourceData,
        password: &str,
    ) -> Result<(), ProvisionError> {
        if data.role != data.database {
            return Err(ProvisionError::Reinstate(format!(
                "role {:?} and database {:?} differ; provisioning makes them equal",
                data.role, data.database
            )));
        }
        if password.is_empty() || !password.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ProvisionError::Reinstate(
                "the recorded PGPASSWORD is not a password this provider made".into(),
            ));
        }
        self.with_retry(&Op::Create {
            name: data.role.clone(),
            password: password.to_string(),
        })
        .await?;
        tracing::info!(database = %data.database, "postgres database reinstated");
        Ok(())
    }

    /// Ends every session of the database, drops it and its role. Succeeds when they
    /// are already gone.
    pub async fn deprovision_database(&self, data: &ResourceData) -> Result<(), ProvisionError> {
        self.with_retry(&Op::Drop {
            role: data.role.clone(),
            database: data.database.clone(),
        })
        .await?;
        tracing::info!(database = %data.database, "postgres database removed");
        Ok(())
    }

    /// Runs `op` on the admin connection, reconnecting and retrying while the failure is
    /// [`retryable`] and [`RETRY_FOR`] has not passed.
    async fn with_retry(&self, op: &Op) -> Result<(), ProvisionError> {
        let started = Instant::now();
        let mut admin = self.admin.lock().await;
        loop {
            let client = match admin.take().filter(|c| !c.is_closed()) {
                Some(client) => Ok(client),
                None => self.connect().await,
            };
            let result = match client {
                Ok(client) => {
                    let result = op.run(&client).await;
                    *admin = Some(client);
                    result
                }
                Err(err) => Err(err),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(err)
                    if retryable(err.as_db_error().map(|db| db.code().code()))
                        && started.elapsed() < RETRY_FOR =>
                {
                    tracing::warn!(error = %detail(&err), "provisioning failed on a server that is not (yet) the writable primary or on a broken connection; retrying on a fresh connection");
                    *admin = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.config.host)
            .port(self.config.port)
            .user("postgres")
            .password(&self.config.superuser_password)
            .dbname("postgres")
            .application_name("paas-provisioner")
            .connect_timeout(Duration::from_secs(5));
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// The controller's interface: `resource add postgres` and `resource remove`.
#[async_trait::async_trait]
impl paas_appliance::provider::Provider for PostgresProvider {
    async fn provision(
        &self,
        app: &str,
        id: &str,
        options: &paas_appliance::provider::Options,
    ) -> Result<paas_appliance::provider::Provisioned, paas_appliance::provider::ProviderError>
    {
        if let Some(option) = options.keys().next() {
            return Err(paas_appliance::provider::ProviderError(format!(
                "unknown option {option:?}: postgres takes no options"
            )));
        }
        let (env, data) = self.provision_database(app, id).await.map_err(|err| {
            tracing::error!(%app, %id, error = %err, "postgres provisioning failed");
            paas_appliance::provider::ProviderError(err.to_string())
        })?;
        let data = serde_json::to_value(data).expect("ResourceData serializes");
        Ok(paas_appliance::provider::Provisioned { env, data })
    }

    async fn deprovision(
        &self,
        app: &str,
        id: &str,
        data: &serde_json::Value,
    ) -> Result<(), paas_appliance::provider::ProviderError> {
        let fail = |err: ProvisionError| {
            tracing::error!(%app, %id, error = %err, "postgres removal failed");
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
            tracing::warn!(%app, %id, error = %err, "postgres backup failed");
            paas_appliance::provider::ProviderError(err)
        };
        let data: ResourceData =
            serde_json::from_value(data.clone()).map_err(|e| fail(e.to_string()))?;
        self.tools()
            .dump(&data, sink)
            .await
            .map_err(|e| fail(e.to_string()))
    }

    async fn restore_to_time(
        &self,
        data: &serde_json::Value,
        to: std::time::SystemTime,
        into: &serde_json::Value,
        tell: &(dyn for<'l> Fn(&'l str) + Send + Sync),
    ) -> Result<String, paas_appliance::provider::ProviderError> {
        let fail = |err: String| paas_appliance::provider::ProviderError(err);
        let pitr = self
            .pitr
            .as_ref()
            .ok_or_else(|| fail(crate::pitr::PitrError::NotArchived.to_string()))?;
        let source: ResourceData =
            serde_json::from_value(data.clone()).map_err(|e| fail(e.to_string()))?;
        let into: ResourceData =
            serde_json::from_value(into.clone()).map_err(|e| fail(e.to_string()))?;
        let done = crate::pitr::restore_database(pitr, &self.config, &source, to, &into, tell)
            .await
            .map_err(|e| {
                tracing::warn!(database = %source.database, error = %e, "point-in-time restore failed");
                fail(e.to_string())
            })?;
        Ok(format!(
            "{} as of {} restored into {} (base backup {}, {:.1} s)",
            source.database,
            crate::pitr::format_time(to),
            into.database,
            done.from_backup,
            done.took.as_secs_f64()
        ))
    }

    async fn restore(
        &self,
        app: &str,
        id: &str,
        data: &serde_json::Value,
        source: paas_appliance::provider::RestoreSource<'_>,
    ) -> Result<(), paas_appliance::provider::ProviderError> {
        let fail = |err: String| {
            tracing::warn!(%app, %id, error = %err, "postgres restore failed");
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
        env: &BTreeMap<String, String>,
        data: &serde_json::Value,
    ) -> Result<(), paas_appliance::provider::ProviderError> {
        let fail = |err: ProvisionError| {
            tracing::error!(%app, %id, error = %err, "postgres reinstate failed");
            paas_appliance::provider::ProviderError(err.to_string())
        };
        let data: ResourceData =
            serde_json::from_value(data.clone()).map_err(|e| fail(e.into()))?;
        let password = env.get("PGPASSWORD").ok_or_else(|| {
            fail(ProvisionError::Reinstate(
                "the resource's variables have no PGPASSWORD".into(),
            ))
        })?;
        self.reinstate_database(&data, password).await.map_err(fail)
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
        let store = crate::store::connect(&src.etcd_endpoints, &src.prefix, &src.cluster)
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

/// Whether a `CREATE` failed because another session made the same object meanwhile:
/// `duplicate_object` / `duplicate_database` when it had committed before, a
/// `unique_violation` on the catalog when both were in flight at once.
fn created_meanwhile(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        [
            SqlState::DUPLICATE_OBJECT,
            SqlState::DUPLICATE_DATABASE,
            SqlState::UNIQUE_VIOLATION,
        ]
        .contains(c)
    })
}

/// One idempotent provisioning operation.
enum Op {
    /// Create (or re-password) role `name` and create database `name` owned by it.
    Create { name: String, password: String },
    /// End the sessions of `database`, drop it and `role`.
    Drop { role: String, database: String },
}

impl Op {
    async fn run(&self, client: &Client) -> Result<(), tokio_postgres::Error> {
        match self {
            Op::Create { name, password } => {
                let ident = quote_ident(name);
                let exists = client
                    .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[name])
                    .await?
                    .is_some();
                let password = quote_literal(password);
                let alter = format!("ALTER ROLE {ident} LOGIN PASSWORD {password}");
                if exists {
                    client.batch_execute(&alter).await?;
                } else {
                    // Another session can create it between the check and this statement:
                    // an earlier attempt of this very operation, still running on the
                    // connection a retry gave up on. Then the role is there: set it.
                    let create = format!("CREATE ROLE {ident} LOGIN PASSWORD {password}");
                    match client.batch_execute(&create).await {
                        Err(e) if created_meanwhile(&e) => client.batch_execute(&alter).await?,
                        other => other?,
                    }
                }
                if client
                    .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[name])
                    .await?
                    .is_none()
                {
                    // CREATE DATABASE cannot run inside a transaction: its own statement.
                    match client
                        .batch_execute(&format!("CREATE DATABASE {ident} OWNER {ident}"))
                        .await
                    {
                        Err(e) if created_meanwhile(&e) => {}
                        other => other?,
                    }
                }
                // App roles reach their own database only: not each other's, and not
                // the maintenance databases, where any role could otherwise list every
                // database and role or open sessions.
                client
                    .batch_execute(&format!(
                        "REVOKE CONNECT, TEMPORARY ON DATABASE {ident} FROM PUBLIC; \
                         REVOKE CONNECT, TEMPORARY ON DATABASE postgres, template1 FROM PUBLIC"
                    ))
                    .await
            }
            Op::Drop { role, database } => {
                client
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                        &[database],
                    )
                    .await?;
                client
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        quote_ident(database)
                    ))
                    .await?;
                client
                    .batch_execute(&format!("DROP ROLE IF EXISTS {}", quote_ident(role)))
                    .await
            }
        }
    }
}

/// `<app>_<id>` reduced to `[a-z0-9_]`, at most 63 bytes (PostgreSQL's identifier limit).
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

/// `"ident"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'literal'` with embedded quotes doubled (standard_conforming_strings is on).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_identifiers() {
        assert_eq!(derive_name("shop", "r1").as_deref(), Some("shop_r1"));
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
    fn urls_require_verification_only_when_asked() {
        let off = client_env("127.0.0.1", 6432, "shop_r1", "pw", UrlTls::Off);
        assert_eq!(
            off["DATABASE_URL"],
            "postgres://shop_r1:pw@127.0.0.1:6432/shop_r1"
        );
        assert!(!off.contains_key("PGSSLROOTCERT") && !off.contains_key("PGSSLMODE"));

        let ca_file = "/var/lib/paas/ca.pem";
        let offered = client_env(
            "127.0.0.1",
            6432,
            "shop_r1",
            "pw",
            UrlTls::Offered { ca_file },
        );
        assert_eq!(offered["DATABASE_URL"], off["DATABASE_URL"]);
        assert_eq!(offered["PGSSLROOTCERT"], ca_file);
        assert!(!offered.contains_key("PGSSLMODE"));

        let ca_file = "/srv/my paas/ca.pem";
        let verify = client_env(
            "10.0.0.5",
            6432,
            "shop_r1",
            "pw",
            UrlTls::VerifyFull { ca_file },
        );
        assert_eq!(
            verify["DATABASE_URL"],
            "postgres://shop_r1:pw@10.0.0.5:6432/shop_r1?sslmode=verify-full&sslrootcert=/srv/my%20paas/ca.pem"
        );
        assert_eq!(verify["PGSSLMODE"], "verify-full");
        assert_eq!(verify["PGSSLROOTCERT"], ca_file);
        assert_eq!(verify["PGHOST"], "10.0.0.5");
    }

    #[test]
    fn retries_only_what_a_failover_causes() {
        assert!(retryable(None));
        assert!(
            retryable(Some("25006")),
            "read-only: a standby still promoting"
        );
        assert!(retryable(Some("57P03")), "cannot connect now: starting up");
        assert!(retryable(Some("57P01")), "admin shutdown");
        assert!(!retryable(Some("42P04")), "duplicate database is final");
        assert!(!retryable(Some("42501")), "insufficient privilege is final");
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
