//! Backups of one app database with MariaDB's own tools: `mariadb-dump` streamed to the
//! backup hook's sink, the `mariadb` client fed from its source.
//!
//! Both run as the app's own user through the leader-following endpoint, so a dump holds
//! only what the app may read and a restore can do only what the app may do. That user
//! has `ALL` on its database: SELECT, SHOW VIEW, EVENT and routine ownership are what
//! `mariadb-dump --routines --events` needs (`--no-tablespaces`: listing tablespaces
//! would need PROCESS). Triggers and stored functions: with the binary log on (every
//! cluster member), MariaDB lets only SUPER create them (error 1419), so an app's own
//! database has none; a dump that holds some (made by an operator) is refused by the
//! load step below and nothing changes.
//!
//! Consistency: `--single-transaction` reads every InnoDB table in one `REPEATABLE READ`
//! snapshot (`START TRANSACTION WITH CONSISTENT SNAPSHOT`) without locking writers out,
//! so a dump taken while the app writes holds exactly the transactions committed before
//! it started. Not covered: non-transactional tables (MyISAM, Aria) and DDL run during
//! the dump (an `ALTER TABLE` on a table not yet dumped makes the dump fail or see the
//! new definition). A failover ends the connection, so the dump fails, never mixes
//! servers.
//!
//! Restore, in two steps:
//! 1. *Load*: a scratch database `paas-restore-<random>` (a name no app database can
//!    have: those are `[a-z0-9_]`) is created and granted to the app's user, which
//!    loads the whole dump into it. `DEFINER` clauses are rewritten to `CURRENT_USER`
//!    on the way ([`rewrite_definer`]), so views, procedures and events belong to the
//!    restoring app's user whichever app the dump came from. If the source breaks
//!    (failed verification, store gone) the client is killed; if the server refuses a
//!    statement the client stops; either way the scratch database is dropped and the
//!    app's database was never touched.
//! 2. *Swap*, as the superuser: one `RENAME TABLE` moves every old table out to
//!    `paas-trash-<random>` and every restored table in. That statement is atomic: a
//!    session sees all old tables or all restored ones. Then the old views, routines
//!    and events are dropped, the restored ones are created from the scratch's
//!    definitions, and both helper databases are dropped.
//!
//! What a failure leaves: during the load or the `RENAME`, nothing changed. A failure
//! after it (the server died during the swap) leaves the restored tables in place and
//! possibly some of the restored views, routines or events missing, saying so; running
//! the restore again completes it.

