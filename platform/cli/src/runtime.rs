//! Runtime commands: `release add`, `scale`, `ps`, `kill`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::{config, table};

const NO_BODY: Option<&Value> = None;

/// Parses a Procfile: `type: command` lines; blank lines and `#` comments are skipped.
pub fn parse_procfile(text: &str) -> Result<BTreeMap<String, String>> {
    let mut processes = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (kind, command) = line
            .split_once(':')
            .with_context(|| format!("Procfile line {}: expected 'type: command'", n + 1))?;
        let (kind, command) = (kind.trim(), command.trim());
        if kind.is_empty() || command.is_empty() {
            bail!("Procfile line {}: expected 'type: command'", n + 1);
        }
        if processes
            .insert(kind.to_string(), command.to_string())
            .is_some()
        {
            bail!(
                "Procfile line {}: process type {kind:?} defined twice",
                n + 1
            );
        }
    }
    if processes.is_empty() {
        bail!("Procfile defines no process types");
    }
    Ok(processes)
}

/// A gzip'd tarball of `dir`'s contents (paths relative to `dir`).
fn tar_directory(dir: &Path) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir)
        .with_context(|| format!("cannot archive {}", dir.display()))?;
    Ok(tar.into_inner()?.finish()?)
}

/// `paas release add -a APP --procfile FILE [DIR|TARBALL]`
pub async fn release_add(
    json: bool,
    app: &str,
    procfile: &Path,
    code: Option<&Path>,
) -> Result<()> {
    let text = std::fs::read_to_string(procfile)
        .with_context(|| format!("cannot read {}", procfile.display()))?;
    let processes = parse_procfile(&text)?;
    let client = Client::new(config::load()?)?;
    let artifact: Option<Value> = match code {
        None => None,
        Some(path) => {
            let bytes = if path.is_dir() {
                tar_directory(path)?
            } else {
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
            };
            Some(client.upload(Method::PUT, "/artifacts", bytes).await?)
        }
    };
    let release: Value = client
        .call(
            Method::POST,
            &format!("/apps/{app}/releases"),
            Some(&json!({ "processes": processes, "artifact": artifact })),
        )
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&release)?);
    } else {
        println!(
            "Released v{} of {app}: {}",
            release["version"],
            release["description"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// A limit flag: `None` not given, `Some(None)` lift it (`none`), `Some(Some(v))` set it.
fn limit_flag<T>(
    flag: Option<&str>,
    parse: impl Fn(&str) -> Result<T, paas_model::LimitError>,
) -> Result<Option<Option<T>>> {
    match flag {
        None => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("none") => Ok(Some(None)),
        Some(v) => Ok(Some(Some(parse(v)?))),
    }
}

/// `paas scale -a APP web=2 worker=1 [--memory 512M] [--cpu 0.5]`
pub async fn scale(
    json: bool,
    app: &str,
    counts: &[String],
    memory: Option<&str>,
    cpu: Option<&str>,
) -> Result<()> {
    let memory = limit_flag(memory, paas_model::parse_memory)?;
    let cpu = limit_flag(cpu, paas_model::parse_cpu)?;
    let limiting = memory.is_some() || cpu.is_some();
    let mut processes = BTreeMap::new();
    let mut named = Vec::new();
    for c in counts {
        match c.split_once('=') {
            Some((kind, n)) => {
                let n: u32 = n
                    .parse()
                    .with_context(|| format!("{c:?}: count must be a number"))?;
                processes.insert(kind.to_string(), n);
                named.push(kind.to_string());
            }
            None if limiting => named.push(c.clone()),
            None => bail!("{c:?} is not TYPE=COUNT (TYPE alone only with --memory or --cpu)"),
        }
    }
    let client = Client::new(config::load()?)?;
    let mut limits = BTreeMap::new();
    if limiting {
        // Only the flags given change: the rest of each type's limits is kept.
        let current: paas_model::Formation = serde_json::from_value(
            client
                .call(Method::GET, &format!("/apps/{app}/formation"), NO_BODY)
                .await?,
        )
        .context("reading the formation")?;
        for kind in &named {
            let mut l = current.limits_of(kind);
            if let Some(m) = memory {
                l.memory = m;
            }
            if let Some(c) = cpu {
                l.cpu_millis = c;
            }
            limits.insert(kind.clone(), l);
        }
    }
    let formation: Value = client
        .call(
            Method::PUT,
            &format!("/apps/{app}/formation"),
            Some(&json!({ "processes": processes, "limits": limits })),
        )
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&formation)?);
    } else {
        let f: paas_model::Formation =
            serde_json::from_value(formation).context("reading the formation")?;
        let parts: Vec<String> = f
            .processes
            .iter()
            .map(|(k, v)| match f.limits.get(k) {
                Some(l) => format!("{k}={v} ({l})"),
                None => format!("{k}={v}"),
            })
            .collect();
        println!(
            "Scaled {app} to {}",
            if parts.is_empty() {
                "nothing".into()
            } else {
                parts.join(" ")
            }
        );
    }
    Ok(())
}

fn uptime(started_at: &Value) -> String {
    let Some(t) = started_at.as_str() else {
        return String::new();
    };
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(t) else {
        return String::new();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// `paas ps -a APP`
pub async fn ps(json: bool, app: &str) -> Result<()> {
    let client = Client::new(config::load()?)?;
    let jobs: Value = client
        .call(Method::GET, &format!("/apps/{app}/jobs"), NO_BODY)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = jobs
        .as_array()
        .into_iter()
        .flatten()
        .map(|j| {
            vec![
                s(&j["id"]),
                s(&j["process_type"]),
                format!("v{}", s(&j["release"])),
                s(&j["host"]),
                s(&j["state"]),
                uptime(&j["started_at"]),
                s(&j["restarts"]),
            ]
        })
        .collect();
    table::print(
        &[
            "ID", "TYPE", "RELEASE", "HOST", "STATE", "UPTIME", "RESTARTS",
        ],
        &rows,
    );
    Ok(())
}

/// `paas kill -a APP JOB`
pub async fn kill(json: bool, app: &str, job: &str) -> Result<()> {
    let client = Client::new(config::load()?)?;
    client
        .call_raw(Method::DELETE, &format!("/apps/{app}/jobs/{job}"), NO_BODY)
        .await?;
    if json {
        println!("{}", json!({ "killed": job }));
    } else {
        println!("Stopped job {job} of {app}; the scheduler replaces it if the formation wants it");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfiles() {
        let p =
            parse_procfile("# app\nweb: python3 -m http.server $PORT\n\nworker:  sh -c 'a: b'\n")
                .unwrap();
        assert_eq!(p["web"], "python3 -m http.server $PORT");
        assert_eq!(p["worker"], "sh -c 'a: b'");
        assert!(parse_procfile("web python3").is_err());
        assert!(parse_procfile("web: a\nweb: b").is_err());
        assert!(parse_procfile("# nothing\n").is_err());
        assert!(parse_procfile("web:   ").is_err());
    }

    #[test]
    fn tarballs_hold_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.py"), "print(1)").unwrap();
        let bytes = tar_directory(dir.path()).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n.ends_with("app.py")), "{names:?}");
    }
}
