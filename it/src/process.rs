//! The process guard every fixture is built on, and the few OS helpers around it.
//!
//! Invariants:
//! - Each server runs in its own process group (`setpgid(0, 0)`), so stopping it reaches
//!   every process it forked (postgres backends, ...).
//! - [`ServerProcess`] is stopped on drop, also during a panic's unwinding: first the
//!   server's own graceful signal to the leader, then after [`STOP_GRACE`] SIGKILL to
//!   the whole group, then the leader is reaped. No zombie and no stray child remains.
//! - Each server gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies even when the test
//!   process is SIGKILLed and no destructor runs. Linux sends that signal when the
//!   *thread* that forked the child exits, not the process; test threads and tokio's
//!   blocking threads come and go, so all servers are forked by one spawner thread
//!   that lives as long as the test process.
//! - A server's stdout and stderr go to one log file; its tail is put into every
//!   start-up error.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{FixtureError, Result};

/// How long a server gets to exit after its graceful stop signal before its whole
/// process group is SIGKILLed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// How many log lines start-up errors include.
const LOG_TAIL_LINES: usize = 30;

/// How often a readiness probe is retried.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// A running server process that is stopped, with its whole process group, when
/// dropped. Fixtures hold one and hand out addresses; tests normally never touch it.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
    stop_signal: libc::c_int,
}

impl ServerProcess {
    /// Spawns `command` as server `name` in a new process group with a parent-death
    /// signal, its stdout and stderr truncating and then appending to `log_path`.
    /// `stop_signal` is the server's graceful (fast) shutdown signal.
    pub fn spawn(
        name: impl Into<String>,
        mut command: Command,
        log_path: &Path,
        stop_signal: libc::c_int,
    ) -> Result<Self> {
        let name = name.into();
        let log = File::create(log_path).map_err(FixtureError::io(format!(
            "creating log {}",
            log_path.display()
        )))?;
        let log_err = log
            .try_clone()
            .map_err(FixtureError::io("duplicating the log file handle"))?;
        let parent = std::process::id();
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        // SAFETY: the closure runs between fork and exec and only makes the
        // async-signal-safe system calls prctl and getppid.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl: then no signal would come.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::other("test process died during spawn"));
                }
                Ok(())
            });
        }
        let child = spawn_from_keeper_thread(command)
            .map_err(FixtureError::io(format!("spawning {name}")))?;
        Ok(ServerProcess {
            name,
            child: Some(child),
            log_path: log_path.to_path_buf(),
            stop_signal,
        })
    }

    /// The server's name as used in errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id of the server (the leader of its process group), or `None` once
    /// it is stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where the server's stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the server's log, for error messages and debugging.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// Polls `probe` until it succeeds, the server exits, or `timeout` passes. The probe
    /// returns a description of what it saw when the server is not ready yet.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        mut probe: impl FnMut() -> std::result::Result<(), String>,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exit_status()? {
                self.child = None;
                return Err(FixtureError::Exited {
                    server: self.name.clone(),
                    status,
                    log: self.log_path.clone(),
                    log_tail: self.log_tail(LOG_TAIL_LINES),
                });
            }
            let last_probe = match probe() {
                Ok(()) => return Ok(()),
                Err(seen) => seen,
            };
            if started.elapsed() >= timeout {
                let err = FixtureError::NotReady {
                    server: self.name.clone(),
                    waited: started.elapsed(),
                    last_probe,
                    log: self.log_path.clone(),
                    log_tail: self.log_tail(LOG_TAIL_LINES),
                };
                self.stop();
                return Err(err);
            }
            thread::sleep(PROBE_INTERVAL);
        }
    }

    /// Whether the server process is still running (not exited, not stopped).
    pub fn is_running(&mut self) -> bool {
        matches!(self.exit_status(), Ok(None)) && self.child.is_some()
    }

    fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.child {
            None => Ok(None),
            Some(child) => child.try_wait().map_err(FixtureError::io(format!(
                "checking whether {} runs",
                self.name
            ))),
        }
    }

    /// Stops the server: its graceful signal, up to [`STOP_GRACE`] to exit, then SIGKILL
    /// to the whole process group, and reaps it. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on a child we spawned and have not reaped yet.
        unsafe { libc::kill(pid, self.stop_signal) };
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => thread::sleep(Duration::from_millis(20)),
            }
        }
        // SAFETY: kill(2) on the process group this server leads; stray members too.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Forks `command` from the one long-lived spawner thread (see the module doc for why).