use std::borrow::Cow;
use std::process::Stdio;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row};
use paas_appliance::provider::{BackupInfo, BackupSink, RestoreSource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::provision::{quote_ident, ProviderConfig, ResourceData};
use crate::server::SUPERUSER;

/// The format name recorded in manifests.
pub const FORMAT: &str = "mariadb-dump sql";

/// How long the swap waits for the app's transactions to release its tables.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Where Debian's MariaDB client tools live.
pub const DEFAULT_BIN_DIR: &str = "/usr/bin";

/// Why a dump or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Neither the resource's data nor its environment holds its user's password.
    #[error("resource {0} records no password for its user, in its data or its environment; add a new resource to back it up")]
    NoPassword(String),
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
    /// Reading the dump from the source failed; the client was stopped and the app's
    /// database was not touched.
    #[error("reading the dump: {0}; nothing was restored")]
    Source(std::io::Error),
    /// A statement of the superuser's failed before the swap: nothing was changed.
    #[error("mariadb: {0}; nothing was restored")]
    Before(mysql_async::Error),
    /// A statement failed after the tables were swapped in.
    #[error("mariadb: {0}; the restored tables are in place but some triggers, views, routines or events may be missing: run the restore again")]
    After(mysql_async::Error),
    /// Talking to the tool's pipes failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The client tools and how they reach the cluster.
#[derive(Debug, Clone)]
pub struct Tools {
    bin_dir: std::path::PathBuf,
    config: ProviderConfig,
}

impl Tools {
    /// Tools in `bin_dir` reaching the cluster as `config` says.
    pub fn new(bin_dir: &std::path::Path, config: ProviderConfig) -> Self {
        Tools {
            bin_dir: bin_dir.to_path_buf(),
            config,
        }
    }

    /// A client tool logged in as `data`'s user (password in the environment, not on
    /// the command line; `--no-defaults` first so no option file is read).
    fn command(&self, tool: &str, data: &ResourceData) -> Result<Command, DumpError> {
        let password = data
            .password
            .as_deref()
            .ok_or_else(|| DumpError::NoPassword(data.database.clone()))?;
        let mut cmd = Command::new(self.bin_dir.join(tool));
        cmd.arg("--no-defaults")
            .args(["-h", &self.config.host])
            .args(["-P", &self.config.port.to_string()])
            .args(["-u", &data.user])
            .arg("--protocol=TCP")
            .arg("--default-character-set=utf8mb4")
            .env("MYSQL_PWD", password)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(cmd)
    }

    fn spawn(&self, mut cmd: Command, tool: &str) -> Result<Child, DumpError> {
        cmd.spawn().map_err(|source| DumpError::Spawn {
            tool: self.bin_dir.join(tool).display().to_string(),
            source,
        })
    }

    /// `mariadb-dump --version`.
    pub async fn version(&self) -> Result<String, DumpError> {
        let tool = self.bin_dir.join("mariadb-dump");
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

    /// Streams a consistent dump of `data.database` into `sink`.
    pub async fn dump(
        &self,
        data: &ResourceData,
        sink: BackupSink<'_>,
    ) -> Result<BackupInfo, DumpError> {
        let version = self.version().await?;
        let mut cmd = self.command("mariadb-dump", data)?;
        cmd.args([
            "--single-transaction",
            "--routines",
            "--triggers",
            "--events",
            "--no-tablespaces",
            "--hex-blob",
        ])
        .arg(&data.database)
        .stdout(Stdio::piped());
        let mut child = self.spawn(cmd, "mariadb-dump")?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let stderr = collect(child.stderr.take().expect("stderr is piped"));
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = stdout.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if let Err(e) = sink.write_all(&buf[..n]).await {
                let _ = child.kill().await;
                return Err(DumpError::Sink(e));
            }
        }
        let status = child.wait().await?;
        if !status.success() {
            return Err(DumpError::Tool {
                tool: "mariadb-dump",
                status,
                stderr: stderr.await.unwrap_or_default(),
            });
        }
        Ok(BackupInfo {
            engine: "mariadb".into(),
            version,
            format: FORMAT.into(),
        })
    }

    /// Replaces `data.database`'s contents with the dump read from `source` (see the
    /// module doc for the two steps and what a failure leaves).
    pub async fn restore(
        &self,
        data: &ResourceData,
        source: RestoreSource<'_>,
    ) -> Result<(), DumpError> {
        if data.password.is_none() {
            return Err(DumpError::NoPassword(data.database.clone()));
        }
        let suffix = hex::encode(rand::random::<[u8; 8]>());
        let scratch = format!("paas-restore-{suffix}");
        let trash = format!("paas-trash-{suffix}");
        let mut admin = self.admin().await.map_err(DumpError::Before)?;
        let user = format!("{}@'%'", crate::server::quote(&data.user));
        admin
            .query_drop(format!("CREATE DATABASE {}", quote_ident(&scratch)))
            .await
            .map_err(DumpError::Before)?;
        let loaded = async {
            admin
                .query_drop(format!(
                    "GRANT ALL PRIVILEGES ON {}.* TO {user}",
                    quote_ident(&scratch)
                ))
                .await
                .map_err(DumpError::Before)?;
            self.load(data, &scratch, source).await
        }
        .await;
        let swapped = match loaded {
            Ok(()) => swap(&mut admin, &data.database, &scratch, &trash).await,
            Err(e) => Err(e),
        };
        // The scratch database holds the restored tables only until the swap, the trash
        // the old ones after it; neither is needed once the restore ended either way.
        let _ = admin
            .query_drop(format!(
                "REVOKE ALL PRIVILEGES ON {}.* FROM {user}",
                quote_ident(&scratch)
            ))
            .await;
        for db in [&scratch, &trash] {
            if let Err(e) = admin
                .query_drop(format!("DROP DATABASE IF EXISTS {}", quote_ident(db)))
                .await
            {
                tracing::warn!(database = %db, error = %e, "dropping a restore's helper database failed");
            }
        }
        swapped
    }

    /// Step 1: the dump into `scratch` as the app's user, definers rewritten.
    async fn load(
        &self,
        data: &ResourceData,
        scratch: &str,
        source: RestoreSource<'_>,
    ) -> Result<(), DumpError> {
        let mut cmd = self.command("mariadb", data)?;
        cmd.args(["--batch", "--connect-timeout=10"])
            .arg(format!("--database={scratch}"))
            .stdin(Stdio::piped());
        let mut child = self.spawn(cmd, "mariadb")?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let stderr = collect(child.stderr.take().expect("stderr is piped"));
        match feed(source, &mut stdin).await {
            Feed::Done => drop(stdin),
            Feed::SourceFailed(e) => {
                let _ = child.kill().await;
                return Err(DumpError::Source(e));
            }
            Feed::ToolClosed => drop(stdin),
        }
        let status = child.wait().await?;
        if !status.success() {
            return Err(DumpError::Tool {
                tool: "mariadb",
                status,
                stderr: stderr.await.unwrap_or_default(),
            });
        }
        Ok(())
    }

    async fn admin(&self) -> Result<Conn, mysql_async::Error> {
        let opts = OptsBuilder::default()
            .ip_or_hostname(self.config.host.clone())
            .tcp_port(self.config.port)
            .user(Some(SUPERUSER))
            .pass(Some(self.config.superuser_password.clone()))
            .prefer_socket(false);
        match tokio::time::timeout(Duration::from_secs(10), Conn::new(opts)).await {
            Ok(conn) => conn,
            Err(_) => Err(mysql_async::Error::Io(mysql_async::IoError::Io(
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            ))),
        }
    }
}

/// An object to create again after the swap: its `SHOW CREATE` statement and the
/// session settings it was created under.
struct Definition {
    sql: String,
    sql_mode: String,
    charset: String,
    collation: String,
}

/// What one database holds besides its tables' rows.
struct Objects {
    tables: Vec<String>,
    views: Vec<String>,
    /// (`PROCEDURE` | `FUNCTION`, name).
    routines: Vec<(String, String)>,
    events: Vec<String>,
}

async fn objects(c: &mut Conn, db: &str) -> Result<Objects, mysql_async::Error> {
    let tables = c
        .exec(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE <> 'VIEW' ORDER BY TABLE_NAME",
            (db,),
        )
        .await?;
    let views = c
        .exec(
            "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME",
            (db,),
        )
        .await?;
    let routines = c
        .exec(
            "SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ?",
            (db,),
        )
        .await?;
    let events = c
        .exec(
            "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ?",
            (db,),
        )
        .await?;
    Ok(Objects {
        tables,
        views,
        routines,
        events,
    })
}

/// `SHOW CREATE <kind> db.name`, with the columns that hold the statement and settings.
async fn show_create(
    c: &mut Conn,
    kind: &str,
    db: &str,
    name: &str,
) -> Result<Definition, mysql_async::Error> {
    let row: Option<Row> = c
        .query_first(format!(
            "SHOW CREATE {kind} {}.{}",
            quote_ident(db),
            quote_ident(name)
        ))
        .await?;
    let row = row.ok_or_else(|| {
        mysql_async::Error::Other(format!("SHOW CREATE {kind} {name} returned nothing").into())
    })?;
    let column = |wanted: &str| -> String {
        row.columns_ref()
            .iter()
            .position(|c| c.name_str().eq_ignore_ascii_case(wanted))
            .and_then(|i| row.as_ref(i))
            .map(|v| match v {
                mysql_async::Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                other => other.as_sql(true),
            })
            .unwrap_or_default()
    };
    let statement = match kind {
        "VIEW" => "Create View",
        "PROCEDURE" => "Create Procedure",
        "FUNCTION" => "Create Function",
        _ => "Create Event",
    };
    Ok(Definition {
        sql: column(statement),
        sql_mode: column("sql_mode"),
        charset: column("character_set_client"),
        collation: column("collation_connection"),
    })
}

async fn create(c: &mut Conn, db: &str, def: &Definition) -> Result<(), mysql_async::Error> {
    c.query_drop(format!("USE {}", quote_ident(db))).await?;
    c.exec_drop("SET SESSION sql_mode = ?", (def.sql_mode.as_str(),))
        .await?;
    if !def.charset.is_empty() {
        c.query_drop(format!(
            "SET SESSION character_set_client = {}, collation_connection = {}",
            crate::server::quote(&def.charset),
            crate::server::quote(&def.collation)
        ))
        .await?;
    }
    c.query_drop(&def.sql).await
}

/// Step 2: the restored tables in, the old ones out in one `RENAME TABLE`, then the
/// restored views, routines and events.
async fn swap(c: &mut Conn, db: &str, scratch: &str, trash: &str) -> Result<(), DumpError> {
    let old = objects(c, db).await.map_err(DumpError::Before)?;
    let new = objects(c, scratch).await.map_err(DumpError::Before)?;
    let mut routines = Vec::new();
    for (kind, name) in &new.routines {
        routines.push(
            show_create(c, kind, scratch, name)
                .await
                .map_err(DumpError::Before)?,
        );
    }
    let mut events = Vec::new();
    for name in &new.events {
        events.push(
            show_create(c, "EVENT", scratch, name)
                .await
                .map_err(DumpError::Before)?,
        );
    }
    let mut views = Vec::new();
    for name in &new.views {
        let mut def = show_create(c, "VIEW", scratch, name)
            .await
            .map_err(DumpError::Before)?;
        // A view's definition names its tables with the database it was created in.
        def.sql = def.sql.replace(
            &format!("{}.", quote_ident(scratch)),
            &format!("{}.", quote_ident(db)),
        );
        views.push(def);
    }
    c.query_drop(format!("CREATE DATABASE {}", quote_ident(trash)))
        .await
        .map_err(DumpError::Before)?;
    let renames: Vec<String> = old
        .tables
        .iter()
        .map(|t| rename(db, t, trash))
        .chain(new.tables.iter().map(|t| rename(scratch, t, db)))
        .collect();
    if !renames.is_empty() {
        // A transaction of the app holding a table waits the rename out; a long one
        // fails the restore (nothing changed) rather than stalling it for good.
        c.query_drop(format!(
            "SET SESSION lock_wait_timeout = {}",
            LOCK_WAIT.as_secs()
        ))
        .await
        .map_err(DumpError::Before)?;
        c.query_drop(format!("RENAME TABLE {}", renames.join(", ")))
            .await
            .map_err(DumpError::Before)?;
    }
    let after = async {
        for name in &old.views {
            c.query_drop(format!(
                "DROP VIEW IF EXISTS {}.{}",
                quote_ident(db),
                quote_ident(name)
            ))
            .await?;
        }
        for (kind, name) in &old.routines {
            c.query_drop(format!(
                "DROP {kind} IF EXISTS {}.{}",
                quote_ident(db),
                quote_ident(name)
            ))
            .await?;
        }
        for name in &old.events {
            c.query_drop(format!(
                "DROP EVENT IF EXISTS {}.{}",
                quote_ident(db),
                quote_ident(name)
            ))
            .await?;
        }
        for def in &routines {
            create(c, db, def).await?;
        }
        create_views(c, db, &views).await?;
        for def in &events {
            create(c, db, def).await?;
        }
        Ok::<_, mysql_async::Error>(())
    }
    .await;
    after.map_err(DumpError::After)
}

/// Views may select from other views: create them in passes until all exist or a pass
/// makes no progress (then the first error is the answer).
async fn create_views(
    c: &mut Conn,
    db: &str,
    views: &[Definition],
) -> Result<(), mysql_async::Error> {
    let mut left: Vec<&Definition> = views.iter().collect();
    while !left.is_empty() {
        let mut failed = Vec::new();
        let mut first_error = None;
        for def in &left {
            if let Err(e) = create(c, db, def).await {
                first_error.get_or_insert(e);
                failed.push(*def);
            }
        }
        if failed.len() == left.len() {
            return Err(first_error.expect("a view failed"));
        }
        left = failed;
    }
    Ok(())
}

fn rename(from_db: &str, table: &str, to_db: &str) -> String {
    format!(
        "{}.{} TO {}.{}",
        quote_ident(from_db),
        quote_ident(table),
        quote_ident(to_db),
        quote_ident(table)
    )
}

/// Rewrites every `` DEFINER=`user`@`host` `` of one line of a `mariadb-dump` file to
/// `DEFINER=CURRENT_USER`, so the objects belong to whoever loads the dump. Row data
/// lines (`INSERT INTO`) are returned as they are: the dump writes each row statement
/// on one line and definers never on one.
pub fn rewrite_definer(line: &[u8]) -> Cow<'_, [u8]> {
    const KEY: &[u8] = b"DEFINER=`";
    if line.starts_with(b"INSERT INTO ") || !contains(line, KEY) {
        return Cow::Borrowed(line);
    }
    let mut out = Vec::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = find(rest, KEY) {
        out.extend_from_slice(&rest[..at]);
        let after = &rest[at + KEY.len() - 1..];
        // `user`@`host`, each backquoted with doubled backquotes inside.
        match quoted(after).and_then(|n| {
            let tail = &after[n..];
            tail.strip_prefix(b"@").and_then(quoted).map(|m| n + 1 + m)
        }) {
            Some(len) => {
                out.extend_from_slice(b"DEFINER=CURRENT_USER");
                rest = &after[len..];
            }
            None => {
                out.extend_from_slice(&rest[at..at + KEY.len()]);
                rest = &rest[at + KEY.len()..];
            }
        }
    }
    out.extend_from_slice(rest);
    Cow::Owned(out)
}

