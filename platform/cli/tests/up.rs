//! `paas up` and the CLI as a user runs them: a temp HOME, the real binary, a real etcd.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PAAS: &str = env!("CARGO_BIN_EXE_paas");

/// A running `paas up`, stopped with SIGTERM when dropped (also on panic).
struct Up {
    child: Child,
    stdout: String,
}

impl Up {
    fn start(home: &Path, listen: &str) -> Up {
        let mut child = Command::new(PAAS)
            .args(["up", "--listen", listen])
            .args([
                "--syslog-listen",
                "127.0.0.1:0",
                "--forward-listen",
                "127.0.0.1:0",
                "--postgres-members",
                "0",
            ])
            .env("HOME", home)
            .env("PAAS_DATA_DIR", home.join(".local/share/paas"))
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .env_remove("PAAS_URL")
            .env_remove("PAAS_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn paas up");
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut stdout = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stdout.contains("Press Ctrl-C") {
            assert!(Instant::now() < deadline, "paas up did not start: {stdout}");
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                panic!("paas up exited early: {stdout} {:?}", child.wait());
            }
            stdout.push_str(&line);
        }
        Up { child, stdout }
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "paas up exited with {status}");
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

fn paas(home: &Path, args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(PAAS);
    cmd.args(args)
        .env("HOME", home)
        .env("PAAS_DATA_DIR", home.join(".local/share/paas"))
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("PAAS_URL")
        .env_remove("PAAS_APP");
    match token {
        Some(t) => cmd.env("PAAS_TOKEN", t),
        None => cmd.env_remove("PAAS_TOKEN"),
    };
    cmd.output().expect("run paas")
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn fails(out: Output, needle: &str) {
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "should have failed");
    assert!(
        stderr.contains(needle),
        "stderr {stderr:?} lacks {needle:?}"
    );
}

fn etcd_alive(data_dir: &Path) -> bool {
    let needle = data_dir.join("etcd");
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(needle.to_str().unwrap()))
            .unwrap_or(false)
    })
}

#[test]
fn up_serves_the_cli_and_keeps_state_across_restarts() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let listen = format!("127.0.0.1:{}", paas_it::free_port().unwrap());
    let up = Up::start(home, &listen);
    assert!(
        up.stdout.contains(&format!("http://{listen}")),
        "{}",
        up.stdout
    );

    let config: PathBuf = home.join(".config/paas/config.toml");
    let mode = std::fs::metadata(&config).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let data_dir = home.join(".local/share/paas");

    ok(paas(home, &["apps", "create", "shop"], None));
    assert!(ok(paas(
        home,
        &[
            "env",
            "set",
            "-a",
            "shop",
            "GREETING=hello world",
            "URL=a=b"
        ],
        None
    ))
    .contains("v2"));
    fails(
        paas(home, &["apps", "create", "Bad_Name"], None),
        "invalid app name",
    );
    fails(
        paas(home, &["apps", "create", "shop"], None),
        "already exists",
    );
    fails(
        paas(home, &["apps", "list"], Some("paas_nope")),
        "invalid or revoked token",
    );

    // A second `paas up` on the same data dir refuses.
    let second = Command::new(PAAS)
        .args(["up", "--listen", "127.0.0.1:0"])
        .args([
            "--syslog-listen",
            "127.0.0.1:0",
            "--forward-listen",
            "127.0.0.1:0",
            "--postgres-members",
            "0",
        ])
        .env("HOME", home)
        .env("PAAS_DATA_DIR", home.join(".local/share/paas"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));

    // A scoped token sees only its app.
    ok(paas(home, &["apps", "create", "blog"], None));
    let created: serde_json::Value = serde_json::from_str(&ok(paas(
        home,
        &["--json", "tokens", "create", "-a", "shop"],
        None,
    )))
    .unwrap();
    let scoped = created["token"].as_str().unwrap();
    let apps: serde_json::Value =
        serde_json::from_str(&ok(paas(home, &["--json", "apps", "list"], Some(scoped)))).unwrap();
    assert_eq!(apps.as_array().unwrap().len(), 1);
    fails(
        paas(home, &["env", "get", "-a", "blog"], Some(scoped)),
        "not found",
    );

    up.stop();
    assert!(!etcd_alive(&data_dir), "etcd outlived paas up");

    let up = Up::start(home, &listen);
    assert_eq!(
        ok(paas(home, &["env", "get", "-a", "shop", "GREETING"], None)),
        "hello world\n"
    );
    let env = ok(paas(home, &["env", "get", "-a", "shop"], None));
    assert_eq!(env, "GREETING=hello world\nURL=a=b\n");
    let releases = ok(paas(home, &["releases", "-a", "shop"], None));
    assert!(
        releases.contains("v2") && releases.contains("Set GREETING, URL"),
        "{releases}"
    );
    ok(paas(home, &["rollback", "-a", "shop"], None));
    assert_eq!(ok(paas(home, &["env", "get", "-a", "shop"], None)), "");
    let apps: serde_json::Value =
        serde_json::from_str(&ok(paas(home, &["--json", "apps", "list"], Some(scoped)))).unwrap();
    assert_eq!(apps[0]["name"], "shop", "scoped token survives restart");
    up.stop();
}
