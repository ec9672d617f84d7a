//! An S3-compatible server: `moto_server` on a free port.
//!
//! Ready means `GET /` answers 200 (moto's ListBuckets). Requests need no real
//! signature: any access key works; [`S3Server::access_key_id`] and friends give the
//! conventional fake ones. Buckets are created with a plain unsigned `PUT /<bucket>`
//! (object_store cannot create buckets).
//!
//! Persistence: moto keeps everything in memory. moto 5.x has no on-disk store; its
//! "recorder" (`MOTO_RECORDER_FILEPATH`, `/moto-api/recorder/...`) only logs requests
//! for a later replay, which is not the same as durable state. So
//! [`S3Server::stop`] + [`S3Server::restart`] (same port, for "the sink is down for a
//! while" tests) brings back an empty server; `restart` re-creates every bucket made
//! through [`S3Server::create_bucket`], but objects written before the stop are gone.
//! Tests should read back what they need before stopping the server.
//!
//! HTTPS: [`S3Server::start_tls`] puts a [`TlsFront`] before moto (`https://localhost:PORT`
//! and its CA file, [`S3Server::tls`]), for clients that speak only HTTPS (pgBackRest;
//! `moto_server --ssl` fails every pgBackRest upload). Its `refuse` is the better "S3 is
//! down": moto keeps its data.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{FixtureError, Result};
use crate::http;
use crate::port::free_port;
use crate::process::{require_binary, retry_port_races, server_dir, ServerProcess};
use crate::tls_front::TlsFront;

/// How long moto gets to answer (it is a Python server; the first start imports a lot).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str = "pip install 'moto[server]'";

/// A running moto S3 server, stopped and its temp dir deleted on drop.
#[derive(Debug)]
pub struct S3Server {
    // Field order matters: the front stops first, the process before its directory is
    // removed.
    tls: Option<TlsFront>,
    process: ServerProcess,
    port: u16,
    buckets: Mutex<Vec<String>>,
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts `moto_server` and waits until it answers.
    pub fn start() -> Result<Self> {
        require_binary("moto_server", INSTALL_HINT)?;
        let dir = server_dir("s3")?;
        let (process, port) = retry_port_races(|| {
            let port = free_port()?;
            Ok((launch(dir.path(), port)?, port))
        })?;
        Ok(S3Server {
            tls: None,
            process,
            port,
            buckets: Mutex::new(Vec::new()),
            dir,
        })
    }

    /// [`S3Server::start`] with a TLS terminator in front ([`S3Server::tls`]).
    pub fn start_tls() -> Result<Self> {
        let mut server = S3Server::start()?;
        server.tls = Some(TlsFront::start(server.port)?);
        Ok(server)
    }

    /// The TLS terminator of a server made by [`S3Server::start_tls`]: its
    /// `endpoint()` (`https://localhost:PORT`), `ca_file()`, `refuse()` and `accept()`.
    pub fn tls(&self) -> Option<&TlsFront> {
        self.tls.as_ref()
    }