/// The length of the backquoted identifier at the start of `s`, if there is one.
fn quoted(s: &[u8]) -> Option<usize> {
    if s.first() != Some(&b'`') {
        return None;
    }
    let mut i = 1;
    while i < s.len() {
        if s[i] == b'`' {
            if s.get(i + 1) == Some(&b'`') {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

/// How feeding the client ended.
enum Feed {
    /// The whole source was written.
    Done,
    /// The source failed to read.
    SourceFailed(std::io::Error),
    /// The client closed its input (it exited).
    ToolClosed,
}

/// Copies `source` to the client line by line through [`rewrite_definer`].
async fn feed(source: RestoreSource<'_>, stdin: &mut tokio::process::ChildStdin) -> Feed {
    let mut buf = vec![0u8; 256 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match source.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Feed::SourceFailed(e),
        };
        pending.extend_from_slice(&buf[..n]);
        let Some(last_newline) = pending.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let mut out = Vec::with_capacity(last_newline + 1);
        for line in pending[..=last_newline].split_inclusive(|b| *b == b'\n') {
            out.extend_from_slice(&rewrite_definer(line));
        }
        pending.drain(..=last_newline);
        if stdin.write_all(&out).await.is_err() {
            return Feed::ToolClosed;
        }
    }
    if !pending.is_empty() && stdin.write_all(&rewrite_definer(&pending)).await.is_err() {
        return Feed::ToolClosed;
    }
    Feed::Done
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, expected: &str) {
        assert_eq!(
            String::from_utf8_lossy(&rewrite_definer(line.as_bytes())),
            expected
        );
    }

    #[test]
    fn definers_become_the_loading_user() {
        check(
            "/*!50003 CREATE*/ /*!50017 DEFINER=`shop_r1`@`%`*/ /*!50003 TRIGGER t BEFORE INSERT ON a FOR EACH ROW SET NEW.v = 1 */;;\n",
            "/*!50003 CREATE*/ /*!50017 DEFINER=CURRENT_USER*/ /*!50003 TRIGGER t BEFORE INSERT ON a FOR EACH ROW SET NEW.v = 1 */;;\n",
        );
        check(
            "CREATE DEFINER=`we``ird`@`local``host` PROCEDURE `p`()\n",
            "CREATE DEFINER=CURRENT_USER PROCEDURE `p`()\n",
        );
        check(
            "/*!50013 DEFINER=`a`@`%` SQL SECURITY DEFINER */\n",
            "/*!50013 DEFINER=CURRENT_USER SQL SECURITY DEFINER */\n",
        );
    }

    #[test]
    fn rows_and_odd_text_are_left_alone() {
        let row = "INSERT INTO `t` VALUES (1,'DEFINER=`x`@`y`');\n";
        check(row, row);
        assert!(matches!(rewrite_definer(row.as_bytes()), Cow::Borrowed(_)));
        check("-- DEFINER=`unterminated\n", "-- DEFINER=`unterminated\n");
        check("DEFINER=`a` alone\n", "DEFINER=`a` alone\n");
    }
}
