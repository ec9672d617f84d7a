//! Client commands: one function per CLI verb, printing a table or (`--json`) the API's
//! JSON reply unchanged.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::{config, table};

const NO_BODY: Option<&Value> = None;

fn client() -> Result<Client> {
    Client::new(config::load()?)
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON value serializes")
    );
}

/// An RFC 3339 timestamp as `YYYY-MM-DD HH:MM:SS` (UTC), for tables.
fn when(v: &Value) -> String {
    let t = s(v);
    match t.get(..19) {
        Some(head) if t.len() > 19 => head.replacen('T', " ", 1),
        _ => t,
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `paas apps create NAME`
pub async fn apps_create(json: bool, name: &str) -> Result<()> {
    let app: Value = client()?
        .call(Method::POST, "/apps", Some(&json!({ "name": name })))
        .await?;
    if json {
        print_json(&app);
    } else {
        println!("Created app {}", s(&app["name"]));
    }
    Ok(())
}

/// `paas apps list`
pub async fn apps_list(json: bool) -> Result<()> {
    let apps: Value = client()?.call(Method::GET, "/apps", NO_BODY).await?;
    if json {
        print_json(&apps);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = apps
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![
                s(&a["name"]),
                format!("v{}", s(&a["release"])),
                when(&a["created_at"]),
            ]
        })
        .collect();
    table::print(&["NAME", "RELEASE", "CREATED"], &rows);
    Ok(())
}

/// `paas apps info NAME`
pub async fn apps_info(json: bool, name: &str) -> Result<()> {
    let info: Value = client()?
        .call(Method::GET, &format!("/apps/{name}"), NO_BODY)
        .await?;
    if json {
        print_json(&info);
        return Ok(());
    }
    println!("=== {}", s(&info["name"]));
    println!("Release:   v{}", s(&info["release"]));
    println!("Created:   {}", s(&info["created_at"]));
    let keys: Vec<String> = info["env_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    println!("Variables: {}", keys.join(", "));
    let resources: Vec<String> = info["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| format!("{} ({})", s(&r["id"]), s(&r["kind"])))
        .collect();
    println!("Resources: {}", resources.join(", "));
    Ok(())
}

/// `paas apps destroy NAME --confirm NAME`
pub async fn apps_destroy(json: bool, name: &str, confirm: &str) -> Result<()> {
    if name != confirm {
        bail!("refusing to destroy {name:?}: --confirm must repeat the app name");
    }
    client()?
        .call_raw(Method::DELETE, &format!("/apps/{name}"), NO_BODY)
        .await?;
    if json {
        print_json(&json!({ "destroyed": name }));
    } else {
        println!("Destroyed app {name}");
    }
    Ok(())
}

/// Splits `KEY=VALUE` arguments; the value may itself contain `=`.
pub fn parse_pairs(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("{p:?} is not KEY=VALUE"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

fn print_release(json: bool, release: &Value) {
    if json {
        print_json(release);
    } else {
        println!(
            "Released v{} of {}: {}",
            s(&release["version"]),
            s(&release["app"]),
            s(&release["description"])
        );
    }
}

/// `paas env set -a APP K=V...`
pub async fn env_set(json: bool, app: &str, pairs: &[String]) -> Result<()> {
    let set = parse_pairs(pairs)?;
    let release: Value = client()?
        .call(
            Method::PATCH,
            &format!("/apps/{app}/env"),
            Some(&json!({ "set": set })),
        )
        .await?;
    print_release(json, &release);
    Ok(())
}

/// `paas env unset -a APP K...`
pub async fn env_unset(json: bool, app: &str, keys: &[String]) -> Result<()> {
    let release: Value = client()?
        .call(
            Method::PATCH,
            &format!("/apps/{app}/env"),
            Some(&json!({ "unset": keys })),
        )
        .await?;
    print_release(json, &release);
    Ok(())
}

/// `paas env get -a APP [KEY]`
pub async fn env_get(json: bool, app: &str, key: Option<&str>) -> Result<()> {
    let env: BTreeMap<String, String> = client()?
        .call(Method::GET, &format!("/apps/{app}/env"), NO_BODY)
        .await?;
    match key {
        Some(k) => {
            let v = env
                .get(k)
                .with_context(|| format!("{k} is not set on {app}"))?;
            if json {
                print_json(&json!({ k: v }));
            } else {
                println!("{v}");
            }
        }
        None if json => print_json(&json!(env)),
        None => {
            for (k, v) in env {
                println!("{k}={v}");
            }
        }
    }
    Ok(())
}

/// `paas releases -a APP`
pub async fn releases(json: bool, app: &str) -> Result<()> {
    let releases: Value = client()?
        .call(Method::GET, &format!("/apps/{app}/releases"), NO_BODY)
        .await?;
    if json {
        print_json(&releases);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = releases
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                format!("v{}", s(&r["version"])),
                when(&r["created_at"]),
                s(&r["description"]),
            ]
        })
        .collect();
    table::print(&["VERSION", "CREATED", "DESCRIPTION"], &rows);
    Ok(())
}

/// `paas rollback -a APP [VERSION]`
pub async fn rollback(json: bool, app: &str, version: Option<&str>) -> Result<()> {
    let version = version
        .map(|v| {
            v.trim_start_matches('v')
                .parse::<u64>()
                .with_context(|| format!("{v:?} is not a release version"))
        })
        .transpose()?;
    let release: Value = client()?
        .call(
            Method::POST,
            &format!("/apps/{app}/rollback"),
            Some(&json!({ "version": version })),
        )
        .await?;
    print_release(json, &release);
    Ok(())
}

fn scope_text(scope: &Value) -> String {
    match scope["kind"].as_str() {
        Some("app") => format!("app:{}", s(&scope["app"])),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// `paas tokens create [-a APP]`
pub async fn tokens_create(json: bool, app: Option<&str>, description: &str) -> Result<()> {
    let token: Value = client()?
        .call(
            Method::POST,
            "/tokens",
            Some(&json!({ "app": app, "description": description })),
        )
        .await?;
    if json {
        print_json(&token);
    } else {
        println!(
            "Created token {} ({}); it is shown only once:",
            s(&token["id"]),
            scope_text(&token["scope"])
        );
        println!("{}", s(&token["token"]));
    }
    Ok(())
}

/// `paas tokens list`
pub async fn tokens_list(json: bool) -> Result<()> {
    let tokens: Value = client()?.call(Method::GET, "/tokens", NO_BODY).await?;
    if json {
        print_json(&tokens);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = tokens
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            vec![
                s(&t["id"]),
                scope_text(&t["scope"]),
                when(&t["created_at"]),
                s(&t["description"]),
            ]
        })
        .collect();
    table::print(&["ID", "SCOPE", "CREATED", "DESCRIPTION"], &rows);
    Ok(())
}

/// `paas tokens revoke ID`
pub async fn tokens_revoke(json: bool, id: &str) -> Result<()> {
    client()?
        .call_raw(Method::DELETE, &format!("/tokens/{id}"), NO_BODY)
        .await?;
    if json {
        print_json(&json!({ "revoked": id }));
    } else {
        println!("Revoked token {id}");
    }
    Ok(())
}

/// `paas resource add KIND -a APP [--members N]`
pub async fn resource_add(json: bool, app: &str, kind: &str, members: Option<usize>) -> Result<()> {
    let mut options = serde_json::Map::new();
    if let Some(members) = members {
        options.insert("members".into(), json!(members.to_string()));
    }
    let r: Value = client()?
        .call(
            Method::POST,
            &format!("/apps/{app}/resources"),
            Some(&json!({ "kind": kind, "options": options })),
        )
        .await?;
    if json {
        print_json(&r);
        return Ok(());
    }
    println!("Added {} resource {} to {app}; set:", kind, s(&r["id"]));
    for (k, _) in r["env"].as_object().into_iter().flatten() {
        println!("  {k}");
    }
    Ok(())
}

/// `paas resource list -a APP`
pub async fn resource_list(json: bool, app: &str) -> Result<()> {
    let list: Value = client()?
        .call(Method::GET, &format!("/apps/{app}/resources"), NO_BODY)
        .await?;
    if json {
        print_json(&list);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let keys: Vec<&str> = r["env"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.as_str())
                .collect();
            vec![
                s(&r["id"]),
                s(&r["kind"]),
                when(&r["created_at"]),
                keys.join(","),
            ]
        })
        .collect();
    table::print(&["ID", "KIND", "CREATED", "VARIABLES"], &rows);
    Ok(())
}

/// `paas resource remove ID -a APP`
pub async fn resource_remove(json: bool, app: &str, id: &str) -> Result<()> {
    client()?
        .call_raw(
            Method::DELETE,
            &format!("/apps/{app}/resources/{id}"),
            NO_BODY,
        )
        .await?;
    if json {
        print_json(&json!({ "removed": id }));
    } else {
        println!("Removed resource {id} from {app}");
    }
    Ok(())
}

/// `paas status`
pub async fn status(json: bool) -> Result<()> {
    let st: Value = client()?.call(Method::GET, "/status", NO_BODY).await?;
    if json {
        print_json(&st);
        return Ok(());
    }
    println!(
        "paas API {} (version {})",
        config::load()?.url,
        s(&st["version"])
    );
    println!("Token scope:    {}", scope_text(&st["scope"]));
    println!("Apps:           {}", s(&st["apps"]));
    let kinds: Vec<String> = st["resource_kinds"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    println!(
        "Resource kinds: {}",
        if kinds.is_empty() {
            "none".into()
        } else {
            kinds.join(", ")
        }
    );
    Ok(())
}

/// `paas cluster status`
pub async fn cluster_status(json: bool) -> Result<()> {
    let st: Value = client()?.call(Method::GET, "/cluster", NO_BODY).await?;
    if json {
        print_json(&st);
        return Ok(());
    }
    println!(
        "Scheduler leader: {}",
        st["scheduler_leader"].as_str().unwrap_or("(none)")
    );
    let rows: Vec<Vec<String>> = st["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            vec![
                s(&h["host"]["id"]),
                s(&h["host"]["api_addr"]),
                s(&h["host"]["job_ip"]),
                s(&h["jobs"]),
                when(&h["host"]["started_at"]),
            ]
        })
        .collect();
    table::print(&["HOST", "API", "JOB IP", "JOBS", "STARTED"], &rows);
    for agg in st["log_aggregators"].as_array().into_iter().flatten() {
        println!(
            "Log aggregator: api {} syslog {} forward {}",
            s(&agg["api"]),
            s(&agg["syslog"]),
            s(&agg["forward"])
        );
    }
    for (kind, status) in st["providers"].as_object().into_iter().flatten() {
        println!();
        print_provider(kind, status);
    }
    Ok(())
}

fn print_provider(kind: &str, status: &Value) {
    match (status["text"].as_str(), status["error"].as_str()) {
        (Some(text), _) => print!("{text}"),
        (None, Some(err)) => println!("{kind}: status unavailable: {err}"),
        (None, None) => println!("{kind}: no status reported"),
    }
}

/// `paas pg info` and the like: one provider's section of `paas cluster status`.
pub async fn provider_status(json: bool, kind: &str) -> Result<()> {
    let st: Value = client()?.call(Method::GET, "/cluster", NO_BODY).await?;
    let status = st["providers"]
        .get(kind)
        .with_context(|| format!("no {kind} provider is configured"))?;
    if json {
        print_json(status);
    } else {
        print_provider(kind, status);
    }
    Ok(())
}

/// `paas pg recover`: restarts a cluster whose etcd state is gone from the member with
/// the most data.
pub async fn recover(json: bool, kind: &str, member: Option<String>) -> Result<()> {
    let path = format!("/cluster/{kind}/recover");
    let body = serde_json::json!({ "member": member });
    let reply: Value = client()?.call(Method::POST, &path, Some(&body)).await?;
    if json {
        print_json(&reply);
    } else {
        println!("{}", reply["recovered"].as_str().unwrap_or_default());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs() {
        let m = parse_pairs(&["A=1".into(), "URL=x?a=b".into(), "E=".into()]).unwrap();
        assert_eq!(m["A"], "1");
        assert_eq!(m["URL"], "x?a=b");
        assert_eq!(m["E"], "");
        assert!(parse_pairs(&["NOEQ".into()]).is_err());
    }
}
