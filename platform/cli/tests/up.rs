//! `paas up` and the CLI as a user runs them: a temp HOME, the real binary, a real etcd.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{base, fails, free_addr, ok, start_up};

fn paas(home: &Path, args: &[&str], token: Option<&str>) -> std::process::Output {
    let mut cmd = base(home);
    cmd.args(args);
    if let Some(t) = token {
        cmd.env("PAAS_TOKEN", t);
    }
    cmd.output().expect("run paas")
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
    let home = common::home();
    let home = home.path();
    let listen = free_addr();
    let (up, stdout) = start_up(home, &listen, &[]);
    assert!(stdout.contains(&format!("http://{listen}")), "{stdout}");

    let config: PathBuf = home.join(".config/paas/config.toml");
    let mode = std::fs::metadata(&config).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let data_dir = home.join("data");

    // etcd answers only clients with the cluster's certificate: any other local process
    // (a job, another user) cannot read or write the platform's state.
    let etcd = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("etcd:"))
        .unwrap()
        .trim()
        .to_string();
    assert!(etcd.starts_with("https://"), "{etcd}");
    let pki = data_dir.join("pki");
    let etcdctl = |with_cert: bool| {
        let mut cmd = std::process::Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd, "--command-timeout", "5s"])
            .arg("--cacert")
            .arg(pki.join("ca.pem"));
        if with_cert {
            cmd.arg("--cert")
                .arg(pki.join("client.pem"))
                .arg("--key")
                .arg(pki.join("client-key.pem"));
        }
        cmd.args(["get", "paas/tokens/", "--prefix", "--keys-only"])
            .output()
            .unwrap()
    };
    let refused = etcdctl(false);
    assert!(
        !refused.status.success(),
        "etcd answered without a client certificate: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    let allowed = etcdctl(true);
    assert!(
        allowed.status.success() && String::from_utf8_lossy(&allowed.stdout).contains("tokens/"),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    // The peer port (12380 beside the client port) wants the cluster's certificate too.
    let peer = etcd.rsplit_once(':').unwrap().0.to_string() + ":12380/members";
    let curl = |with_cert: bool| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--http1.1", "--max-time", "5", "--cacert"])
            .arg(pki.join("ca.pem"));
        if with_cert {
            cmd.arg("--cert")
                .arg(pki.join("client.pem"))
                .arg("--key")
                .arg(pki.join("client-key.pem"));
        }
        cmd.arg(&peer).output().unwrap()
    };
    let refused = curl(false);
    assert!(
        !refused.status.success(),
        "etcd's peer port answered without a client certificate: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    let allowed = curl(true);
    assert!(
        allowed.status.success() && String::from_utf8_lossy(&allowed.stdout).contains("peerURLs"),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let mode = std::fs::metadata(&pki).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o700,
        "the certificates' directory is the platform's alone"
    );

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
    let second = paas(
        home,
        &["up", "--listen", "127.0.0.1:0", "--postgres-members", "0"],
        None,
    );
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

    let (up, _) = start_up(home, &listen, &[]);
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
