//! `paas mysql ...` client commands that run a local tool on an app's database.

use anyhow::{Context, Result};

/// The parts of a `mysql://user:password@host:port/database` URL.
#[derive(Debug, PartialEq, Eq)]
pub struct MysqlUrl {
    /// The user.
    pub user: String,
    /// The password.
    pub password: String,
    /// The host.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The database.
    pub database: String,
}

/// Splits a `DATABASE_URL` as `resource add mysql` writes it (no escapes needed: the
/// names are `[a-z0-9_]`, the password hex).
pub fn parse_url(url: &str) -> Option<MysqlUrl> {
    let rest = url.strip_prefix("mysql://")?;
    let (credentials, rest) = rest.split_once('@')?;
    let (user, password) = credentials.split_once(':')?;
    let (host_port, database) = rest.split_once('/')?;
    let (host, port) = host_port.rsplit_once(':')?;
    let database = database.split('?').next().unwrap_or_default();
    Some(MysqlUrl {
        user: user.to_string(),
        password: password.to_string(),
        host: host.to_string(),
        port: port.parse().ok()?,
        database: database.to_string(),
    })
}

/// `paas mysql shell -a APP [-- ARGS]`: replaces this process with the mariadb client
/// on the app's DATABASE_URL (the password passed in the environment, not on the
/// command line), verifying the server against `MYSQL_SSL_CA` when the app's
/// variables require TLS.
pub async fn shell(app: &str, args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let client = crate::client::Client::new(crate::config::load()?)?;
    let env: std::collections::BTreeMap<String, String> = client
        .call(
            reqwest::Method::GET,
            &format!("/apps/{app}/env"),
            None::<&serde_json::Value>,
        )
        .await?;
    let url = env
        .get("MYSQL_URL")
        .or_else(|| env.get("DATABASE_URL"))
        .with_context(|| {
            format!("{app} has no MYSQL_URL: run `paas resource add mysql -a {app}` first")
        })?;
    let url = parse_url(url)
        .with_context(|| format!("{app}'s MYSQL_URL is not mysql://user:password@host:port/db"))?;
    // The URL requires TLS: verify the server against the CA it names (a path on the
    // platform's hosts).
    let tls: Vec<String> = match (env.get("MYSQL_SSL_MODE"), env.get("MYSQL_SSL_CA")) {
        (Some(_), Some(ca)) => vec![
            "--ssl".into(),
            format!("--ssl-ca={ca}"),
            "--ssl-verify-server-cert".into(),
        ],
        _ => Vec::new(),
    };
    let err = std::process::Command::new("mariadb")
        .args([
            "--protocol=TCP",
            "-h",
            &url.host,
            "-P",
            &url.port.to_string(),
        ])
        .args(["-u", &url.user, &url.database])
        .args(&tls)
        .args(args)
        .env("MYSQL_PWD", &url.password)
        .exec();
    Err(anyhow::anyhow!(
        "cannot run mariadb: {err} (apt-get install mariadb-client)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_their_parts() {
        assert_eq!(
            parse_url("mysql://shop_db:abc123@127.0.0.1:6033/shop_db"),
            Some(MysqlUrl {
                user: "shop_db".into(),
                password: "abc123".into(),
                host: "127.0.0.1".into(),
                port: 6033,
                database: "shop_db".into(),
            })
        );
        assert_eq!(parse_url("postgres://a:b@h:1/d"), None);
        assert_eq!(parse_url("mysql://a@h:1/d"), None);
        assert_eq!(parse_url("mysql://a:b@h/d"), None);
    }
}
