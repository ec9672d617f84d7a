//! The runtime as a user drives it: `paas up` plus a second host (`paas host --join`),
//! a web process scaled to 3 behind the HTTP router, crash restarts, a dead host's jobs
//! moving (with no failed request through the router), `paas run`.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{base, free_addr, ok, paas, Daemon};

/// `paas up`, the etcd URL it printed (for `paas host --join`), its router's HTTP
/// and HTTPS addresses and its (TLS) syslog input.
fn start_up(home: &Path) -> (Daemon, String, String, String, String) {
    let (up, out) = common::start_up(home, &free_addr(), &[]);
    let printed = |key: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap()
            .trim()
            .to_string()
    };
    let etcd = printed("etcd:");
    let router_line = printed("router:");
    let words: Vec<&str> = router_line.split_whitespace().collect();
    let router = words[0].trim_start_matches("http://").to_string();
    let https = words[words.iter().position(|w| *w == "https").unwrap() + 1].trim_end_matches(',');
    let syslog = printed("syslog:");
    let syslog = syslog.split_whitespace().next().unwrap().to_string();
    (up, etcd, router, https.to_string(), syslog)
}

/// GET `path` through the router with `Host: host`: (HTTP status, body).
fn through_router(router: &str, host: &str, path: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-w",
            "\\n%{http_code}",
            "-H",
            &format!("Host: {host}"),
        ])
        .arg(format!("http://{router}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
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
    let home = common::home();
    let home = home.path();
    let (_up, etcd, router, router_tls, syslog) = start_up(home);
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
            .arg("--etcd-tls-dir")
            .arg(home.join("data/pki"))
            // Its shippers present the same certificate to the aggregator's syslog input.
            .args(["--log-addr", &syslog])
            .env(
                "PAAS_CLUSTER_SECRET",
                std::fs::read_to_string(home.join("data/cluster-secret")).unwrap(),
            )
            .args(["--router-listen", "127.0.0.2:0"])
            .args(["--router-tls-listen", "127.0.0.2:0"])
            .args(["--router-admin-listen", "127.0.0.2:0"])
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
    // Spreading needs both hosts in the scheduler's view before the scale.
    let started = std::time::Instant::now();
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&ok(paas(home, &["--json", "cluster", "status"]))).unwrap();
        if status["hosts"].as_array().map_or(0, Vec::len) == 2 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the second host never registered: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
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

    // The joined host ships its job's output (the request lines above) over TLS with
    // its copy of the pki.
    let second = j.iter().find(|j| j["host"] == "second").unwrap();
    let second_job = second["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = ok(paas(
            home,
            &["log", "-a", "shop", "-n", "200", "--job", second_job],
        ));
        if log.contains("GET /index.html") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no line of the joined host's job {second_job} in: {log}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // kill -9 of a job's process: the host restarts it.
    let victim = j[0].clone();
    unsafe { libc::kill(-(victim["pid"].as_i64().unwrap() as i32), libc::SIGKILL) };
    wait_jobs(home, 30, "the killed job restarted", |j| {
        j.iter().any(|x| {
            x["id"] == victim["id"] && x["state"] == "up" && x["restarts"].as_u64().unwrap() >= 1
        })
    });

    // Limits: the web jobs roll over to jobs in cgroups with the new limits.
    let before: Vec<String> = jobs(home)
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    let out = ok(paas(
        home,
        &[
            "scale", "-a", "shop", "web", "--memory", "256M", "--cpu", "0.5",
        ],
    ));
    assert!(out.contains("web=3 (memory 256 MiB, cpu 0.5)"), "{out}");
    let j = wait_jobs(home, 60, "3 new web jobs up under limits", |j| {
        j.len() == 3
            && up_count(j) == 3
            && j.iter()
                .all(|x| !before.iter().any(|b| x["id"] == b.as_str()))
    });
    for job in &j {
        let pid = job["pid"].as_u64().unwrap();
        let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let memory = groups.lines().find(|l| l.contains(":memory:")).unwrap();
        assert!(
            memory.ends_with(&format!(
                "/paas-jobs/{}/{}",
                job["host"].as_str().unwrap(),
                job["id"].as_str().unwrap()
            )),
            "{job}: {groups}"
        );
    }
    let refused = paas(home, &["scale", "-a", "shop", "web", "--memory", "1M"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("at least 16M"));

    // The router serves every app at <app>.localhost, and added routes, spreading
    // requests over the web jobs of both hosts.
    for _ in 0..6 {
        assert_eq!(
            through_router(&router, "shop.localhost", "/index.html"),
            (200, "hello from paas\n".to_string())
        );
    }
    assert_eq!(through_router(&router, "nope.localhost", "/").0, 404);
    ok(paas(
        home,
        &[
            "route",
            "add",
            "-a",
            "shop",
            "www.shop.test",
            "--path",
            "/index.html",
        ],
    ));
    let routes: serde_json::Value =
        serde_json::from_str(&ok(paas(home, &["--json", "route", "list", "-a", "shop"]))).unwrap();
    assert_eq!(routes[0]["domain"], "www.shop.test", "{routes}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while through_router(&router, "www.shop.test", "/index.html").0 != 200 {
        assert!(Instant::now() < deadline, "the added route never served");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(through_router(&router, "www.shop.test", "/other").0, 404);
    let id = routes[0]["id"].as_str().unwrap();
    ok(paas(home, &["route", "remove", "-a", "shop", id]));

    // HTTPS: a route with a certificate, served by SNI.
    let (cert, key) = (home.join("cert.pem"), home.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=secure.shop.test"])
        .args(["-addext", "subjectAltName=DNS:secure.shop.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    ok(paas(
        home,
        &[
            "route",
            "add",
            "-a",
            "shop",
            "secure.shop.test",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    ));
    let port = router_tls.rsplit(':').next().unwrap();
    let https = || {
        let out = std::process::Command::new("curl")
            .args(["-s", "--http2", "--cacert", cert.to_str().unwrap()])
            .args(["--resolve", &format!("secure.shop.test:{port}:127.0.0.1")])
            .args(["-w", "\\n%{http_version}"])
            .arg(format!("https://secure.shop.test:{port}/index.html"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = https();
        if got == "hello from paas\n\n2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no HTTP/2 answer over TLS: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The whole second host dies (SIGKILL: no goodbye, its lease must expire): its jobs
    // come back on the first host within the lease TTL.
    let mut second = _second;
    unsafe { libc::kill(second.0.id() as i32, libc::SIGKILL) };
    second.0.wait().unwrap();
    let started = Instant::now();
    // Its jobs died with it; their registrations live on until the lease expires, and
    // the router retries requests that meet a dead one on a live one: none fails.
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let (status, body) = through_router(&router, "shop.localhost", "/index.html");
        assert_eq!(
            (status, body.as_str()),
            (200, "hello from paas\n"),
            "request {sent}"
        );
        sent += 1;
    }
    eprintln!("{sent} requests through the router while the host died, none failed");
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
    // And the router's access lines, as process type `router`.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = ok(paas(
            home,
            &["log", "-a", "shop", "-n", "500", "--type", "router"],
        ));
        if log.contains("host=shop.localhost status=200") {
            assert!(!log.contains("python"), "only router lines: {log}");
            break;
        }
        assert!(Instant::now() < deadline, "no router access line in: {log}");
        std::thread::sleep(Duration::from_millis(300));
    }
}
