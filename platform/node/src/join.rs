//! Join tokens: everything `paas host` needs to join a cluster, in one explicit
//! credential made on the `paas up` machine (`paas cluster join-token`), instead of a
//! copy of the pki directory, the cluster secret and the etcd URLs handed over apart.
//!
//! A token carries the etcd client URLs, the cluster CA's certificate, the client
//! certificate and key etcd and the log aggregator require, the cluster secret (which
//! the host agent's `/run` requires of the controller) and, when given, the
//! aggregator's syslog address. It is as powerful as the data dir's `pki/` and
//! `cluster-secret` together: whoever holds it is a member of the cluster. It is
//! printed once, never stored by the platform; `paas host --join-token-file FILE` (or
//! `PAAS_JOIN_TOKEN`) installs its identity into the joining host's own data dir
//! (`pki/`, 0700, the key 0600).
//!
//! Format: `paasjoin1.` followed by the URL-safe base64 (no padding) of the JSON of
//! [`JoinToken`]; [`decode`] refuses anything else with a reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The prefix that names the format's version.
pub const PREFIX: &str = "paasjoin1.";

/// What a joining host receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinToken {
    /// etcd client URLs.
    pub etcd: Vec<String>,
    /// The cluster CA's certificate (PEM).
    pub ca_pem: String,
    /// The platform's client certificate (PEM).
    pub client_cert_pem: String,
    /// Its private key (PEM).
    pub client_key_pem: String,
    /// The cluster secret.
    pub cluster_secret: String,
    /// The log aggregator's syslog input, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_addr: Option<SocketAddr>,
}

/// Makes the token of the cluster whose `paas up` data dir is `data_dir`: its pki and
/// secret, and `etcd` (default: the embedded etcd's client URL).
pub fn make(
    data_dir: &Path,
    etcd: Option<&str>,
    log_addr: Option<SocketAddr>,
) -> Result<JoinToken> {
    let pki = data_dir.join("pki");
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).with_context(|| {
            format!(
                "cannot read {} (run this on the `paas up` machine, as its user, with --data-dir)",
                p.display()
            )
        })
    };
    let etcd = match etcd {
        Some(urls) => urls.split(',').map(|u| u.trim().to_string()).collect(),
        None => vec![crate::up::embedded_etcd_url(data_dir)?],
    };
    Ok(JoinToken {
        etcd,
        ca_pem: read(pki.join("ca.pem"))?,
        client_cert_pem: read(pki.join("client.pem"))?,
        client_key_pem: read(pki.join("client-key.pem"))?,
        cluster_secret: read(data_dir.join("cluster-secret"))?.trim().to_string(),
        log_addr,
    })
}

/// The token as text.
pub fn encode(token: &JoinToken) -> String {
    let json = serde_json::to_vec(token).expect("a join token serializes");
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    )
}

/// Reads a token, saying what is wrong with one that is not.
pub fn decode(text: &str) -> Result<JoinToken> {
    let Some(body) = text.trim().strip_prefix(PREFIX) else {
        bail!("not a join token: it must start with {PREFIX:?} (make one with `paas cluster join-token`)");
    };
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .context("not a join token: its body is not base64 (cut or mangled in copying?)")?;
    let token: JoinToken =
        serde_json::from_slice(&json).context("not a join token: its body is not a token")?;
    if token.etcd.is_empty() || token.cluster_secret.is_empty() {
        bail!("not a join token: it names no etcd or no cluster secret");
    }
    for (what, pem) in [
        ("CA certificate", &token.ca_pem),
        ("client certificate", &token.client_cert_pem),
        ("client key", &token.client_key_pem),
    ] {
        if !pem.contains("-----BEGIN ") {
            bail!("not a join token: its {what} is not PEM");
        }
    }
    Ok(token)
}

/// Writes the token's identity into `data_dir/pki` (0700; the key 0600) as
/// `ca.pem`, `client.pem`, `client-key.pem`, the layout `--etcd-tls-dir` takes; returns
/// that directory.
pub fn install(token: &JoinToken, data_dir: &Path) -> Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let pki = data_dir.join("pki");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&pki)
        .with_context(|| format!("cannot create {}", pki.display()))?;
    std::fs::set_permissions(&pki, std::fs::Permissions::from_mode(0o700))?;
    for (name, text, mode) in [
        ("ca.pem", &token.ca_pem, 0o644),
        ("client.pem", &token.client_cert_pem, 0o644),
        ("client-key.pem", &token.client_key_pem, 0o600),
    ] {
        let path = pki.join(name);
        let tmp = pki.join(format!(".{name}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(pki)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken {
            etcd: vec!["https://10.0.0.1:2379".into()],
            ca_pem: "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n".into(),
            client_cert_pem: "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n".into(),
            client_key_pem: "-----BEGIN PRIVATE KEY-----\nC\n-----END PRIVATE KEY-----\n".into(),
            cluster_secret: "s3cret".into(),
            log_addr: Some("10.0.0.1:5514".parse().unwrap()),
        }
    }

    #[test]
    fn round_trip() {
        let t = token();
        let text = encode(&t);
        assert!(text.starts_with(PREFIX));
        assert!(!text.contains('\n') && !text.contains('='), "{text}");
        assert_eq!(decode(&format!("  {text}\n")).unwrap(), t);
    }

    #[test]
    fn refusals_say_why() {
        let err = |s: &str| decode(s).unwrap_err().to_string();
        assert!(err("hello").contains("must start with"));
        assert!(err("paasjoin1.!!!").contains("not base64"));
        let text = encode(&token());
        assert!(err(&text[..text.len() - 7]).contains("not"));
        let mut t = token();
        t.client_key_pem = "key".into();
        assert!(err(&encode(&t)).contains("client key is not PEM"));
        let mut t = token();
        t.etcd.clear();
        assert!(err(&encode(&t)).contains("no etcd"));
    }

    #[test]
    fn install_writes_the_pki_layout_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let pki = install(&token(), dir.path()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pki), 0o700);
        assert_eq!(mode(&pki.join("client-key.pem")), 0o600);
        assert_eq!(mode(&pki.join("ca.pem")), 0o644);
        assert_eq!(
            std::fs::read_to_string(pki.join("client.pem")).unwrap(),
            token().client_cert_pem
        );
        // Installing again (a restart with the same token) is fine.
        install(&token(), dir.path()).unwrap();
    }
}
