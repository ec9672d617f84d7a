//! `paas pg ...` client commands that run a local tool on an app's database.

use anyhow::{Context, Result};

/// `paas pg psql -a APP [-- ARGS]`: replaces this process with psql on DATABASE_URL.
pub async fn psql(app: &str, args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let client = crate::client::Client::new(crate::config::load()?)?;
    let env: std::collections::BTreeMap<String, String> = client
        .call(
            reqwest::Method::GET,
            &format!("/apps/{app}/env"),
            None::<&serde_json::Value>,
        )
        .await?;
    let url = env.get("DATABASE_URL").with_context(|| {
        format!("{app} has no DATABASE_URL: run `paas resource add postgres -a {app}` first")
    })?;
    let err = std::process::Command::new("psql")
        .arg(url)
        .args(args)
        .exec();
    Err(anyhow::anyhow!(
        "cannot run psql: {err} (apt-get install postgresql-client)"
    ))
}
