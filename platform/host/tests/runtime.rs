//! The runtime end to end against a real etcd with real job processes: host agents on
//! distinct 127.0.0.x addresses, the scheduler, HTTP jobs (`python3 -m http.server`),
//! restarts, host death, rollover, health checks with an artifact, and `/run`.
//!
//! The documents the controller would write (app, release, formation) are written
//! directly to etcd.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use paas_coord::{Batch, Coord};
use paas_host::attach::{run_remote, AttachError, RunRequest};
use paas_host::HostConfig;
use paas_it::{wait_for, Crashable};
use paas_model::keys;
use paas_model::ServiceEntry;
use paas_model::{App, Artifact, Formation, Job, JobState, JobStatus, Release};
use paas_scheduler::SchedulerConfig;
use sha2::Digest;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "paas";
/// The cluster secret the test agents require on `/run`.
const SECRET: &str = "test-cluster-secret";
const HTTP: &str = "exec /usr/bin/python3 -m http.server $PORT --bind $HOST_IP";

/// etcd plus a coordination client and a scratch dir (artifacts, agents' data dirs).
struct Cluster {
    etcd: paas_it::EtcdServer,
    coord: Coord,
    dir: tempfile::TempDir,
}

async fn connect(etcd: &paas_it::EtcdServer) -> Coord {
    Coord::connect(&[etcd.endpoint()], PREFIX, Duration::from_secs(5))
        .await
        .unwrap()
}

/// A running agent task and how to stop it.
struct Agent {
    task: JoinHandle<Result<(), paas_host::HostError>>,
    stop: CancellationToken,
}

