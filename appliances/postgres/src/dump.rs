//! Backups of one app database with PostgreSQL's own tools: `pg_dump -Fc` streamed to the
//! backup hook's sink, `pg_restore --single-transaction --clean --if-exists` fed from its
//! source.
//!
//! Both run as the `postgres` superuser through the leader-following endpoint, like
//! provisioning. A failover during a dump ends pg_dump's connection, so the dump fails
//! rather than mixing two servers' data (pg_dump reads one snapshot). A restore is one
//! transaction: if the source breaks (verification failed, the store went away) or the
//! server refuses a statement, pg_restore is killed or exits before `COMMIT` and the
//! database is unchanged. Restored objects are owned by the target resource's role
//! (`--no-owner --role`), and grants are not restored (`--no-privileges`), so a dump of
//! one app's database can be loaded into another app's.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use paas_appliance::provider::{BackupInfo, BackupSink, RestoreSource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::provision::{ProviderConfig, ResourceData};

/// Where Debian's PostgreSQL 15 client tools live.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The format name recorded in manifests.
pub const FORMAT: &str = "pg_dump custom";

/// Why a dump or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The tool could not be started (missing binary).
    #[error("starting {tool}: {source}")]
    Spawn {
        /// The tool's path.
        tool: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The tool exited with an error; its stderr says why.
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        /// The tool's name.
        tool: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The last of its stderr.
        stderr: String,
    },
    /// Writing the dump to the sink failed; the dump is incomplete.
    #[error("writing the dump: {0}")]
    Sink(std::io::Error),
    /// Reading the dump from the source failed; pg_restore was stopped before commit.
    #[error("reading the dump: {0}; nothing was restored")]
    Source(std::io::Error),
    /// Talking to the tool's pipes failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The client tools and how they reach the cluster.
#[derive(Debug, Clone)]
pub struct Tools {
    bin_dir: PathBuf,
    config: ProviderConfig,
}

impl Tools {
    /// Tools in `bin_dir` reaching the cluster as `config` says.
    pub fn new(bin_dir: &Path, config: ProviderConfig) -> Self {
        Tools {
            bin_dir: bin_dir.to_path_buf(),
            config,
        }
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(tool));
        cmd.args(["-h", &self.config.host])
            .args(["-p", &self.config.port.to_string()])
            .args(["-U", "postgres"])
            .env("PGPASSWORD", &self.config.superuser_password)
            .env("PGAPPNAME", "paas-backup")
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    fn spawn(&self, mut cmd: Command, tool: &str) -> Result<Child, DumpError> {
        cmd.spawn().map_err(|source| DumpError::Spawn {
            tool: self.bin_dir.join(tool).display().to_string(),
            source,
        })
    }

    /// `pg_dump --version`, e.g. `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
    pub async fn version(&self) -> Result<String, DumpError> {
        let tool = self.bin_dir.join("pg_dump");
        let out = Command::new(&tool)
            .arg("--version")
            .output()
            .await
            .map_err(|source| DumpError::Spawn {
                tool: tool.display().to_string(),
                source,
            })?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Streams `pg_dump -Fc` of `data.database` into `sink`.
    pub async fn dump(
        &self,
        data: &ResourceData,
        sink: BackupSink<'_>,
    ) -> Result<BackupInfo, DumpError> {
        let version = self.version().await?;
        let mut cmd = self.command("pg_dump");
        cmd.args(["-Fc", "-d", &data.database])
            .stdout(Stdio::piped());
        let mut child = self.spawn(cmd, "pg_dump")?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let stderr = collect(child.stderr.take().expect("stderr is piped"));
        let copied = copy_to_sink(&mut stdout, sink).await;
        if let Err(e) = copied {
            let _ = child.kill().await;
            return Err(e);
        }
        let status = child.wait().await?;
        if !status.success() {
            return Err(DumpError::Tool {
                tool: "pg_dump",
                status,
                stderr: stderr.await.unwrap_or_default(),
            });
        }
        Ok(BackupInfo {
            engine: "postgres".into(),
            version,
            format: FORMAT.into(),
        })
    }

    /// Feeds `source` to `pg_restore` into `data.database` in one transaction, as
    /// `data.role`. A read error from `source` kills pg_restore before it can commit.
    pub async fn restore(
        &self,
        data: &ResourceData,
        source: RestoreSource<'_>,
    ) -> Result<(), DumpError> {
        let mut cmd = self.command("pg_restore");
        cmd.args([
            "--single-transaction",
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-privileges",
        ])
        .arg(format!("--role={}", data.role))
        .args(["-d", &data.database])
        .stdin(Stdio::piped());
        let mut child = self.spawn(cmd, "pg_restore")?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let stderr = collect(child.stderr.take().expect("stderr is piped"));
        match feed(source, &mut stdin).await {
            Feed::Done => {
                drop(stdin);
            }
            Feed::SourceFailed(e) => {
                // Killed while its input is still open: pg_restore has not read the end
                // of the dump, so it has not committed; the transaction is rolled back.
                let _ = child.kill().await;
                return Err(DumpError::Source(e));
            }
            Feed::ToolClosed => {
                // pg_restore stopped reading: it failed; its status and stderr say why.
                drop(stdin);
            }
        }
        let status = child.wait().await?;
        if !status.success() {
            return Err(DumpError::Tool {
                tool: "pg_restore",
                status,
                stderr: stderr.await.unwrap_or_default(),
            });
        }
        Ok(())
    }
}

/// Copies the tool's output into the sink; a sink error is [`DumpError::Sink`].
async fn copy_to_sink(
    stdout: &mut tokio::process::ChildStdout,
    sink: BackupSink<'_>,
) -> Result<(), DumpError> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = stdout.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        sink.write_all(&buf[..n]).await.map_err(DumpError::Sink)?;
    }
}

/// How feeding pg_restore ended.
enum Feed {
    /// The whole source was written.
    Done,
    /// The source failed to read.
    SourceFailed(std::io::Error),
    /// pg_restore closed its input (it exited).
    ToolClosed,
}

async fn feed(source: RestoreSource<'_>, stdin: &mut tokio::process::ChildStdin) -> Feed {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match source.read(&mut buf).await {
            Ok(0) => return Feed::Done,
            Ok(n) => n,
            Err(e) => return Feed::SourceFailed(e),
        };
        if stdin.write_all(&buf[..n]).await.is_err() {
            return Feed::ToolClosed;
        }
    }
}

/// Reads a tool's stderr in the background, keeping its last 4 KiB.
fn collect(mut stderr: tokio::process::ChildStderr) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if all.len() > 4096 {
                all.drain(..all.len() - 4096);
            }
        }
        String::from_utf8_lossy(&all).trim().to_string()
    })
}
