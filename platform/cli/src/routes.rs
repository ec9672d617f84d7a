//! `paas route add|list|remove`: HTTP routes of an app.

use std::path::Path;

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::{config, table};

/// What `paas route add` sends.
pub struct AddArgs<'a> {
    /// The app.
    pub app: &'a str,
    /// The domain (empty for a TCP route).
    pub domain: &'a str,
    /// The port of a TCP route.
    pub tcp: Option<u16>,
    /// Optional path prefix.
    pub path: Option<&'a str>,
    /// Sticky sessions.
    pub sticky: bool,
    /// Certificate chain PEM file.
    pub cert: Option<&'a Path>,
    /// Private key PEM file.
    pub key: Option<&'a Path>,
}

fn client() -> Result<Client> {
    Client::new(config::load()?)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `paas route add -a APP DOMAIN [--path P] [--sticky] [--cert F --key F]`
pub async fn add(json_out: bool, a: AddArgs<'_>) -> Result<()> {
    let mut body = match a.tcp {
        Some(port) => json!({ "tcp_port": port }),
        None => json!({ "domain": a.domain, "sticky": a.sticky }),
    };
    if let Some(p) = a.path {
        body["path"] = p.into();
    }
    match (a.cert, a.key) {
        (Some(cert), Some(key)) => {
            body["tls"] = json!({ "cert_pem": read(cert)?, "key_pem": read(key)? });
        }
        (None, None) => {}
        _ => anyhow::bail!("--cert and --key go together"),
    }
    let r: Value = client()?
        .call(
            Method::POST,
            &format!("/apps/{}/routes", a.app),
            Some(&body),
        )
        .await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else if let Some(port) = r["tcp_port"].as_u64() {
        println!(
            "Added TCP route {} for {}: port {port} of every router",
            r["id"].as_str().unwrap_or(""),
            a.app
        );
    } else {
        println!(
            "Added route {} for {}: {}{}",
            r["id"].as_str().unwrap_or(""),
            a.app,
            r["domain"].as_str().unwrap_or(""),
            r["path"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `paas route list -a APP`
pub async fn list(json_out: bool, app: &str) -> Result<()> {
    let list: Value = client()?
        .call(Method::GET, &format!("/apps/{app}/routes"), None::<&Value>)
        .await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let yes = |v: &Value| {
        if v.as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
        .to_string()
    };
    let rows: Vec<Vec<String>> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let domain = match r["tcp_port"].as_u64() {
                Some(port) => format!("tcp:{port}"),
                None => text(&r["domain"]),
            };
            vec![
                text(&r["id"]),
                domain,
                r["path"].as_str().unwrap_or("/").to_string(),
                yes(&r["sticky"]),
                yes(&r["tls"]),
            ]
        })
        .collect();
    table::print(&["ID", "DOMAIN", "PATH", "STICKY", "TLS"], &rows);
    Ok(())
}

/// `paas route remove -a APP ID`
pub async fn remove(json_out: bool, app: &str, id: &str) -> Result<()> {
    client()?
        .call_raw(
            Method::DELETE,
            &format!("/apps/{app}/routes/{id}"),
            None::<&Value>,
        )
        .await?;
    if json_out {
        println!("{}", json!({ "removed": id }));
    } else {
        println!("Removed route {id} from {app}");
    }
    Ok(())
}