impl Cluster {
    async fn start() -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,paas_logshipper=warn")
            .with_test_writer()
            .try_init();
        let etcd = paas_it::EtcdServer::start().expect("etcd");
        let coord = connect(&etcd).await;
        let dir = tempfile::tempdir().unwrap();
        // Jobs run as their own users: they must be able to reach their directories.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("artifacts")).unwrap();
        Cluster { etcd, coord, dir }
    }

    fn agent(&self, id: &str, ip: [u8; 4]) -> Agent {
        self.agent_logging_to(id, ip, None)
    }

    fn agent_logging_to(
        &self,
        id: &str,
        ip: [u8; 4],
        log_addr: Option<std::net::SocketAddr>,
    ) -> Agent {
        let stop = CancellationToken::new();
        Agent {
            task: tokio::spawn(paas_host::run(
                self.agent_config(id, ip, log_addr),
                stop.clone(),
            )),
            stop,
        }
    }

    /// An agent in a runtime of its own, to be crashed.
    fn crashable_agent(&self, id: &str, ip: [u8; 4]) -> Crashable {
        let agent = Crashable::new();
        agent.spawn(paas_host::run(
            self.agent_config(id, ip, None),
            CancellationToken::new(),
        ));
        agent
    }

    fn agent_config(
        &self,
        id: &str,
        ip: [u8; 4],
        log_addr: Option<std::net::SocketAddr>,
    ) -> HostConfig {
        let mut cfg = HostConfig::new(
            id,
            vec![self.etcd.endpoint()],
            PREFIX,
            self.dir.path().join(id),
            self.dir.path().join("artifacts"),
        );
        cfg.job_ip = ip.into();
        cfg.api_listen = (ip, 0).into();
        cfg.lease_ttl = Duration::from_secs(2);
        cfg.stop_grace = Duration::from_secs(2);
        cfg.poll_interval = Duration::from_millis(100);
        cfg.log_addr = log_addr;
        cfg.api_secret = SECRET.into();
        cfg.shim = paas_host::shim::Shim::new(
            env!("CARGO_BIN_EXE_paas-host-agent"),
            [paas_host::shim::SUBCOMMAND],
        );
        cfg
    }

    fn scheduler(
        &self,
        id: &str,
    ) -> (
        JoinHandle<Result<(), paas_scheduler::SchedulerError>>,
        CancellationToken,
    ) {
        let mut cfg = SchedulerConfig::new(id, vec![self.etcd.endpoint()], PREFIX);
        cfg.lease_ttl = Duration::from_secs(2);
        cfg.interval = Duration::from_millis(100);
        let stop = CancellationToken::new();
        (tokio::spawn(paas_scheduler::run(cfg, stop.clone())), stop)
    }

    /// Writes release `version` of `app` and points the app at it, as the controller does.
    async fn release(
        &self,
        app: &str,
        version: u64,
        processes: &[(&str, &str)],
        env: &[(&str, &str)],
        artifact: Option<Artifact>,
    ) {
        let release = Release {
            app: app.into(),
            version,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            processes: processes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            artifact,
            description: format!("release {version}"),
            created_at: Utc::now(),
        };
        self.put(&keys::release(app, version), &release).await;
        let doc = App {
            name: app.into(),
            created_at: Utc::now(),
            release: version,
        };
        self.put(&keys::app(app), &doc).await;
    }

    /// Writes one document, as the controller (or, for placements, the scheduler) would.
    async fn put<T: serde::Serialize>(&self, key: &str, value: &T) {
        let mut batch = Batch::new();
        batch.put(key, value).unwrap();
        self.coord.commit(batch).await.unwrap();
    }

    async fn remove(&self, key: &str) {
        let mut batch = Batch::new();
        batch.remove(key);
        self.coord.commit(batch).await.unwrap();
    }

    async fn scale(&self, app: &str, counts: &[(&str, u32)]) {
        let f = Formation {
            app: app.into(),
            processes: counts.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            limits: Default::default(),
        };
        self.put(&keys::formation(app), &f).await;
    }

    async fn statuses(&self) -> Vec<JobStatus> {
        let s: Vec<(String, JobStatus, i64)> =
            self.coord.list(&keys::job_statuses()).await.unwrap();
        s.into_iter().map(|(_, s, _)| s).collect()
    }

    async fn placements(&self) -> Vec<Job> {
        let p: Vec<(String, Job, i64)> = self
            .coord
            .list_decodable(&keys::placements())
            .await
            .unwrap();
        p.into_iter().map(|(_, j, _)| j).collect()
    }

    async fn services(&self, service: &str) -> Vec<ServiceEntry> {
        let s: Vec<(String, ServiceEntry, i64)> =
            self.coord.list(&keys::service(service)).await.unwrap();
        s.into_iter().map(|(_, s, _)| s).collect()
    }

    /// Up statuses of `app`, sorted by job id, once exactly `n` jobs are placed and up
    /// (and nothing else of the app is placed).
    async fn wait_up(&self, app: &str, n: usize, release: u64, limit: Duration) -> Vec<JobStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let placed: Vec<Job> = self
                .placements()
                .await
                .into_iter()
                .filter(|j| j.app == app)
                .collect();
            let mut up: Vec<JobStatus> = self
                .statuses()
                .await
                .into_iter()
                .filter(|s| s.app == app && s.state == JobState::Up && s.release == release)
                .filter(|s| placed.iter().any(|j| j.id == s.id))
                .collect();
            if placed.len() == n && up.len() == n {
                up.sort_by(|a, b| a.id.cmp(&b.id));
                return up;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} up jobs of {app} release {release}: placed {placed:#?}, statuses {:#?}",
                self.statuses().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// GET / on `addr` answers 200.
async fn http_ok(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    if c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf).await;
    buf.starts_with(b"HTTP/1.0 200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_restart_and_host_death() {
    let c = Cluster::start().await;
    let mut a1 = c.crashable_agent("h1", [127, 0, 0, 2]);
    let a2 = c.agent("h2", [127, 0, 0, 3]);
    let (sched, sched_stop) = c.scheduler("s1");
    c.release(
        "shop",
        1,
        &[
            ("web", HTTP),
            ("clock", "while true; do echo tick; sleep 0.2; done"),
        ],
        &[],
        None,
    )
    .await;
    // Spreading needs both hosts in the scheduler's view: a scale seen while only one is
    // registered rightly puts everything on it.
    wait_for("both hosts registered", Duration::from_secs(10), || async {
        let hosts: Vec<(String, paas_model::Host, i64)> =
            c.coord.list(&keys::hosts()).await.unwrap();
        hosts.len() == 2
    })
    .await;
    c.scale("shop", &[("web", 3), ("clock", 1)]).await;

    let up = c.wait_up("shop", 4, 1, Duration::from_secs(30)).await;
    let web: Vec<&JobStatus> = up.iter().filter(|s| s.process_type == "web").collect();
    assert_eq!(web.len(), 3);
    // Spread: both hosts run web jobs.
    assert!(
        web.iter().any(|s| s.host == "h1") && web.iter().any(|s| s.host == "h2"),
        "{web:#?}"
    );
    // Discovery: three entries, each a real HTTP server on its host's address.
    wait_for("3 discovery entries", Duration::from_secs(10), || async {
        c.services("shop-web").await.len() == 3
    })
    .await;
    for entry in c.services("shop-web").await {
        let status = web
            .iter()
            .find(|s| s.id == entry.job)
            .expect("entry of a web job");
        let ip = if status.host == "h1" {
            "127.0.0.2"
        } else {
            "127.0.0.3"
        };
        assert_eq!(entry.addr, format!("{ip}:{}", status.port.unwrap()));
        assert!(http_ok(&entry.addr).await, "GET {}", entry.addr);
    }
    // The clock job is not exposed and logs to a file (no aggregator configured).
    assert!(c.services("shop-clock").await.is_empty());
    let clock = up.iter().find(|s| s.process_type == "clock").unwrap();
    let log = c
        .dir
        .path()
        .join(&clock.host)
        .join("logs/shop")
        .join(format!("{}.log", clock.id));
    wait_for("clock log lines", Duration::from_secs(10), || async {
        std::fs::read_to_string(&log)
            .map(|t| t.lines().filter(|l| l.ends_with(" stdout tick")).count() >= 2)
            .unwrap_or(false)
    })
    .await;

    // kill -9 a web job's process: the same job comes back with one more restart.
    let victim = web[0].clone();
    // SAFETY: sending a signal to a pid we read from the job status.
    let killed = std::time::Instant::now();
    assert_eq!(
        unsafe { libc::kill(victim.pid.unwrap() as i32, libc::SIGKILL) },
        0
    );
    wait_for(
        "the killed job to be restarted and up",
        Duration::from_secs(20),
        || async {
            c.statuses().await.iter().any(|s| {
                s.id == victim.id
                    && s.restarts >= 1
                    && s.state == JobState::Up
                    && s.pid != victim.pid
            })
        },
    )
    .await;
    println!(
        "figure: kill -9 -> same job up again: {:?}",
        killed.elapsed()
    );

    // Host h1 crashes (its agent and jobs vanish, nothing revokes its lease, which must
    // expire): everything ends up on h2.
    let on_h1: Vec<String> = c
        .placements()
        .await
        .into_iter()
        .filter(|j| j.host == "h1")
        .map(|j| j.id)
        .collect();
    assert!(!on_h1.is_empty());
    let died = std::time::Instant::now();
    a1.crash();
    wait_for(
        "h1's lease to expire and its jobs to move",
        Duration::from_secs(30),
        || async { c.placements().await.iter().all(|j| j.host == "h2") },
    )
    .await;
    let up = c.wait_up("shop", 4, 1, Duration::from_secs(30)).await;
    println!(
        "figure: host crash -> its jobs up on the other host: {:?} (lease TTL 2 s)",
        died.elapsed()
    );
    assert!(up.iter().all(|s| s.host == "h2"), "{up:#?}");
    assert!(up.iter().all(|s| !on_h1.contains(&s.id)));
    wait_for(
        "discovery to list only h2",
        Duration::from_secs(10),
        || async {
            let s = c.services("shop-web").await;
            s.len() == 3 && s.iter().all(|e| e.addr.starts_with("127.0.0.3:"))
        },
    )
    .await;

    // Scale to zero: placements, statuses and discovery entries go away.
    c.scale("shop", &[("web", 0), ("clock", 0)]).await;
    wait_for("everything stopped", Duration::from_secs(20), || async {
        c.placements().await.is_empty()
            && c.statuses().await.is_empty()
            && c.services("shop-web").await.is_empty()
    })
    .await;

    sched_stop.cancel();
    sched.await.unwrap().unwrap();
    a2.stop.cancel();
    a2.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollover_to_a_new_release() {
    let c = Cluster::start().await;
    let a1 = c.agent("h1", [127, 0, 0, 4]);
    let (sched, sched_stop) = c.scheduler("s1");
    c.release("blog", 1, &[("web", HTTP)], &[("V", "1")], None)
        .await;
    c.scale("blog", &[("web", 2)]).await;
    let old = c.wait_up("blog", 2, 1, Duration::from_secs(30)).await;

    c.release("blog", 2, &[("web", HTTP)], &[("V", "2")], None)
        .await;
    let new = c.wait_up("blog", 2, 2, Duration::from_secs(30)).await;
    assert!(new.iter().all(|s| old.iter().all(|o| o.id != s.id)));
    // Old jobs are gone from discovery too.
    wait_for(
        "discovery to list only new jobs",
        Duration::from_secs(10),
        || async {
            let s = c.services("blog-web").await;
            s.len() == 2 && s.iter().all(|e| new.iter().any(|n| n.id == e.job))
        },
    )
    .await;

    sched_stop.cancel();
    sched.await.unwrap().unwrap();
    a1.stop.cancel();
    a1.task.await.unwrap().unwrap();
}

/// Writes a gzip'd tarball with `files` as `<sha256>.tar.gz` into `dir`.
fn artifact(dir: &Path, files: &[(&str, &str)]) -> Artifact {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, body) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, body.as_bytes())
            .unwrap();
    }
    let bytes = builder.into_inner().unwrap().finish().unwrap();
    let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
    let mut f = std::fs::File::create(dir.join(format!("{sha256}.tar.gz"))).unwrap();
    f.write_all(&bytes).unwrap();
    Artifact {
        sha256,
        size: bytes.len() as u64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_check_on_an_artifact_deregisters_a_failing_job() {
    let c = Cluster::start().await;
    let a1 = c.agent("h1", [127, 0, 0, 5]);
    let (sched, sched_stop) = c.scheduler("s1");
    let art = artifact(
        &c.dir.path().join("artifacts"),
        &[("healthz", "ok"), ("index.html", "hello")],
    );
    c.release(
        "api",
        1,
        &[("web", HTTP)],
        &[("PAAS_HEALTHCHECK_WEB", "http:/healthz")],
        Some(art),
    )
    .await;
    c.scale("api", &[("web", 1)]).await;
    let up = c.wait_up("api", 1, 1, Duration::from_secs(30)).await;
    wait_for("registration", Duration::from_secs(10), || async {
        c.services("api-web").await.len() == 1
    })
    .await;

    // The job serves its own copy of the artifact; removing the checked file fails the check.
    let workdir = c.dir.path().join("h1/jobs").join(&up[0].id);
    assert_eq!(
        std::fs::read_to_string(workdir.join("index.html")).unwrap(),
        "hello"
    );
    std::fs::remove_file(workdir.join("healthz")).unwrap();
    wait_for(
        "deregistration after failed checks",
        Duration::from_secs(20),
        || async { c.services("api-web").await.is_empty() },
    )
    .await;
    wait_for(
        "a restart with a health failure message",
        Duration::from_secs(20),
        || async {
            c.statuses()
                .await
                .iter()
                .any(|s| s.id == up[0].id && s.restarts >= 1 && s.state != JobState::Up)
        },
    )
    .await;

    sched_stop.cancel();
    sched.await.unwrap().unwrap();
    a1.stop.cancel();
    a1.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_passes_stdin_output_and_exit_code() {
    let c = Cluster::start().await;
    let a1 = c.agent("h1", [127, 0, 0, 6]);
    c.release("tool", 1, &[], &[("GREETING", "hi")], None).await;
    let api = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let hosts: Vec<(String, paas_model::Host, i64)> =
                c.coord.list(&keys::hosts()).await.unwrap();
            if let Some((_, h, _)) = hosts.first() {
                break h.api_addr.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "host never registered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let req = |cmd: &[&str]| RunRequest {
        app: "tool".into(),
        release: None,
        command: cmd.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
    };

    // Without the cluster secret (any local process, any job) nothing runs.
    for secret in ["", "wrong", "test-cluster-secreT"] {
        let refused = run_remote(
            &api,
            secret,
            &req(&["sh", "-c", "touch /tmp/paas-should-not-exist"]),
            tokio::io::empty(),
            Vec::new(),
            Vec::new(),
        )
        .await;
        assert!(
            matches!(refused, Err(AttachError::Refused { status: 401, .. })),
            "{refused:?}"
        );
    }

    // A job runs as its own unprivileged user (when the agent is root): it cannot read
    // the agent's files nor list the other jobs' directories.
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let data = c.dir.path().join("h1");
        let secret = data.join("secret");
        std::fs::write(&secret, "s3cret").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let script = format!(
            "id -u; cat {} || echo refused; ls {} || echo unlisted; touch mine && echo own; echo files=$(awk '/^Max open files/ {{print $4}}' /proc/self/limits) procs=$(awk '/^Max processes/ {{print $3}}' /proc/self/limits)",
            secret.display(),
            data.join("jobs").display()
        );
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_remote(
            &api,
            SECRET,
            &req(&["sh", "-c", &script]),
            tokio::io::empty(),
            &mut out,
            &mut err,
        )
        .await
        .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert_eq!(code, 0, "{out} {}", String::from_utf8_lossy(&err));
        let uid: u32 = out.lines().next().unwrap().parse().unwrap();
        assert!(uid >= 2_000_000, "job ran as uid {uid}: {out}");
        assert!(!out.contains("s3cret"), "{out}");
        assert!(out.contains("refused") && out.contains("unlisted"), "{out}");
        assert!(out.contains("own"), "a job writes its own directory: {out}");
        assert!(
            out.contains("files=10000 procs=512"),
            "a job runs with its limits: {out}"
        );

        // A process that leaves the job's group and session (a daemon) still ends with
        // the job: everything its user owns is killed.
        let code = run_remote(
            &api,
            SECRET,
            &req(&[
                "sh",
                "-c",
                "setsid sleep 321 </dev/null >/dev/null 2>&1 & echo started",
            ]),
            tokio::io::empty(),
            tokio::io::sink(),
            tokio::io::sink(),
        )
        .await
        .unwrap();
        assert_eq!(code, 0);
        let escaped = || {
            std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x00321\x00")
                })
                .count()
        };
        wait_for(
            "the escaped daemon to be killed",
            Duration::from_secs(5),
            || async { escaped() == 0 },
        )
        .await;
    }

    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run_remote(
        &api,
        SECRET,
        &req(&["sh", "-c", "exit 7"]),
        tokio::io::empty(),
        &mut out,
        &mut err,
    )
    .await
    .unwrap();
    assert_eq!(code, 7);

    let code = run_remote(
        &api,
        SECRET,
        &req(&[
            "sh",
            "-c",
            "cat; echo \"$GREETING $APP $RELEASE\"; echo oops >&2; exit 3",
        ]),
        &b"line one\nline two\n"[..],
        &mut out,
        &mut err,
    )
    .await
    .unwrap();
    assert_eq!(code, 3);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "line one\nline two\nhi tool 1\n"
    );
    assert_eq!(String::from_utf8_lossy(&err), "oops\n");

    // A one-off job is listed while it runs (process type `run`), its output goes to the
    // app's log like any job's, and its exit code is logged when it ends.
    let running = tokio::spawn({
        let (api, r) = (
            api.clone(),
            req(&["sh", "-c", "echo from-run; sleep 2; exit 3"]),
        );
        async move {
            run_remote(
                &api,
                SECRET,
                &r,
                tokio::io::empty(),
                tokio::io::sink(),
                tokio::io::sink(),
            )
            .await
        }
    });
    let run_status = || async {
        let statuses: Vec<(String, JobStatus, i64)> =
            c.coord.list(&keys::job_statuses()).await.unwrap();
        statuses
            .into_iter()
            .map(|(_, s, _)| s)
            .find(|s| s.process_type == "run" && s.message.contains("from-run"))
    };
    wait_for(
        "the one-off job listed while it runs",
        Duration::from_secs(10),
        || async { run_status().await.is_some() },
    )
    .await;
    let listed = run_status().await.unwrap();
    assert_eq!(listed.state, JobState::Up);
    assert_eq!(running.await.unwrap().unwrap(), 3);
    let statuses: Vec<(String, JobStatus, i64)> =
        c.coord.list(&keys::job_statuses()).await.unwrap();
    assert!(
        statuses.iter().all(|(_, s, _)| s.id != listed.id),
        "an ended one-off job leaves the list"
    );
    let log = std::fs::read_to_string(
        c.dir
            .path()
            .join("h1/logs/tool")
            .join(format!("{}.log", listed.id)),
    )
    .unwrap();
    assert!(log.contains("from-run"), "{log}");
    assert!(log.contains("exited with code 3"), "{log}");

    // A signal comes back as 128 + signal.
    let code = run_remote(
        &api,
        SECRET,
        &req(&["sh", "-c", "kill -9 $$"]),
        tokio::io::empty(),
        tokio::io::sink(),
        tokio::io::sink(),
    )
    .await
    .unwrap();
    assert_eq!(code, 128 + 9);

    let mut missing = req(&["true"]);
    missing.app = "nope".into();
    let e = run_remote(
        &api,
        SECRET,
        &missing,
        tokio::io::empty(),
        tokio::io::sink(),
        tokio::io::sink(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, AttachError::Refused { status: 404, .. }), "{e}");
    let e = run_remote(
        &api,
        SECRET,
        &req(&["/no/such/program"]),
        tokio::io::empty(),
        tokio::io::sink(),
        tokio::io::sink(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, AttachError::Refused { status: 400, .. }), "{e}");

    a1.stop.cancel();
    a1.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_output_is_shipped_to_the_aggregator() {
    use paas_logshipper::aggregator::Aggregator;
    use paas_logshipper::ingest::{Ingest, IngestConfig};
    use paas_logshipper::journal::{Journal, JournalConfig, ReadBatch};
    use paas_logshipper::metrics::IngestMetrics;
    use paas_logshipper::Stream;

    let c = Cluster::start().await;
    // A real aggregator syslog input writing to its journal.
    let agg_dir = c.dir.path().join("aggregator");
    let journal = Journal::open(agg_dir.join("journal"), JournalConfig::default()).unwrap();
    let mut reader = journal.reader("check").unwrap();
    let store = std::sync::Arc::new(
        paas_logshipper::store::Store::open(paas_logshipper::store::StoreConfig::new(
            agg_dir.join("store"),
        ))
        .unwrap(),
    );
    let metrics = IngestMetrics::register(&mut prometheus_client::registry::Registry::default());
    let ingest = Ingest::start(
        IngestConfig {
            syslog_addr: Some("127.0.0.1:0".parse().unwrap()),
            ..IngestConfig::default()
        },
        Aggregator::new(journal.clone(), store, metrics),
    )
    .await
    .unwrap();

    let a1 = c.agent_logging_to("h1", [127, 0, 0, 7], ingest.syslog_addr());
    let (sched, sched_stop) = c.scheduler("s1");
    c.release(
        "chat",
        1,
        &[(
            "worker",
            "echo hello-out; echo hello-err >&2; exec sleep 1000",
        )],
        &[],
        None,
    )
    .await;
    c.scale("chat", &[("worker", 1)]).await;
    let up = c.wait_up("chat", 1, 1, Duration::from_secs(30)).await;

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 2 {
        let batch = tokio::time::timeout_at(deadline, reader.next_batch(100))
            .await
            .expect("lines reach the aggregator")
            .unwrap();
        if let ReadBatch::Lines(lines) = batch {
            seen.extend(lines);
        }
    }
    seen.sort_by(|a, b| a.message.cmp(&b.message));
    assert_eq!(seen[0].message, "hello-err");
    assert_eq!(seen[0].stream, Stream::Stderr);
    assert_eq!(seen[1].message, "hello-out");
    assert_eq!(seen[1].stream, Stream::Stdout);
    for l in &seen {
        assert_eq!(l.app, "chat");
        assert_eq!(l.process_type.as_deref(), Some("worker"));
        assert_eq!(l.job.as_deref(), Some(up[0].id.as_str()));
        assert_eq!(l.host.as_deref(), Some("h1"));
        assert!(l.timestamp_ns > 0);
    }

    sched_stop.cancel();
    sched.await.unwrap().unwrap();
    a1.stop.cancel();
    a1.task.await.unwrap().unwrap();
    ingest.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_placements_are_reported_and_do_not_stop_the_agent() {
    let c = Cluster::start().await;
    let a1 = c.agent("h1", [127, 0, 0, 8]);
    c.release("shop", 1, &[("worker", "exec sleep 1000")], &[], None)
        .await;
    let job = |id: &str, release: u64, process_type: &str| Job {
        id: id.into(),
        app: "shop".into(),
        release,
        process_type: process_type.into(),
        host: "h1".into(),
        created_at: Utc::now(),
        limits: Default::default(),
    };
    // Written as the scheduler would (no scheduler runs here): garbage, a job of a
    // release that does not exist, a type without a command, and a good job.
    c.put(&keys::placement("h1", "garbage"), &"not a job").await;
    for j in [
        job("norel", 99, "worker"),
        job("nocmd", 1, "web"),
        job("good", 1, "worker"),
    ] {
        c.put(&keys::placement("h1", &j.id), &j).await;
    }
    wait_for("statuses of all three jobs", Duration::from_secs(20), || async {
        let s = c.statuses().await;
        let find = |id: &str| s.iter().find(|s| s.id == id).cloned();
        matches!(find("good"), Some(g) if g.state == JobState::Up)
            && matches!(find("norel"), Some(n) if n.state == JobState::Crashed && n.message.contains("release 99 not found"))
            && matches!(find("nocmd"), Some(n) if n.state == JobState::Crashed && n.message.contains("no command"))
    })
    .await;
    // Removing the placements stops and forgets them.
    for id in ["norel", "nocmd", "good", "garbage"] {
        c.remove(&keys::placement("h1", id)).await;
    }
    wait_for("statuses removed", Duration::from_secs(20), || async {
        c.statuses().await.is_empty()
    })
    .await;
    a1.stop.cancel();
    a1.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_keep_running_through_a_short_etcd_outage() {
    let mut c = Cluster::start().await;
    let a1 = c.agent("h1", [127, 0, 0, 9]);
    let (sched, sched_stop) = c.scheduler("s1");
    c.release("shop", 1, &[("web", HTTP)], &[], None).await;
    c.scale("shop", &[("web", 2)]).await;
    let before = c.wait_up("shop", 2, 1, Duration::from_secs(30)).await;

    // etcd goes away for a moment (shorter than the lease TTL) and comes back with its data.
    c.etcd.stop();
    for s in &before {
        let addr = format!("127.0.0.9:{}", s.port.unwrap());
        assert!(
            http_ok(&addr).await,
            "job {} serves while etcd is down",
            s.id
        );
    }
    c.etcd.restart().expect("etcd restart");
    c.coord = connect(&c.etcd).await;

    // Same jobs, same processes, nothing moved or restarted.
    let after = c.wait_up("shop", 2, 1, Duration::from_secs(30)).await;
    let ids = |v: &[JobStatus]| {
        v.iter()
            .map(|s| (s.id.clone(), s.pid, s.restarts))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&after), ids(&before));

    sched_stop.cancel();
    sched.await.unwrap().unwrap();
    a1.stop.cancel();
    a1.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_loses_its_lease_registers_again() {
    let mut c = Cluster::start().await;
    let a1 = c.agent("h1", [127, 0, 0, 10]);
    c.release("shop", 1, &[("worker", "exec sleep 1000")], &[], None)
        .await;
    let job = Job {
        id: "w1".into(),
        app: "shop".into(),
        release: 1,
        process_type: "worker".into(),
        host: "h1".into(),
        created_at: Utc::now(),
        limits: Default::default(),
    };
    c.put(&keys::placement("h1", &job.id), &job).await;
    let before = c.wait_up("shop", 1, 1, Duration::from_secs(30)).await;

    // etcd is away for longer than the 2 s lease TTL: the agent gives its lease up as
    // lost (no renewal before the safe deadline) and stops renewing it.
    c.etcd.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.etcd.restart().expect("etcd restart");
    c.coord = connect(&c.etcd).await;

    // The restarted etcd gives the old lease one more TTL; once that has passed, the host
    // key and the job status are still there only if the agent registered again on a
    // new lease and rewrote them on it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let hosts: Vec<(String, paas_model::Host, i64)> = c.coord.list(&keys::hosts()).await.unwrap();
    assert_eq!(
        hosts
            .iter()
            .map(|(_, h, _)| h.id.as_str())
            .collect::<Vec<_>>(),
        vec!["h1"]
    );
    let after = c.wait_up("shop", 1, 1, Duration::from_secs(10)).await;
    // The job itself ran on throughout: same process, no restart.
    assert_eq!(
        (after[0].pid, after[0].restarts),
        (before[0].pid, before[0].restarts)
    );

    a1.stop.cancel();
    a1.task.await.unwrap().unwrap();
}

/// The cgroup directory of `pid` in the hierarchy mounted at `mount` whose
/// `/proc/PID/cgroup` line names `controller`.
fn cgroup_dir_of(pid: u32, controller: &str, mount: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = text
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            list.split(',').any(|c| c == controller).then_some(path)
        })
        .unwrap_or_else(|| panic!("no {controller} line in {text}"));
    Path::new(mount).join(path.trim_start_matches('/'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_under_their_memory_and_cpu_limits() {
    let bases = paas_host::cgroups::Cgroups::detect("h1")
        .bases()
        .cloned()
        .expect("this test needs cgroup memory and cpu controllers (run as root)");
    let c = Cluster::start().await;
    let a1 = c.agent("h1", [127, 0, 0, 11]);
    c.release(
        "shop",
        1,
        &[
            ("capped", "sleep 1000 & exec sleep 1000"),
            (
                "hog",
                "exec python3 -c 'import time; b = bytearray(256 << 20); time.sleep(1000)'",
            ),
        ],
        &[],
        None,
    )
    .await;
    let job = |id: &str, process_type: &str, limits: paas_model::Limits| Job {
        id: id.into(),
        app: "shop".into(),
        release: 1,
        process_type: process_type.into(),
        host: "h1".into(),
        created_at: Utc::now(),
        limits,
    };
    let capped = job(
        "capped",
        "capped",
        paas_model::Limits {
            memory: Some(64 << 20),
            cpu_millis: Some(200),
        },
    );
    let hog = job(
        "hog",
        "hog",
        paas_model::Limits {
            memory: Some(64 << 20),
            cpu_millis: None,
        },
    );
    for j in [&capped, &hog] {
        c.put(&keys::placement("h1", &j.id), j).await;
    }
    // The hog is killed by the kernel at its limit, and the status says why.
    wait_for(
        "the hog killed for memory",
        Duration::from_secs(30),
        || async {
            c.statuses().await.iter().any(|s| {
                s.id == "hog"
                    && s.state == JobState::Crashed
                    && s.message.contains("out of memory (limit 64 MiB)")
            })
        },
    )
    .await;

    // The capped job, the shim and what the job forked are in the job's groups, with
    // the formation's limits.
    let status = c
        .statuses()
        .await
        .into_iter()
        .find(|s| s.id == "capped" && s.state == JobState::Up)
        .expect("capped job up");
    let shim = status.pid.unwrap();
    let (mem_mount, cpu_mount) = match bases.version {
        paas_host::cgroups::Version::V1 => (
            bases
                .memory
                .ancestors()
                .find(|p| p.parent() == Some(Path::new("/sys/fs/cgroup")))
                .unwrap()
                .to_path_buf(),
            bases
                .cpu
                .ancestors()
                .find(|p| p.parent() == Some(Path::new("/sys/fs/cgroup")))
                .unwrap()
                .to_path_buf(),
        ),
        paas_host::cgroups::Version::V2 => {
            panic!("written for the legacy hierarchy of these machines")
        }
    };
    let memory = cgroup_dir_of(shim, "memory", mem_mount.to_str().unwrap());
    let cpu = cgroup_dir_of(shim, "cpu", cpu_mount.to_str().unwrap());
    assert_eq!(memory, bases.memory.join("capped"));
    assert_eq!(cpu, bases.cpu.join("capped"));
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap().trim().to_string();
    assert_eq!(
        read(memory.join("memory.limit_in_bytes")),
        (64u64 << 20).to_string()
    );
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "20000");
    assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
    let members: Vec<u32> = read(memory.join("cgroup.procs"))
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(
        members.len(),
        3,
        "shim, job and its background child: {members:?}"
    );
    assert!(members.contains(&shim));

    // Removing the placements stops the jobs and removes their groups.
    for id in ["capped", "hog"] {
        c.remove(&keys::placement("h1", id)).await;
    }
    wait_for("job cgroups removed", Duration::from_secs(20), || async {
        !memory.exists() && !cpu.exists() && !bases.memory.join("hog").exists()
    })
    .await;
    a1.stop.cancel();
    a1.task.await.unwrap().unwrap();
}
