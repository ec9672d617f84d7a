//! Client configuration: where the API is and which token to send.
//!
//! `paas up` writes `$HOME/.config/paas/config.toml` (mode 0600); `PAAS_URL` and
//! `PAAS_TOKEN` override it, so scripts and tests need no file at all.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// API endpoint and credentials used by every client command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientConfig {
    /// Base URL of the controller API, e.g. `http://127.0.0.1:7700`.
    pub url: String,
    /// Bearer token.
    pub token: String,
}

/// Path of the client config file.
pub fn config_path() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("XDG_CONFIG_HOME") {
        if !dir.is_empty() {
            return Ok(PathBuf::from(dir).join("paas/config.toml"));
        }
    }
    let home = std::env::var("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".config/paas/config.toml"))
}

/// Loads the config: file values, overridden by `PAAS_URL` / `PAAS_TOKEN`.
pub fn load() -> Result<ClientConfig> {
    let path = config_path()?;
    let from_file: Option<ClientConfig> = match fs::read_to_string(&path) {
        Ok(text) => Some(
            toml::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let url = env("PAAS_URL").or_else(|| from_file.as_ref().map(|c| c.url.clone()));
    let token = env("PAAS_TOKEN").or_else(|| from_file.as_ref().map(|c| c.token.clone()));
    match (url, token) {
        (Some(url), Some(token)) => Ok(ClientConfig { url, token }),
        _ => bail!(
            "no API configured: run `paas up`, or set PAAS_URL and PAAS_TOKEN (looked in {})",
            path.display()
        ),
    }
}

/// Writes the config file with mode 0600 (it holds a credential).
pub fn save(config: &ClientConfig) -> Result<PathBuf> {
    let path = config_path()?;
    let dir = path.parent().expect("config path has a parent");
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let text = toml::to_string(config)?;
    let tmp = path.with_extension("toml.tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    Ok(path)
}
