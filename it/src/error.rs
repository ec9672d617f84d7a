//! The one error type of the harness: every way a fixture can fail to give a test a
//! running server. Messages are meant to be read in a failed test's output, so they
//! carry the install hint or the tail of the server's log.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a fixture could not start, probe or stop a server.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// A server or tool binary is neither on PATH nor at its known location.
    #[error("`{binary}` not found on PATH; install it with: {hint}")]
    MissingBinary {
        /// The binary that was looked for.
        binary: String,
        /// The command that installs it on Debian.
        hint: &'static str,
    },
    /// A file-system or process operation failed (creating the temp dir, spawning, chown...).
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A setup command (initdb, mariadb-install-db...) exited unsuccessfully.
    #[error("`{command}` failed with {status}:\n{output}")]
    Setup {
        /// The command line that was run.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its stdout and stderr.
        output: String,
    },
    /// The server process exited before it became ready.
    #[error("{server} exited with {status} before it was ready; log {log}:\n{log_tail}")]
    Exited {
        /// Which server.
        server: String,
        /// Its exit status.
        status: ExitStatus,
        /// Where its full log is (removed with the temp dir).
        log: PathBuf,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The server kept running but did not answer its readiness probe in time.
    #[error(
        "{server} not ready after {waited:?}; last probe: {last_probe}; log {log}:\n{log_tail}"
    )]
    NotReady {
        /// Which server.
        server: String,
        /// How long the harness waited.
        waited: Duration,
        /// What the last probe attempt saw.
        last_probe: String,
        /// Where its full log is (removed with the temp dir).
        log: PathBuf,
        /// The last lines of its log.
        log_tail: String,
    },
    /// An OS user the server must run as (postgres, mysql) does not exist.
    #[error("OS user `{0}` does not exist; it is created by the server's Debian package")]
    NoSuchUser(String),
    /// A request made by a helper (e.g. creating a bucket) got an unexpected answer.
    #[error("{what}: unexpected answer: {answer}")]
    Request {
        /// What the helper was doing.
        what: String,
        /// The status line and body, or the transport error.
        answer: String,
    },
    /// A test certificate or TLS configuration could not be made.
    #[error("TLS setup: {0}")]
    Tls(String),
}

impl FixtureError {
    /// Wraps an I/O error with what the harness was doing.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| FixtureError::Io { what, source }
    }
}

/// Result alias used across the harness.
pub type Result<T, E = FixtureError> = std::result::Result<T, E>;
