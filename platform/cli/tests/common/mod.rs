//! What the end-to-end tests share: the real `paas` binary in a temp HOME, with its data
//! dir at `HOME/data`, and `paas up` as a child that is stopped even when a test panics.

#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// A temporary HOME for `paas up` whose data dir jobs can reach: jobs run as their own
/// users and must traverse every parent of their working directory (a plain temp dir is
/// 0700).
pub fn home() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

/// The binary under test.
pub const PAAS: &str = env!("CARGO_BIN_EXE_paas");

/// A child `paas` daemon, SIGTERMed (then reaped) when dropped.
pub struct Daemon(pub Child);

impl Daemon {
    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, signal) };
    }

    /// SIGTERM, and the daemon must exit successfully.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = self.0.wait().unwrap();
        assert!(status.success(), "paas exited with {status}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.signal(libc::SIGTERM);
            let _ = self.0.wait();
        }
    }
}

/// `paas` with `HOME` and the data dir in `home`, and no outside configuration.
pub fn base(home: &Path) -> Command {
    let mut cmd = Command::new(PAAS);
    cmd.env("HOME", home)
        .env("PAAS_DATA_DIR", home.join("data"))
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .env_remove("PAAS_URL")
        .env_remove("PAAS_TOKEN")
        .env_remove("PAAS_APP");
    cmd
}

/// Runs a client command.
pub fn paas(home: &Path, args: &[&str]) -> Output {
    base(home).args(args).output().unwrap()
}

/// Its stdout; it must have succeeded.
pub fn ok(out: Output) -> String {
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// It must have failed with `needle` in its message.
pub fn fails(out: Output, needle: &str) {
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "should have failed");
    assert!(
        stderr.contains(needle),
        "stderr {stderr:?} lacks {needle:?}"
    );
}

/// Starts `paas up --listen LISTEN ARGS...` (log inputs and router on free ports and no
/// Postgres unless `args` say otherwise) and waits until it is ready; returns it and what it
/// printed.
pub fn start_up(home: &Path, listen: &str, args: &[&str]) -> (Daemon, String) {
    start_up_with_env::<&str>(home, listen, args, &[])
}

/// [`start_up`] with extra environment variables.
pub fn start_up_with_env<V: AsRef<std::ffi::OsStr>>(
    home: &Path,
    listen: &str,
    args: &[&str],
    env: &[(&str, V)],
) -> (Daemon, String) {
    // Its log goes to HOME/paas-up.log (appended across restarts), so a start that
    // fails says why.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("paas-up.log"))
        .expect("paas up log");
    start_up_logged(home, listen, args, env, log.into())
}

/// [`start_up`] with two Postgres members and the backup store `store` (`s3://...`) on
/// the S3 server `s3`, which `paas up` finds through the `AWS_*` variables
/// ([`paas_it::S3Server::aws_env`]).
pub fn start_up_on_s3(home: &Path, s3: &paas_it::S3Server, store: &str) -> (Daemon, String) {
    let (listen, pg) = (free_addr(), free_addr());
    start_up_with_env(
        home,
        &listen,
        &[
            "--postgres-listen",
            &pg,
            "--postgres-members",
            "2",
            "--backup-store",
            store,
        ],
        &s3.aws_env(),
    )
}

/// [`start_up_with_env`] with the daemon's log (stderr) sent to `log`.
pub fn start_up_logged<V: AsRef<std::ffi::OsStr>>(
    home: &Path,
    listen: &str,
    args: &[&str],
    env: &[(&str, V)],
    log: Stdio,
) -> (Daemon, String) {
    let mut cmd = base(home);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.args(["up", "--listen", listen]);
    for (flag, default) in [
        ("--syslog-listen", "127.0.0.1:0"),
        ("--forward-listen", "127.0.0.1:0"),
        ("--postgres-members", "0"),
        ("--router-listen", "127.0.0.1:0"),
        ("--router-tls-listen", "127.0.0.1:0"),
        ("--router-admin-listen", "127.0.0.1:0"),
    ] {
        if !args.contains(&flag) {
            cmd.args([flag, default]);
        }
    }
    let mut child = cmd
        .args(args)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn paas up");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let daemon = Daemon(child);
    let mut out = String::new();
    while !out.contains("Press Ctrl-C") {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            let log = std::fs::read_to_string(home.join("paas-up.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "paas up exited: {out}\n--- its log (HOME/paas-up.log, last lines)\n{}",
                tail.join("\n")
            );
        }
        out.push_str(&line);
    }
    (daemon, out)
}

/// A free `127.0.0.1:PORT`.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", paas_it::free_port().unwrap())
}

/// `etcdctl ARGS` against the embedded etcd of the `paas up` in `home` that printed
/// `up_out` (its `etcd:` line), with the platform's client certificate.
pub fn etcdctl(home: &Path, up_out: &str, args: &[&str]) -> Output {
    let etcd = up_out
        .lines()
        .find_map(|l| l.trim().strip_prefix("etcd:"))
        .expect("paas up prints its etcd")
        .trim()
        .to_string();
    let pki = home.join("data/pki");
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd, "--command-timeout", "5s"])
        .arg("--cacert")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join("client.pem"))
        .arg("--key")
        .arg(pki.join("client-key.pem"))
        .args(args)
        .output()
        .unwrap()
}

/// Rewrites resource `id` of `app` in etcd as a version of the platform older than the
/// backup hooks stored it: without `field` in its provider data (the credentials the
/// hooks now record).
pub fn forget_resource_field(home: &Path, up_out: &str, app: &str, id: &str, field: &str) {
    let key = format!("paas/resources/{app}/{id}");
    let value = ok(etcdctl(home, up_out, &["get", &key, "--print-value-only"]));
    let mut record: serde_json::Value = serde_json::from_str(value.trim()).unwrap();
    let removed = record["data"]
        .as_object_mut()
        .and_then(|data| data.remove(field));
    assert!(removed.is_some(), "{field} in {record}");
    ok(etcdctl(home, up_out, &["put", &key, &record.to_string()]));
}

/// Runs `paas up ARGS` (free ports for the rest), which must exit with an error within
/// three minutes; its stderr.
pub fn up_fails(home: &Path, args: &[&str]) -> String {
    let mut child = base(home)
        .args(["up", "--listen", &free_addr()])
        .args([
            "--syslog-listen",
            "127.0.0.1:0",
            "--forward-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--router-listen",
            "127.0.0.1:0",
            "--router-tls-listen",
            "127.0.0.1:0",
        ])
        .args(["--router-admin-listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut daemon_stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut daemon_stderr, &mut text);
        text
    });
    // Stopped on drop should the assertion below fail.
    let mut daemon = Daemon(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let status = loop {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "paas up did not stop");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let stderr = reader.join().unwrap();
    assert!(!status.success(), "paas up should have failed: {stderr}");
    stderr
}
