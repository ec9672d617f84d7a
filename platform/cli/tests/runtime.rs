//! The runtime as a user drives it: `paas up` plus a second host (`paas host --join`),
//! a web process scaled to 3, crash restarts, a dead host's jobs moving, `paas run`.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{base, free_addr, ok, paas, Daemon};

/// `paas up`, and the etcd URL it printed (for `paas host --join`).
fn start_up(home: &Path) -> (Daemon, String) {
    let (up, out) = common::start_up(home, &free_addr(), &[]);
    let etcd = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("etcd:"))
        .unwrap()
        .trim()
        .to_string();
    (up, etcd)
}

fn jobs(home: &Path) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&ok(paas(home, &["--json", "ps", "-a", "shop"]))).unwrap();
    v.as_array().unwrap().clone()
}

/// Polls `jobs` until `pred` holds, for at most `secs`.
fn wait_jobs(
    home: &Path,
    secs: u64,
    what: &str,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let j = jobs(home);
        if pred(&j) {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {j:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn up_count(j: &[serde_json::Value]) -> usize {
    j.iter().filter(|j| j["state"] == "up").count()
}

#[test]
fn scale_restart_reschedule_and_run() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let (_up, etcd) = start_up(home);
    let artifacts = home.join("data/artifacts");

    // A second host on another loopback address, as another machine would join.
    let _second = Daemon(
        base(home)
            .args([
                "host",
                "--join",
                &etcd,
                "--id",
                "second",
                "--job-ip",
                "127.0.0.2",
                "--api-listen",
                "127.0.0.2:0",
            ])
            .arg("--artifacts")
            .arg(&artifacts)
            .arg("--data-dir")
            .arg(home.join("second"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let site = home.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "hello from paas\n").unwrap();
    std::fs::write(
        home.join("Procfile"),
        "web: exec python3 -m http.server --bind $HOST_IP $PORT\n",
    )
    .unwrap();
    ok(paas(home, &["apps", "create", "shop"]));
    ok(paas(
        home,
        &[
            "release",
            "add",
            "-a",
            "shop",
            "--procfile",
            home.join("Procfile").to_str().unwrap(),
            site.to_str().unwrap(),
        ],
    ));
    ok(paas(home, &["scale", "-a", "shop", "web=3"]));

    let j = wait_jobs(home, 60, "3 web jobs up on 2 hosts", |j| {
        up_count(j) == 3
            && j.iter()
                .map(|j| j["host"].as_str().unwrap())
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                == 2
    });
    // Every job serves the uploaded code on its $PORT.
    for job in &j {
        let ip = if job["host"] == "second" {
            "127.0.0.2"
        } else {
            "127.0.0.1"
        };
        let port = job["port"].as_u64().unwrap();
        let body = std::process::Command::new("curl")
            .args(["-sf", &format!("http://{ip}:{port}/index.html")])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&body.stdout),
            "hello from paas\n",
            "{job}"
        );
    }

    // kill -9 of a job's process: the host restarts it.
    let victim = j[0].clone();
    unsafe { libc::kill(-(victim["pid"].as_i64().unwrap() as i32), libc::SIGKILL) };
    wait_jobs(home, 30, "the killed job restarted", |j| {
        j.iter().any(|x| {
            x["id"] == victim["id"] && x["state"] == "up" && x["restarts"].as_u64().unwrap() >= 1
        })
    });

    // The whole second host dies (SIGKILL: no goodbye, its lease must expire): its jobs
    // come back on the first host within the lease TTL.
    let mut second = _second;
    unsafe { libc::kill(second.0.id() as i32, libc::SIGKILL) };
    second.0.wait().unwrap();
    let started = Instant::now();
    let j = wait_jobs(home, 30, "jobs rescheduled off the dead host", |j| {
        up_count(j) == 3 && j.iter().all(|x| x["host"] != "second")
    });
    assert_eq!(j.len(), 3);
    eprintln!("rescheduled in {:?}", started.elapsed());

    // One-off jobs: exit code and stdin/stdout pass through.
    let out = paas(home, &["run", "-a", "shop", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let mut child = base(home)
        .args([
            "run",
            "-a",
            "shop",
            "--",
            "sh",
            "-c",
            "read x; echo got $x on $APP",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"ping\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got ping on shop\n");

    // Job output reaches `paas log`.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = ok(paas(home, &["log", "-a", "shop", "-n", "200"]));
        if log.contains("GET /index.html") {
            break;
        }
        assert!(Instant::now() < deadline, "no request log line in: {log}");
        std::thread::sleep(Duration::from_millis(300));
    }
}