    /// The endpoint URL for S3 clients, e.g. `http://127.0.0.1:PORT` (object_store:
    /// `with_endpoint(..)` and `with_allow_http(true)`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The region to configure clients with.
    pub fn region(&self) -> &'static str {
        "us-east-1"
    }

    /// A fake access key id (moto accepts any).
    pub fn access_key_id(&self) -> &'static str {
        "testing"
    }

    /// A fake secret access key (moto accepts any).
    pub fn secret_access_key(&self) -> &'static str {
        "testing"
    }

    /// The `AWS_*` variables that point a process at this server (`paas up
    /// --backup-store s3://...`): the endpoint (the TLS front's, with its CA in
    /// `AWS_CA_BUNDLE`, when there is one), the keys and the region.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("AWS_ACCESS_KEY_ID", self.access_key_id().to_string()),
            (
                "AWS_SECRET_ACCESS_KEY",
                self.secret_access_key().to_string(),
            ),
            ("AWS_DEFAULT_REGION", self.region().to_string()),
        ];
        match &self.tls {
            Some(front) => {
                env.push(("AWS_ENDPOINT_URL", front.endpoint()));
                env.push(("AWS_CA_BUNDLE", front.ca_file().display().to_string()));
            }
            None => env.push(("AWS_ENDPOINT_URL", self.endpoint())),
        }
        env
    }

    /// The server process (pid, log).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }

    /// Creates bucket `name` with an unsigned `PUT /<name>`; remembered so that
    /// [`S3Server::restart`] creates it again.
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        put_bucket(self.port, name)?;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.iter().any(|b| b == name) {
            buckets.push(name.to_string());
        }
        Ok(())
    }

    /// The object keys in `bucket` (unsigned `ListObjectsV2`, one page: up to 1,000).
    pub fn keys(&self, bucket: &str) -> Result<Vec<String>> {
        let body = get(self.port, &format!("/{bucket}?list-type=2"))?;
        Ok(elements(&body, "Key"))
    }

    /// The object keys in `bucket` that start with `prefix` (one page: up to 1,000).
    /// `prefix` goes in the query as it is: letters, digits and `/ - _ .` only.
    pub fn keys_under(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let body = get(self.port, &format!("/{bucket}?list-type=2&prefix={prefix}"))?;
        Ok(elements(&body, "Key"))
    }

    /// How many multipart uploads `bucket` holds open (neither completed nor aborted).
    pub fn open_uploads(&self, bucket: &str) -> Result<usize> {
        let body = get(self.port, &format!("/{bucket}?uploads"))?;
        Ok(body.matches("<Upload>").count())
    }

    /// Stops the server; connections to its port are refused until [`S3Server::restart`].
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts the server again on the same port, waits until it answers, and re-creates
    /// the buckets made through [`S3Server::create_bucket`] (empty: moto keeps no data
    /// across restarts, see the module doc).
    pub fn restart(&mut self) -> Result<()> {
        self.process.stop();
        self.process = launch(self.dir.path(), self.port)?;
        let buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for bucket in buckets {
            put_bucket(self.port, &bucket)?;
        }
        Ok(())
    }
}

fn put_bucket(port: u16, name: &str) -> Result<()> {
    let what = || format!("creating bucket {name}");
    let answer = http::request(port, "PUT", &format!("/{name}")).map_err(|answer| {
        FixtureError::Request {
            what: what(),
            answer,
        }
    })?;
    if answer.status == 200 {
        Ok(())
    } else {
        Err(FixtureError::Request {
            what: what(),
            answer: format!("{} {}", answer.status, answer.body.trim()),
        })
    }
}

/// The body of an unsigned `GET path` answered 200.
fn get(port: u16, path: &str) -> Result<String> {
    let what = || format!("GET {path}");
    let answer = http::request(port, "GET", path).map_err(|answer| FixtureError::Request {
        what: what(),
        answer,
    })?;
    if answer.status == 200 {
        Ok(answer.body)
    } else {
        Err(FixtureError::Request {
            what: what(),
            answer: format!("{} {}", answer.status, answer.body.trim()),
        })
    }
}

/// The texts of every `<tag>...</tag>` in `xml`, in order.
fn elements(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(open.as_str())
        .skip(1)
        .filter_map(|s| s.split(close.as_str()).next())
        .map(str::to_string)
        .collect()
}

fn launch(dir: &Path, port: u16) -> Result<ServerProcess> {
    let mut command = Command::new("moto_server");
    command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let mut process =
        ServerProcess::spawn("moto_server", command, &dir.join("moto.log"), libc::SIGTERM)?;
    process.wait_ready(READY_TIMEOUT, || {
        let answer = http::request(port, "GET", "/")?;
        if answer.status == 200 {
            Ok(())
        } else {
            Err(format!("GET /: {}", answer.status))
        }
    })?;
    Ok(process)
}

#[cfg(test)]
mod tests {
    use super::elements;

    #[test]
    fn reads_elements_in_order() {
        let xml = "<R><Contents><Key>a/1</Key></Contents><Contents><Key>b</Key></Contents></R>";
        assert_eq!(elements(xml, "Key"), vec!["a/1", "b"]);
        assert!(elements("<R/>", "Key").is_empty());
    }
}
