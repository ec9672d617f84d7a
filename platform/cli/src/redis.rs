//! `paas redis ...`: redis-cli on an app's Redis, its groups' state, and the recovery of
//! a group whose state etcd lost.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::Value;

fn client() -> Result<crate::client::Client> {
    crate::client::Client::new(crate::config::load()?)
}

/// `paas redis cli -a APP [-- ARGS]`: replaces this process with redis-cli on REDIS_URL.
pub async fn cli(app: &str, args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let env: BTreeMap<String, String> = client()?
        .call(Method::GET, &format!("/apps/{app}/env"), None::<&Value>)
        .await?;
    let url = env.get("REDIS_URL").with_context(|| {
        format!("{app} has no REDIS_URL: run `paas resource add redis -a {app}` first")
    })?;
    // redis://USER:PASSWORD@HOST:PORT (rediss:// over TLS, verified with REDIS_TLS_CA);
    // the password goes in the environment, not on the command line where `ps` shows it.
    let (rest, tls) = match (url.strip_prefix("rediss://"), url.strip_prefix("redis://")) {
        (Some(rest), _) => {
            let ca = env
                .get("REDIS_TLS_CA")
                .context("REDIS_URL is rediss:// but REDIS_TLS_CA is not set")?;
            (
                rest,
                vec!["--tls".to_string(), "--cacert".into(), ca.clone()],
            )
        }
        (None, Some(rest)) => (rest, Vec::new()),
        (None, None) => anyhow::bail!("REDIS_URL is not a redis:// or rediss:// URL"),
    };
    let (auth, hostport) = rest
        .trim_end_matches('/')
        .rsplit_once('@')
        .context("REDIS_URL has no credentials")?;
    let (user, password) = auth.split_once(':').context("REDIS_URL has no password")?;
    let (host, port) = hostport.rsplit_once(':').context("REDIS_URL has no port")?;
    let err = std::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port, "--user", user])
        .args(&tls)
        .env("REDISCLI_AUTH", password)
        .args(args)
        .exec();
    Err(anyhow::anyhow!(
        "cannot run redis-cli: {err} (apt-get install redis-tools)"
    ))
}

/// `(resource id, group)` of each of the app's Redis resources; an error if it has none.
async fn groups(client: &crate::client::Client, app: &str) -> Result<Vec<(String, String)>> {
    let resources: Vec<Value> = client
        .call(
            Method::GET,
            &format!("/apps/{app}/resources"),
            None::<&Value>,
        )
        .await?;
    let groups: Vec<(String, String)> = resources
        .iter()
        .filter(|r| r["kind"] == "redis")
        .filter_map(|r| {
            Some((
                r["id"].as_str()?.to_string(),
                r["data"]["group"].as_str()?.to_string(),
            ))
        })
        .collect();
    anyhow::ensure!(
        !groups.is_empty(),
        "{app} has no Redis resource: run `paas resource add redis -a {app}` first"
    );
    Ok(groups)
}

/// `paas redis recover -a APP [--resource ID] [--member NAME]`: restarts the resource's
/// group whose state etcd lost, from the member with the most data (or `member`).
pub async fn recover(
    json: bool,
    app: &str,
    resource: Option<&str>,
    member: Option<&str>,
) -> Result<()> {
    let client = client()?;
    let groups = groups(&client, app).await?;
    let group = match (resource, groups.as_slice()) {
        (Some(id), _) => groups
            .iter()
            .find(|(rid, _)| rid == id)
            .map(|(_, group)| group.clone())
            .with_context(|| format!("{app} has no Redis resource {id}"))?,
        (None, [(_, group)]) => group.clone(),
        (None, _) => anyhow::bail!(
            "{app} has several Redis resources: pick one with --resource ({})",
            groups
                .iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    // The provider's recovery names the group, and the member after a slash.
    let target = match member {
        Some(member) => format!("{group}/{member}"),
        None => group,
    };
    let body = serde_json::json!({ "member": target });
    let reply: Value = client
        .call(Method::POST, "/cluster/redis/recover", Some(&body))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        println!("{}", reply["recovered"].as_str().unwrap_or_default());
    }
    Ok(())
}

/// `paas redis info -a APP`: the groups of the app's Redis resources.
pub async fn info(json: bool, app: &str) -> Result<()> {
    let client = client()?;
    let groups = groups(&client, app).await?;
    let cluster: Value = client.call(Method::GET, "/cluster", None::<&Value>).await?;
    let status = cluster["providers"]
        .get("redis")
        .context("no redis provider is configured")?;
    if let Some(err) = status["error"].as_str() {
        anyhow::bail!("redis status unavailable: {err}");
    }
    if json {
        let picked: serde_json::Map<String, Value> = groups
            .iter()
            .map(|(id, group)| (id.clone(), status["groups"][group].clone()))
            .collect();
        println!("{}", serde_json::to_string_pretty(&picked)?);
        return Ok(());
    }
    for (id, group) in &groups {
        let info: paas_redis::info::GroupInfo =
            serde_json::from_value(status["groups"][group].clone()).unwrap_or_default();
        println!("resource {id}");
        print!("{}", paas_redis::info::render(group, &info));
    }
    Ok(())
}
