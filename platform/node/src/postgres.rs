//! The Postgres appliance as `paas up` runs it: what the common launcher
//! (`crate::appliance`) needs to know about PostgreSQL, and `paas appliance postgres`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use paas_appliance::provider::Provider;
use paas_appliance::records::Keys;
use paas_backups::location::{process_env, S3Options, S3Settings};
use paas_backups::Location;
use paas_postgres::archive::repo::{KEY_ENV, SECRET_ENV, TOKEN_ENV};
use paas_postgres::archive::{ArchiveConfig, Repo, S3Keys, S3Repo};
use paas_postgres::args::SupervisorArgs;
use paas_postgres::pitr::PitrConfig;
use paas_postgres::provision::{PostgresProvider, ProviderConfig};

use crate::appliance::{ApplianceKind, Launched, Site};

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

    /// Continuous archiving with pgBackRest (`paas pg restore --to-time`) into the
    /// repository [`archive_repo`] says.
    fn member_args(&self, site: &Site, dir: &Path) -> Result<Vec<String>> {
        let (repo, _) = site_archive(site, dir)?;
        Ok(repo_args(&repo))
    }

    /// The S3 keys of the archive's repository, in pgBackRest's own variables (removed
    /// when the repository is a directory).
    fn member_env(&self, site: &Site, dir: &Path) -> Result<Vec<(&'static str, Option<String>)>> {
        let (repo, _) = site_archive(site, dir)?;
        let keys = repo.keys();
        Ok(vec![
            (KEY_ENV, keys.map(|k| k.key.clone())),
            (SECRET_ENV, keys.map(|k| k.secret.clone())),
            (TOKEN_ENV, keys.and_then(|k| k.token.clone())),
        ])
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
                archive: ArchiveConfig::new(
                    archive_repo(&cluster.dir, &cluster.backup_store, &s3_settings())
                        .map(|(repo, _)| repo)
                        // Checked when the members were launched (a refusal stops
                        // `paas up` there), with the same environment.
                        .unwrap_or_else(|e| {
                            tracing::error!(error = %e, "the Postgres archive's repository");
                            Repo::Dir(cluster.dir.join("pgbackrest"))
                        }),
                    &cluster.cluster,
                ),
                scratch_root: cluster.dir.join("pitr"),
                bin_dir: paas_postgres::dump::DEFAULT_BIN_DIR.into(),
                superuser_password: cluster.secret.clone(),
            }),
        )
    }
}

/// The S3 settings of `paas up`'s environment (as the backup store reads them).
fn s3_settings() -> S3Settings {
    S3Options::default().settings(process_env)
}

/// [`archive_repo`] for the cluster in `dir` of `site`.
fn site_archive(site: &Site, dir: &Path) -> Result<(Repo, Option<String>)> {
    archive_repo(dir, &site.backup_store, &s3_settings())
}

/// What `paas up` says about the archive of the cluster in `dir`: where it is, and why
/// it is not in the backup store when it is not.
pub fn describe_archive(site: &Site, dir: &Path) -> Result<String> {
    let (repo, why) = site_archive(site, dir)?;
    Ok(match why {
        None => repo.to_string(),
        Some(why) => format!("{repo} ({why})"),
    })
}

