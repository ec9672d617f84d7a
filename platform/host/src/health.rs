//! Whether a job is exposed in discovery and how its health is checked.
//!
//! [`plan`] is pure: from the process type and the release env it decides. The release
//! env var `PAAS_HEALTHCHECK_<TYPE>` (type upper-cased, `-` -> `_`) selects:
//! `tcp` (connect to the job's port), `http:/path` (GET must answer 2xx/3xx), or `none`
//! (registered in discovery without a check). Without the variable, `web` jobs are
//! exposed with a TCP check and other types are not exposed. Every job still gets `$PORT`.
//! [`probe`] runs one check against `ip:port` with a timeout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A TCP connect to the job's port succeeds.
    Tcp,
    /// `GET <path>` on the job's port answers with a 2xx or 3xx status.
    Http(String),
}

/// How a job is exposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposure {
    /// Not registered in discovery; up as soon as it runs.
    Internal,
    /// Registered in discovery while up; up once `check` (if any) passes.
    Service {
        /// The check, if any.
        check: Option<Check>,
    },
}

/// Why a health check setting was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    /// The env var's value is not `tcp`, `http:/path` or `none`.
    #[error("{var}={value:?}: expected tcp, http:/path or none")]
    Invalid {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
    },
}

/// Name of the env var configuring `process_type`'s check.
pub fn env_var(process_type: &str) -> String {
    format!(
        "PAAS_HEALTHCHECK_{}",
        process_type.to_ascii_uppercase().replace('-', "_")
    )
}

/// Decides the exposure of a job of `process_type` with release env `env`.
pub fn plan(process_type: &str, env: &BTreeMap<String, String>) -> Result<Exposure, HealthError> {
    let var = env_var(process_type);
    let Some(value) = env.get(&var) else {
        return Ok(if process_type == "web" {
            Exposure::Service {
                check: Some(Check::Tcp),
            }
        } else {
            Exposure::Internal
        });
    };
    let check = match value.trim() {
        "tcp" => Some(Check::Tcp),
        "none" => None,
        v => match v.strip_prefix("http:") {
            Some(path) if path.starts_with('/') => Some(Check::Http(path.to_string())),
            _ => {
                return Err(HealthError::Invalid {
                    var,
                    value: value.clone(),
                })
            }
        },
    };
    Ok(Exposure::Service { check })
}

/// Runs `check` once against `addr`; `Err` carries why it failed.
pub async fn probe(check: &Check, addr: SocketAddr) -> Result<(), String> {
    let attempt = async {
        let mut conn = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let Check::Http(path) = check else {
            return Ok(());
        };
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: paas-host\r\n\r\n");
        conn.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let mut head = [0u8; 32];
        let mut n = 0;
        while n < 12 {
            let m = conn
                .read(&mut head[n..])
                .await
                .map_err(|e| format!("GET {path}: {e}"))?;
            if m == 0 {
                break;
            }
            n += m;
        }
        status_ok(&head[..n]).map_err(|e| format!("GET {path}: {e}"))
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {addr} within {PROBE_TIMEOUT:?}")))
}

/// Checks an HTTP status line prefix (`HTTP/1.x NNN`) for a 2xx or 3xx status.
fn status_ok(head: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(head);
    let code = text
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("status {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ptype: &str, value: Option<&str>, expected: Result<Exposure, ()>) {
        let mut env = BTreeMap::new();
        if let Some(v) = value {
            env.insert(env_var(ptype), v.to_string());
        }
        assert_eq!(
            plan(ptype, &env).map_err(|_| ()),
            expected,
            "{ptype} {value:?}"
        );
    }

    #[test]
    fn plans() {
        let svc = |check| Ok(Exposure::Service { check });
        check("web", None, svc(Some(Check::Tcp)));
        check("worker", None, Ok(Exposure::Internal));
        check("worker", Some("tcp"), svc(Some(Check::Tcp)));
        check(
            "api-v2",
            Some("http:/healthz"),
            svc(Some(Check::Http("/healthz".into()))),
        );
        check("web", Some("none"), svc(None));
        check("web", Some("http:"), Err(()));
        check("web", Some("udp"), Err(()));
        assert_eq!(env_var("api-v2"), "PAAS_HEALTHCHECK_API_V2");
    }

    #[test]
    fn status_lines() {
        assert!(status_ok(b"HTTP/1.0 200 OK").is_ok());
        assert!(status_ok(b"HTTP/1.1 302 Found").is_ok());
        assert!(status_ok(b"HTTP/1.1 503 Unavailable").is_err());
        assert!(status_ok(b"SSH-2.0").is_err());
    }

    #[tokio::test]
    async fn probes_a_real_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if req.starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "500 Bad"
                };
                let _ = conn
                    .write_all(format!("HTTP/1.0 {status}\r\n\r\n").as_bytes())
                    .await;
            }
        });
        assert_eq!(probe(&Check::Tcp, addr).await, Ok(()));
        assert_eq!(probe(&Check::Http("/ok".into()), addr).await, Ok(()));
        assert!(probe(&Check::Http("/bad".into()), addr).await.is_err());
        server.abort();
        let closed = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        assert!(probe(&Check::Tcp, closed).await.is_err());
    }
}
