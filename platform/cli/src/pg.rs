//! `paas pg ...` client commands that run a local tool on an app's database, and
//! `paas pg restore --to-time` (the controller's point-in-time restore, its steps
//! printed as they come).

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};

/// `paas pg restore -a APP --to-time TIME [--into-app OTHER] [--resource ID]`.
pub async fn restore(
    json_out: bool,
    app: &str,
    to_time: &str,
    into_app: Option<&str>,
    resource: Option<&str>,
) -> Result<()> {
    let client = crate::client::Client::new(crate::config::load()?)?;
    let resp = client
        .stream_json(
            reqwest::Method::POST,
            &format!("/apps/{app}/pg-restore"),
            &json!({ "to_time": to_time, "into_app": into_app, "resource": resource }),
        )
        .await?;
    let mut body = resp.bytes_stream();
    let mut pending = Vec::new();
    let mut outcome: Option<Value> = None;
    while let Some(chunk) = body.next().await {
        pending.extend_from_slice(&chunk.context("the API ended the restore's reply")?);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let value: Value = serde_json::from_slice(&line).context("unexpected reply line")?;
            match value["step"].as_str() {
                Some(step) if !json_out => eprintln!("{step}"),
                Some(_) => {}
                None => outcome = Some(value),
            }
        }
    }
    let outcome = outcome.context("the API ended the restore's reply without an outcome")?;
    if let Some(message) = outcome["error"]["message"].as_str() {
        bail!("point-in-time restore failed: {message}");
    }
    let r = &outcome["restored"];
    if json_out {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        println!(
            "Restored into resource {} of {}, attached as {} (DATABASE_URL unchanged; to switch: paas env set -a {} DATABASE_URL=\"$(paas env get -a {} {})\")",
            r["resource"].as_str().unwrap_or(""),
            r["app"].as_str().unwrap_or(""),
            r["variable"].as_str().unwrap_or(""),
            r["app"].as_str().unwrap_or(""),
            r["app"].as_str().unwrap_or(""),
            r["variable"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

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
