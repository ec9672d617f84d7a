//! No job process outlives its agent: the agent as a process of its own
//! (`paas-host-agent`, with its `job-shim` subcommand as the shim), jobs that fork,
//! `kill -9` of the agent, of a shim alone, and an agent restarted on a data dir where
//! an earlier run (agent and shims killed together) left processes. Also the shim's own
//! contract: exit codes and signals mirrored, a group that ignores SIGTERM killed.
//!
//! Placements are written directly to etcd; no scheduler runs.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use paas_coord::{Batch, Coord};
use paas_host::shim::{Shim, SUBCOMMAND};
use paas_host::supervisor::{exit_code, spawn_group, terminate};
use paas_it::processes;
use paas_model::keys;
use paas_model::{App, Host, Job, Release};

const AGENT: &str = env!("CARGO_BIN_EXE_paas-host-agent");
const PREFIX: &str = "paas";

fn shim() -> Shim {
    Shim::new(AGENT, [SUBCOMMAND])
}

/// A unique `sleep` argument, so the test finds its own processes only.
fn marker() -> String {
    format!("1000.{}{:06}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_micros()
}

/// The job's `sleep MARKER` processes.
fn sleeps(marker: &str) -> Vec<u32> {
    processes(|a| a.len() == 2 && a[0].ends_with("sleep") && a[1] == marker)
}

/// The shims running a job whose command holds `marker`.
fn shims(marker: &str) -> Vec<u32> {
    processes(|a| {
        a.get(1).map(String::as_str) == Some(SUBCOMMAND) && a.iter().any(|x| x.contains(marker))
    })
}

/// Polls `cond` every 10 ms for at most `limit`; how long it took, if it came true.
async fn wait_until(limit: Duration, cond: impl Fn() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn kill(pid: u32, signal: i32) {
    // SAFETY: kill(2) of a process this test started (or one of its jobs).
    unsafe { libc::kill(pid as i32, signal) };
}

struct Fixture {
    etcd: paas_it::EtcdServer,
    coord: Coord,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Fixture {
        let etcd = paas_it::EtcdServer::start().expect("etcd");
        let coord = Coord::connect(&[etcd.endpoint()], PREFIX, Duration::from_secs(5))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Jobs run as their own users: they must be able to reach their directories.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("artifacts")).unwrap();
        Fixture { etcd, coord, dir }
    }

    async fn put<T: serde::Serialize>(&self, key: &str, value: &T) {
        let mut batch = Batch::new();
        batch.put(key, value).unwrap();
        self.coord.commit(batch).await.unwrap();
    }

    /// Release 1 of app `a` with a `worker` process running `command`, placed on `host`.
    async fn place(&self, host: &str, job: &str, command: &str) {
        let release = Release {
            app: "a".into(),
            version: 1,
            env: BTreeMap::new(),
            processes: BTreeMap::from([("worker".to_string(), command.to_string())]),
            artifact: None,
            description: "release 1".into(),
            created_at: Utc::now(),
        };
        self.put(&keys::release("a", 1), &release).await;
        let app = App {
            name: "a".into(),
            created_at: Utc::now(),
            release: 1,
        };
        self.put(&keys::app("a"), &app).await;
        let placement = Job {
            id: job.into(),
            app: "a".into(),
            release: 1,
            process_type: "worker".into(),
            host: host.into(),
            created_at: Utc::now(),
            limits: Default::default(),
        };
        self.put(&keys::placement(host, job), &placement).await;
    }

    async fn unplace(&self, host: &str, job: &str) {
        let mut batch = Batch::new();
        batch.remove(&keys::placement(host, job));
        self.coord.commit(batch).await.unwrap();
    }

    /// Whether an agent started at or after `since` has registered as `host`.
    async fn registered_since(&self, host: &str, since: chrono::DateTime<Utc>) -> bool {
        matches!(
            self.coord.get::<Host>(&keys::host(host)).await,
            Ok(Some((h, _))) if h.started_at >= since
        )
    }

    /// `paas-host-agent` as a child process, its log in the scratch dir.
    fn agent(&self, id: &str) -> AgentProcess {
        let log = std::fs::File::create(self.dir.path().join(format!("{id}.log"))).unwrap();
        std::process::Command::new(AGENT)
            .arg(id)
            .arg(self.etcd.endpoint())
            .arg(PREFIX)
            .arg(self.dir.path().join(id))
            .arg(self.dir.path().join("artifacts"))
            .arg("127.0.0.1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(AgentProcess)
            .unwrap()
    }
}

/// An agent process, SIGKILLed and reaped when dropped (so a failed test leaves none).
struct AgentProcess(Child);

impl AgentProcess {
    fn id(&self) -> u32 {
        self.0.id()
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            kill(self.0.id(), libc::SIGKILL);
            let _ = self.0.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_job_process_outlives_an_agent_killed_with_sigkill() {
    let f = Fixture::start().await;
    let marker = marker();
    f.place(
        "h1",
        "j1",
        &format!("sh -c 'sleep {marker} & sleep {marker}'"),
    )
    .await;
    let mut agent = f.agent("h1");
    assert!(
        wait_until(Duration::from_secs(20), || sleeps(&marker).len() == 2)
            .await
            .is_some(),
        "the job's two sleeps never ran"
    );
    kill(agent.id(), libc::SIGKILL);
    let killed = Instant::now();
    agent.wait().unwrap();
    let gone = wait_until(Duration::from_secs(2), || {
        sleeps(&marker).is_empty() && shims(&marker).is_empty()
    })
    .await;
    let left = sleeps(&marker);
    assert!(
        gone.is_some(),
        "{} sleeps left 2 s after kill -9 of the agent: {left:?}",
        left.len()
    );
    eprintln!(
        "every job process gone {:?} after kill -9 of the agent",
        killed.elapsed()
    );
    assert!(killed.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_kills_what_an_earlier_run_left_before_starting_anything() {
    let f = Fixture::start().await;
    let marker = marker();
    f.place(
        "h2",
        "j2",
        &format!("sh -c 'sleep {marker} & sleep {marker}'"),
    )
    .await;
    let mut agent = f.agent("h2");
    assert!(
        wait_until(Duration::from_secs(20), || sleeps(&marker).len() == 2)
            .await
            .is_some(),
        "the job's two sleeps never ran"
    );
    // Agent and shims killed together (as `pkill -9 paas` would): stop the agent so it
    // cannot react, kill its shims, then the agent.
    kill(agent.id(), libc::SIGSTOP);
    let shim_pids = shims(&marker);
    assert_eq!(shim_pids.len(), 1, "one shim per job");
    for pid in shim_pids {
        kill(pid, libc::SIGKILL);
    }
    kill(agent.id(), libc::SIGKILL);
    agent.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let orphans = sleeps(&marker);
    assert!(
        !orphans.is_empty(),
        "the scenario needs a job process that outlived agent and shim"
    );
    // The restarted agent has no placement: whatever of the marker is left is old.
    f.unplace("h2", "j2").await;
    let started = Instant::now();
    let since = Utc::now();
    let mut again = f.agent("h2");
    while !f.registered_since("h2", since).await {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the restarted agent never registered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        sleeps(&marker),
        Vec::<u32>::new(),
        "orphans {orphans:?} still there when the restarted agent registered"
    );
    eprintln!(
        "{} orphaned sleep(s) killed by the sweep; agent registered {:?} after start",
        orphans.len(),
        started.elapsed()
    );
    kill(again.id(), libc::SIGTERM);
    again.wait().unwrap();
    assert!(
        !f.dir
            .path()
            .join("h2/groups")
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(false),
        "no process group record left after a clean stop"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_shim_takes_its_job_with_it_and_the_agent_restarts_the_job() {
    let f = Fixture::start().await;
    let marker = marker();
    f.place(
        "h3",
        "j3",
        &format!("sh -c 'sleep {marker} & sleep {marker}'"),
    )
    .await;
    let _agent = f.agent("h3");
    assert!(
        wait_until(Duration::from_secs(20), || sleeps(&marker).len() == 2)
            .await
            .is_some(),
        "the job's two sleeps never ran"
    );
    let old = sleeps(&marker);
    let shim_pids = shims(&marker);
    assert_eq!(shim_pids.len(), 1, "one shim per job");
    kill(shim_pids[0], libc::SIGKILL);
    let killed = Instant::now();
    let gone = wait_until(Duration::from_secs(2), || {
        sleeps(&marker).iter().all(|p| !old.contains(p))
    })
    .await;
    assert!(
        gone.is_some(),
        "the job's processes {old:?} outlived its shim"
    );
    eprintln!(
        "the job's processes gone {:?} after kill -9 of its shim",
        killed.elapsed()
    );
    // The agent saw the job end and starts it again.
    assert!(
        wait_until(Duration::from_secs(10), || sleeps(&marker).len() == 2)
            .await
            .is_some(),
        "the job was not restarted"
    );
}

#[tokio::test]
async fn the_shim_mirrors_exit_codes_and_signals() {
    let env = BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = spawn_group(
        &shim(),
        "exit 7",
        &env,
        dir.path(),
        None,
        Stdio::null(),
        None,
    )
    .unwrap();
    assert_eq!(exit_code(c.wait().await.unwrap()), 7);
    let mut c = spawn_group(
        &shim(),
        "sleep 30",
        &env,
        dir.path(),
        None,
        Stdio::null(),
        None,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = terminate(&mut c, Duration::from_secs(5)).await.unwrap();
    assert_eq!(exit_code(status), 128 + libc::SIGTERM);
}

#[tokio::test]
async fn terminate_kills_a_group_that_ignores_sigterm() {
    let env = BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]);
    let dir = tempfile::tempdir().unwrap();
    // The shell ignores TERM and so does its background child; both must die.
    // The pid is written to a temporary file and renamed, so the test never
    // reads a file the shell has created but not yet written.
    let mut c = spawn_group(
        &shim(),
        "trap '' TERM; sleep 60 & echo $! > child.tmp; mv child.tmp child.pid; wait",
        &env,
        dir.path(),
        None,
        Stdio::null(),
        None,
    )
    .unwrap();
    let pid_file = dir.path().join("child.pid");
    while !pid_file.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let child_pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = terminate(&mut c, Duration::from_millis(300)).await.unwrap();
    assert_eq!(exit_code(status), 128 + libc::SIGKILL);
    let gone = wait_until(Duration::from_secs(2), || {
        processes(|_| true).iter().all(|p| *p != child_pid)
    })
    .await;
    assert!(gone.is_some(), "background child {child_pid} survived");
}
