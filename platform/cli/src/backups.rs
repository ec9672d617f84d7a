//! `paas backup create|list|show|download|restore|delete|schedule|unschedule`.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use paas_backups::progress::{self, Total};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::{config, table};

fn client() -> Result<Client> {
    Client::new(config::load()?)
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `paas backup create -a APP [RESOURCE]`: runs a backup, showing bytes, rate and (from
/// the previous backup's size, an estimate) the ETA on a terminal.
pub async fn create(json_out: bool, app: &str, resource: Option<&str>) -> Result<()> {
    let resp = client()?
        .stream_json(
            Method::POST,
            &format!("/apps/{app}/backups"),
            &json!({ "resource": resource }),
        )
        .await?;
    let tty = std::io::stderr().is_terminal() && !json_out;
    let started = Instant::now();
    let mut body = resp.bytes_stream();
    let mut pending = Vec::new();
    let mut outcome: Option<Value> = None;
    while let Some(chunk) = body.next().await {
        pending.extend_from_slice(&chunk.context("the API ended the backup's reply")?);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let value: Value = serde_json::from_slice(&line).context("unexpected reply line")?;
            if let Some(bytes) = value["progress"]["bytes"].as_u64() {
                if tty {
                    let total = value["progress"]["estimate"]
                        .as_u64()
                        .map_or(Total::Unknown, Total::PreviousBackup);
                    eprint!(
                        "\r\x1b[2K{}",
                        progress::line("sent", bytes, started.elapsed(), total)
                    );
                    let _ = std::io::stderr().flush();
                }
            } else {
                outcome = Some(value);
            }
        }
    }
    if tty {
        eprint!("\r\x1b[2K");
    }
    let outcome = outcome.context("the API ended the backup's reply without an outcome")?;
    if let Some(message) = outcome["error"]["message"].as_str() {
        bail!("backup failed: {message}");
    }
    let m = &outcome["backup"];
    if json_out {
        println!("{}", serde_json::to_string_pretty(m)?);
    } else {
        let took = m["took_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
        let size = m["size"].as_u64().unwrap_or(0);
        println!(
            "Backup {} of {} ({}): {} in {took:.1} s ({}/s), sha256 {}",
            text(&m["id"]),
            text(&m["resource"]),
            text(&m["engine"]),
            human_bytes(size),
            human_bytes((size as f64 / took.max(0.001)) as u64),
            text(&m["sha256"]),
        );
    }
    Ok(())
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// `paas backup list -a APP`
pub async fn list(json_out: bool, app: &str) -> Result<()> {
    let list: Value = client()?
        .call(Method::GET, &format!("/apps/{app}/backups"), None::<&Value>)
        .await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|m| {
            vec![
                text(&m["id"]),
                text(&m["resource"]),
                text(&m["engine"]),
                human_bytes(m["size"].as_u64().unwrap_or(0)),
                text(&m["sha256"]).chars().take(12).collect(),
                text(&m["started"]),
                format!("{:.1}s", m["took_ms"].as_u64().unwrap_or(0) as f64 / 1000.0),
                text(&m["state"]),
                text(&m["trigger"]),
            ]
        })
        .collect();
    table::print(
        &[
            "ID", "RESOURCE", "ENGINE", "SIZE", "SHA256", "STARTED", "TOOK", "STATE", "BY",
        ],
        &rows,
    );
    Ok(())
}

/// `paas backup show -a APP ID`
pub async fn show(app: &str, id: &str) -> Result<()> {
    let m: Value = client()?
        .call(
            Method::GET,
            &format!("/apps/{app}/backups/{id}"),
            None::<&Value>,
        )
        .await?;
    println!("{}", serde_json::to_string_pretty(&m)?);
    Ok(())
}

/// `paas backup download -a APP ID > FILE`: writes the dump to stdout and checks its
/// size and SHA-256 at the end.
pub async fn download(app: &str, id: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if out.is_terminal() {
        bail!("refusing to write a binary dump to a terminal; redirect it: paas backup download -a {app} {id} > FILE");
    }
    let resp = client()?
        .stream(Method::GET, &format!("/apps/{app}/backups/{id}/download"))
        .await?;
    let expected_sha = resp
        .headers()
        .get("x-backup-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let expected_size = resp.content_length();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("the download broke off")?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        out.write_all(&chunk).context("writing the dump")?;
    }
    out.flush()?;
    let sha = hex::encode(hasher.finalize());
    if expected_size.is_some_and(|s| s != size) {
        bail!(
            "download incomplete: {size} bytes of {}",
            expected_size.unwrap_or(0)
        );
    }
    if expected_sha.as_deref().is_some_and(|s| s != sha) {
        bail!(
            "downloaded dump has SHA-256 {sha}, the backup's manifest says {}",
            expected_sha.unwrap_or_default()
        );
    }
    eprintln!("{} written, sha256 {sha} (checked)", human_bytes(size));
    Ok(())
}

/// `paas backup restore -a APP ID [--into-app OTHER] [--resource R]`
pub async fn restore(
    json_out: bool,
    app: &str,
    id: &str,
    into_app: Option<&str>,
    resource: Option<&str>,
) -> Result<()> {
    let started = Instant::now();
    let r: Value = client()?
        .call(
            Method::POST,
            &format!("/apps/{app}/backups/{id}/restore"),
            Some(&json!({ "into_app": into_app, "resource": resource })),
        )
        .await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "Restored backup {id} into {} of {} in {:.1} s",
            text(&r["resource"]),
            text(&r["app"]),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `paas backup delete -a APP ID`
pub async fn delete(app: &str, id: &str) -> Result<()> {
    client()?
        .call_raw(
            Method::DELETE,
            &format!("/apps/{app}/backups/{id}"),
            None::<&Value>,
        )
        .await?;
    println!("Deleted backup {id} of {app}");
    Ok(())
}

/// What `paas backup schedule` sets.
pub struct ScheduleArgs<'a> {
    /// The app.
    pub app: &'a str,
    /// Cron expression; `None` shows the current schedule.
    pub cron: Option<&'a str>,
    /// Only this resource.
    pub resource: Option<&'a str>,
    /// Keep the newest N scheduled backups.
    pub keep_last: Option<u32>,
    /// Keep scheduled backups younger than N days.
    pub keep_days: Option<u32>,
}

/// `paas backup schedule -a APP [--cron EXPR --keep-last N --keep-days D]`
pub async fn schedule(json_out: bool, a: ScheduleArgs<'_>) -> Result<()> {
    let path = format!("/apps/{}/backup-schedule", a.app);
    let client = client()?;
    let Some(cron) = a.cron else {
        let s: Value = client.call(Method::GET, &path, None::<&Value>).await?;
        if json_out {
            println!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            let sc = &s["schedule"];
            println!("cron:      {} (UTC)", text(&sc["cron"]));
            println!(
                "resource:  {}",
                sc["resource"]
                    .as_str()
                    .unwrap_or("every resource with backups")
            );
            println!(
                "keep last: {}",
                sc["retention"]["keep_last"]
                    .as_u64()
                    .map_or("-".into(), |n| n.to_string())
            );
            println!(
                "keep days: {}",
                sc["retention"]["keep_days"]
                    .as_u64()
                    .map_or("-".into(), |n| n.to_string())
            );
            let last = &s["runs"]["last"];
            if let Some(ok) = last.get("ok") {
                println!("last run:  {} ok: {}", text(&ok["at"]), ok["backups"]);
            } else if let Some(failed) = last.get("failed") {
                println!(
                    "last run:  {} FAILED: {}",
                    text(&failed["at"]),
                    text(&failed["error"])
                );
            } else {
                println!("last run:  never");
            }
        }
        return Ok(());
    };
    let s: Value = client
        .call(
            Method::PUT,
            &path,
            Some(&json!({
                "cron": cron,
                "resource": a.resource,
                "keep_last": a.keep_last,
                "keep_days": a.keep_days,
            })),
        )
        .await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("Backups of {} scheduled at '{cron}' (UTC)", a.app);
    }
    Ok(())
}

/// `paas backup unschedule -a APP`
pub async fn unschedule(app: &str) -> Result<()> {
    client()?
        .call_raw(
            Method::DELETE,
            &format!("/apps/{app}/backup-schedule"),
            None::<&Value>,
        )
        .await?;
    println!("Removed the backup schedule of {app}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_sizes() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