/// The pgBackRest repository of the cluster whose members live in `dir`, given the
/// backup store and the S3 settings (pure): with an S3 store, `<prefix>/pgbackrest` in
/// its bucket, through its endpoint, trusting `AWS_CA_BUNDLE`, with its keys; else
/// (and, with the reason, when the endpoint is plain HTTP, which pgBackRest does not
/// speak to S3) the directory `dir/pgbackrest`. Fails when an S3 store has no keys or
/// an endpoint pgBackRest cannot use.
pub fn archive_repo(
    dir: &Path,
    store: &Location,
    s3: &S3Settings,
) -> Result<(Repo, Option<String>)> {
    let local = Repo::Dir(dir.join("pgbackrest"));
    let Location::S3 { bucket, prefix } = store else {
        return Ok((local, None));
    };
    if let Some(endpoint) = s3.endpoint.as_deref().filter(|e| e.starts_with("http://")) {
        return Ok((
            local,
            Some(format!(
                "not in {store}: pgBackRest reaches S3 over HTTPS only, and {endpoint} is HTTP"
            )),
        ));
    }
    let (Some(key), Some(secret)) = (&s3.access_key_id, &s3.secret_access_key) else {
        anyhow::bail!(
            "the Postgres archive in {store} needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        );
    };
    let path = if prefix.is_empty() {
        "pgbackrest".to_string()
    } else {
        format!("{prefix}/pgbackrest")
    };
    let mut repo = S3Repo::new(
        &format!("s3://{bucket}/{path}"),
        s3.endpoint.as_deref(),
        &s3.region,
    )
    .with_context(|| format!("the Postgres archive in {store}"))?;
    repo.ca_file = s3.ca_bundle.clone();
    repo.keys = Some(S3Keys {
        key: key.clone(),
        secret: secret.clone(),
        token: s3.session_token.clone(),
    });
    Ok((Repo::S3(repo), None))
}

/// The member flags that name `repo` (its keys go in the environment, not here).
fn repo_args(repo: &Repo) -> Vec<String> {
    match repo {
        Repo::Dir(dir) => vec!["--archive-repo".into(), dir.display().to_string()],
        Repo::S3(s3) => {
            let mut args = vec![
                "--archive-repo".into(),
                format!("s3://{}{}", s3.bucket, s3.path),
                "--archive-s3-region".into(),
                s3.region.clone(),
            ];
            if s3.path_style {
                args.extend(["--archive-s3-endpoint".into(), s3.endpoint()]);
            }
            if let Some(ca) = &s3.ca_file {
                args.extend(["--archive-s3-ca-file".into(), ca.display().to_string()]);
            }
            args
        }
    }
}

/// Runs one supervisor until SIGINT/SIGTERM.
pub async fn supervise(args: SupervisorArgs) -> Result<()> {
    crate::up::init_tracing();
    args.member.load_etcd_identity()?;
    paas_postgres::supervisor::run(args.into_config()?, crate::up::wait_for_signal())
        .await
        .context("postgres supervisor failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(endpoint: Option<&str>) -> S3Settings {
        S3Settings {
            endpoint: endpoint.map(str::to_string),
            region: "us-east-1".into(),
            access_key_id: Some("AKID".into()),
            secret_access_key: Some("shh".into()),
            session_token: None,
            ca_bundle: Some("/etc/paas/s3-ca.pem".into()),
        }
    }

    #[test]
    fn the_archive_follows_an_s3_backup_store_under_its_prefix() {
        let dir = Path::new("/data/postgres");
        let store = Location::parse("s3://bk/cluster-a").unwrap();
        let (repo, why) =
            archive_repo(dir, &store, &settings(Some("https://localhost:9443"))).unwrap();
        assert_eq!(why, None);
        assert_eq!(
            repo_args(&repo).join(" "),
            "--archive-repo s3://bk/cluster-a/pgbackrest --archive-s3-region us-east-1 \
             --archive-s3-endpoint https://localhost:9443 --archive-s3-ca-file /etc/paas/s3-ca.pem"
        );
        assert_eq!(repo.keys().unwrap().secret, "shh");
        assert!(!repo_args(&repo).join(" ").contains("shh"));

        // AWS itself: no endpoint flag (the member derives it from the region).
        let aws = Location::parse("s3://bk").unwrap();
        let (repo, _) = archive_repo(dir, &aws, &settings(None)).unwrap();
        assert_eq!(
            repo_args(&repo)[..4].join(" "),
            "--archive-repo s3://bk/pgbackrest --archive-s3-region us-east-1"
        );
    }

    #[test]
    fn a_directory_store_or_a_plain_http_endpoint_keeps_the_archive_in_the_data_dir() {
        let dir = Path::new("/data/postgres");
        let local = Repo::Dir("/data/postgres/pgbackrest".into());
        let store = Location::Dir("/data/backups".into());
        assert_eq!(
            archive_repo(dir, &store, &settings(None)).unwrap(),
            (local.clone(), None)
        );
        let s3 = Location::parse("s3://bk/p").unwrap();
        let (repo, why) = archive_repo(dir, &s3, &settings(Some("http://127.0.0.1:9000"))).unwrap();
        assert_eq!(repo, local);
        assert!(why.unwrap().contains("HTTPS only"));
        assert_eq!(
            repo_args(&repo),
            vec!["--archive-repo", "/data/postgres/pgbackrest"]
        );
        let no_keys = S3Settings {
            access_key_id: None,
            ..settings(Some("https://localhost:9443"))
        };
        let err = archive_repo(dir, &s3, &no_keys).unwrap_err();
        assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
    }
}