fn spawn_from_keeper_thread(command: Command) -> io::Result<Child> {
    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static KEEPER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (jobs, incoming) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("paas-it-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("starting the server spawner thread");
        jobs
    });
    let (reply, answer) = mpsc::channel();
    keeper
        .send((command, reply))
        .map_err(|_| io::Error::other("server spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("server spawner thread is gone"))?
}

/// The last `lines` lines of a log file (empty when it cannot be read).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    log_tail_matching(path, lines, |_| true)
}

/// The last `lines` lines of a log file that `keep` accepts (empty when it cannot be
/// read).
pub(crate) fn log_tail_matching(path: &Path, lines: usize, keep: impl Fn(&str) -> bool) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether a start-up failure was a lost race for a port, worth retrying on another.
pub(crate) fn lost_port_race(err: &FixtureError) -> bool {
    match err {
        FixtureError::Exited { log_tail, .. } => log_tail
            .to_ascii_lowercase()
            .contains("address already in use"),
        _ => false,
    }
}

/// Runs `attempt` up to three times while it fails because a port was taken meanwhile.
pub(crate) fn retry_port_races<T>(mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt() {
            Err(err) if tries < 3 && lost_port_race(&err) => continue,
            other => return other,
        }
    }
}

/// Finds `binary` (a name looked up on PATH, or an absolute path), or fails with the
/// command that installs it.
pub fn require_binary(binary: &str, hint: &'static str) -> Result<PathBuf> {
    let missing = || FixtureError::MissingBinary {
        binary: binary.to_string(),
        hint,
    };
    if binary.contains('/') {
        let path = PathBuf::from(binary);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(missing())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
        .ok_or_else(missing)
}

/// Runs a short setup command to completion, failing with its output when it fails.
pub(crate) fn run_setup(mut command: Command) -> Result<()> {
    let line = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(FixtureError::io(format!("running {line}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(FixtureError::Setup {
        command: line,
        status: output.status,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

/// An OS account a server must run as because it refuses to run as root.
#[derive(Debug, Clone)]
pub struct OsUser {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

impl OsUser {
    /// Looks the account up in the user database.
    pub fn lookup(name: &str) -> Result<Self> {
        let c_name =
            std::ffi::CString::new(name).map_err(|_| FixtureError::NoSuchUser(name.into()))?;
        // SAFETY: getpwnam returns a pointer into static storage or null; the fields are
        // copied out before any other call could overwrite it. Fixtures are started from
        // test threads, so concurrent getpwnam calls are serialised below.
        static LOOKUP: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = LOOKUP.lock().unwrap_or_else(|e| e.into_inner());
        unsafe {
            let entry = libc::getpwnam(c_name.as_ptr());
            if entry.is_null() {
                return Err(FixtureError::NoSuchUser(name.into()));
            }
            let home = std::ffi::CStr::from_ptr((*entry).pw_dir);
            Ok(OsUser {
                name: name.to_string(),
                uid: (*entry).pw_uid,
                gid: (*entry).pw_gid,
                home: PathBuf::from(home.to_string_lossy().into_owned()),
            })
        }
    }

    /// Makes `command` run as this user when the test runs as root (what `runuser -u`
    /// does, minus the PAM parent process that would keep the parent-death signal from
    /// reaching the server). As any other user, the command runs as that user.
    pub fn apply(&self, command: &mut Command) {
        if running_as_root() {
            command
                .uid(self.uid)
                .gid(self.gid)
                .env("HOME", &self.home)
                .env("USER", &self.name)
                .env("LOGNAME", &self.name);
        }
    }

    /// Gives `path` to this user when running as root, so the server can write there.
    pub fn chown(&self, path: &Path) -> Result<()> {
        if !running_as_root() {
            return Ok(());
        }
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).map_err(FixtureError::io(
            format!("chown {} to {}", path.display(), self.name),
        ))
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The file in each server dir naming the test process that owns it.
const OWNER_FILE: &str = "owner";

/// Creates the temp dir a server lives in; removed when the returned guard drops.
///
/// A SIGKILLed test process runs no destructor: its servers die (parent-death signal)
/// but their dirs stay. Each dir therefore records its owner (pid and process start
/// time, so a reused pid is not mistaken for the owner), and every new dir first sweeps
/// away `paas-it-*` dirs whose owner is gone.
pub(crate) fn server_dir(server: &str) -> Result<tempfile::TempDir> {
    sweep_orphans(&std::env::temp_dir());
    let dir = tempfile::Builder::new()
        .prefix(&format!("paas-it-{server}-"))
        .tempdir()
        .map_err(FixtureError::io(format!(
            "creating a temp dir for {server}"
        )))?;
    let me = std::process::id();
    let owner = format!("{me} {}", start_time(me).unwrap_or_default());
    std::fs::write(dir.path().join(OWNER_FILE), owner)
        .map_err(FixtureError::io("writing the temp dir's owner file"))?;
    Ok(dir)
}

/// The start time of process `pid` (field 22 of /proc/PID/stat), if it exists.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_name) = stat.rsplit_once(')')?;
    // Fields after the name start at field 3 (state); start time is field 22.
    after_name.split_whitespace().nth(19).map(str::to_string)
}

/// Whether the owner recorded as `pid start_time` is still running. Unreadable or
/// malformed records count as alive: never delete what might be in use.
fn owner_alive(record: &str) -> bool {
    let mut fields = record.split_whitespace();
    let (Some(pid), Some(started)) = (fields.next(), fields.next()) else {
        return true;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return true;
    };
    start_time(pid).as_deref() == Some(started)
}

/// Removes `paas-it-*` dirs under `tmp` whose owner process is gone. Dirs without an
/// owner file are left alone.
fn sweep_orphans(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = entry.file_name().to_string_lossy().starts_with("paas-it-");
        if !is_ours {
            continue;
        }
        match std::fs::read_to_string(path.join(OWNER_FILE)) {
            Ok(record) if !owner_alive(&record) => {
                let _ = std::fs::remove_dir_all(&path);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn exited(log_tail: &str) -> FixtureError {
        FixtureError::Exited {
            server: "etcd".into(),
            status: ExitStatus::from_raw(256),
            log: PathBuf::from("/tmp/x.log"),
            log_tail: log_tail.into(),
        }
    }

    #[test]
    fn only_a_taken_port_is_worth_a_retry() {
        assert!(lost_port_race(&exited(
            "listen tcp 127.0.0.1:4001: bind: address already in use"
        )));
        assert!(lost_port_race(&exited(
            "could not bind IPv4 address \"127.0.0.1\": Address already in use"
        )));
        assert!(!lost_port_race(&exited(
            "FATAL: data directory has wrong ownership"
        )));
        assert!(!lost_port_race(&FixtureError::NoSuchUser(
            "postgres".into()
        )));
    }

    #[test]
    fn retries_port_races_at_most_three_times() {
        let mut attempts = 0;
        let result: Result<()> = retry_port_races(|| {
            attempts += 1;
            Err(exited("address already in use"))
        });
        assert!(result.is_err());
        assert_eq!(attempts, 3);
        let mut attempts = 0;
        let result = retry_port_races(|| {
            attempts += 1;
            if attempts < 2 {
                Err(exited("address already in use"))
            } else {
                Ok(attempts)
            }
        });
        assert_eq!(result.unwrap(), 2);
    }

    #[test]
    fn a_missing_binary_names_the_install_command() {
        let err =
            require_binary("paas-it-no-such-server", "apt-get install -y nothing").unwrap_err();
        assert_eq!(
            err.to_string(),
            "`paas-it-no-such-server` not found on PATH; install it with: apt-get install -y nothing"
        );
        assert!(require_binary("/nonexistent/bin/postgres", "hint").is_err());
        assert!(require_binary("sh", "hint").is_ok());
    }

    #[test]
    fn sweeps_only_dirs_of_dead_owners() {
        let tmp = tempfile::tempdir().unwrap();
        let make = |name: &str, owner: Option<&str>| {
            let dir = tmp.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            if let Some(owner) = owner {
                std::fs::write(dir.join(OWNER_FILE), owner).unwrap();
            }
            dir
        };
        let me = std::process::id();
        let alive = make(
            "paas-it-etcd-a",
            Some(&format!("{me} {}", start_time(me).unwrap())),
        );
        let reused_pid = make("paas-it-etcd-b", Some(&format!("{me} 1")));
        let dead = make("paas-it-etcd-c", Some("4000000 1"));
        let no_owner = make("paas-it-etcd-d", None);
        let not_ours = make("other-e", Some("4000000 1"));
        sweep_orphans(tmp.path());
        assert!(alive.exists() && no_owner.exists() && not_ours.exists());
        assert!(!reused_pid.exists() && !dead.exists());
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "1\n2\n3\n4\n").unwrap();
        assert_eq!(log_tail(&path, 2), "3\n4");
        assert_eq!(log_tail(&dir.path().join("missing"), 2), "");
    }
}
