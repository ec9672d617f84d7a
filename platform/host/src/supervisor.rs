//! Supervises one job: runs `sh -c COMMAND` under a [`Shim`] that leads the job's own
//! process group, in the job's working directory, captures its output, checks its
//! health, restarts it with backoff when it exits or fails its check, and stops it on
//! request. Each group is recorded in the data dir ([`Groups`]) until it is killed.
//!
//! Life of a job, as published on the [`Report`] watch channel:
//! `Starting` (spawned; waiting for the first passing check, if there is one) -> `Up` ->
//! on exit or [`UNHEALTHY_AFTER`] failed checks in a row: `Crashed` (whole group killed,
//! waiting [`backoff`]) -> `Starting` ... ; on a stop request from any state: `Stopping`
//! (SIGTERM to the group, SIGKILL after the grace period) -> `Down`, and the task ends.
//!
//! Invariants: no process of the group outlives an exit, a health failure or a stop (the
//! whole group is SIGKILLed before a restart), nor the agent (the shim SIGKILLs the group
//! when the agent dies); the restart delay is a pure function of the quick-crash streak
//! and the uptime.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use paas_logshipper::Stream;
use paas_model::{format_memory, Job, JobState};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::capture::{self, LineOrigin, LogSink};
use crate::cgroups::{Cgroups, JobCgroup};
use crate::health::{self, Check, Exposure};
use crate::reaper::Groups;
use crate::shim::Shim;
use crate::users::JobUser;

/// First restart delay after a quick crash.
pub const BASE_DELAY: Duration = Duration::from_millis(200);
/// Longest restart delay.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// A run at least this long resets the quick-crash streak.
pub const STABLE_UPTIME: Duration = Duration::from_secs(10);
/// Failed checks in a row that make an `Up` job count as crashed.
pub const UNHEALTHY_AFTER: u32 = 3;
/// How long a job may stay `Starting` without passing its check before it is restarted.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a job is restarted, and how soon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    /// Wait this long first.
    pub delay: Duration,
    /// Quick crashes in a row, this one included (0 after a stable run).
    pub streak: u32,
    /// Why this delay.
    pub reason: RestartReason,
}

/// The reason behind a [`Restart`]'s delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartReason {
    /// It ran for at least [`STABLE_UPTIME`]: restart after the base delay.
    AfterStableRun,
    /// It crashed quickly again: exponential delay.
    QuickCrash,
}

/// Decides the restart delay from the quick-crash streak before this exit and the uptime
/// of the run that just ended: `BASE_DELAY * 2^streak`, capped at [`MAX_DELAY`]; a stable
/// run resets the streak.
pub fn backoff(streak: u32, uptime: Duration) -> Restart {
    if uptime >= STABLE_UPTIME {
        return Restart {
            delay: BASE_DELAY,
            streak: 0,
            reason: RestartReason::AfterStableRun,
        };
    }
    let delay = BASE_DELAY
        .checked_mul(1u32 << streak.min(16))
        .unwrap_or(MAX_DELAY)
        .min(MAX_DELAY);
    Restart {
        delay,
        streak: streak + 1,
        reason: RestartReason::QuickCrash,
    }
}

/// A process exit as a shell would report it: the code, or 128 + signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Describes an exit for people (`exit code 3`, `killed by signal 9`).
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "exited".to_string(),
    }
}

/// The environment of a job: the release's env, then `PORT`, `HOST_IP` (the address to
/// bind), `APP`, `RELEASE` and `JOB_ID` (which win over release values of the same name),
/// plus `PATH` and `HOME` when the release does not set them.
pub fn job_env(
    release_env: &BTreeMap<String, String>,
    job: &Job,
    addr: SocketAddr,
    workdir: &Path,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_string()),
    );
    env.insert("HOME".to_string(), workdir.display().to_string());
    env.extend(release_env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.insert("PORT".to_string(), addr.port().to_string());
    env.insert("HOST_IP".to_string(), addr.ip().to_string());
    env.insert("APP".to_string(), job.app.clone());
    env.insert("RELEASE".to_string(), job.release.to_string());
    env.insert("JOB_ID".to_string(), job.id.clone());
    env
}

/// Spawns `sh -c command` under `shim`, the shim leading a new process group, with
/// exactly `env`, in `workdir`, as `user` when given, in `cgroup` when given, stdout
/// and stderr piped. The child
/// is the shim: its pid is the group's id and its exit mirrors the job's.
pub fn spawn_group(
    shim: &Shim,
    command: &str,
    env: &BTreeMap<String, String>,
    workdir: &Path,
    user: Option<u32>,
    stdin: Stdio,
    cgroup: Option<&JobCgroup>,
) -> std::io::Result<Child> {
    let mut cmd = shim.command("sh".as_ref(), &["-c".as_ref(), command.as_ref()], user);
    cmd.stdin(stdin);
    group_command(&mut cmd, env, workdir);
    if let Some(c) = cgroup {
        c.enter_at_exec(&mut cmd);
    }
    cmd.spawn()
}

/// Sets what every job's shim gets: exactly `env`, `workdir`, piped stdout/stderr, its
/// own process group, killed when the `Child` is dropped, and a SIGTERM from the kernel
/// when the agent dies (parent-death signal), on which the shim SIGKILLs the group; the
/// child exits at once if the agent died before the signal was armed.
pub fn group_command(cmd: &mut Command, env: &BTreeMap<String, String>, workdir: &Path) {
    cmd.env_clear()
        .envs(env)
        .current_dir(workdir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let agent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2)
    // and getppid(2), which are async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != agent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Sends `signal` to the process group led by `pgid` (absent groups are fine).
pub fn signal_group(pgid: u32, signal: i32) {
    // SAFETY: kill(2) with a negative pid only sends a signal; no memory is involved.
    let rc = unsafe { libc::kill(-(pgid as i32), signal) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(pgid, signal, error = %err, "signalling process group failed");
        }
    }
}

/// Kills a process group and forgets its record when dropped, so a dropped supervisor
/// (an aborted agent task) leaves no process behind.
pub struct GroupGuard {
    pgid: u32,
    groups: Groups,
    /// The job's own user: every process of it is killed too, also those that left the
    /// group (`setsid`, double forks).
    user: Option<u32>,
}

impl GroupGuard {
    /// Records the group led by `pgid` for `job` (a failure is logged: the shim still
    /// covers the agent's death, only the start-up sweep will not know the group).
    pub fn record(groups: &Groups, job: &str, pgid: u32) -> GroupGuard {
        if let Err(e) = groups.record(job, pgid) {
            tracing::warn!(job, pgid, error = %e, "recording the process group failed");
        }
        GroupGuard {
            pgid,
            groups: groups.clone(),
            user: None,
        }
    }

    /// Also kills every process of `uid` (the job's own user) when dropped.
    pub fn with_user(mut self, uid: Option<u32>) -> GroupGuard {
        self.user = uid;
        self
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.pgid, libc::SIGKILL);
        if let Some(uid) = self.user {
            crate::users::kill_all(uid);
        }
        self.groups.forget(self.pgid);
    }
}

/// SIGTERM to the group, SIGKILL after `grace`; returns the leader's exit.
pub async fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let pgid = child.id()?;
    signal_group(pgid, libc::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            tracing::info!(pgid, "grace period over: SIGKILL");
            signal_group(pgid, libc::SIGKILL);
            child.wait().await.ok()
        }
    };
    // Stragglers that ignored SIGTERM while the leader exited.
    signal_group(pgid, libc::SIGKILL);
    status
}

/// What a supervisor publishes about its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Lifecycle state.
    pub state: JobState,
    /// Process group leader, while running.
    pub pid: Option<u32>,
    /// Restarts so far.
    pub restarts: u32,
    /// When the current process started.
    pub started_at: Option<DateTime<Utc>>,
    /// Why it is in this state.
    pub message: String,
}

/// Everything needed to run one job.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The placement.
    pub job: Job,
    /// Shell command (the release's process type command).
    pub command: String,
    /// Complete environment (see [`job_env`]).
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: PathBuf,
    /// Address the job listens on (`job_ip:$PORT`).
    pub addr: SocketAddr,
    /// Discovery exposure and health check.
    pub exposure: Exposure,
    /// SIGTERM -> SIGKILL grace period.
    pub stop_grace: Duration,
    /// Time between checks once up.
    pub check_interval: Duration,
    /// How the job's shim is started.
    pub shim: Shim,
    /// The unprivileged user the job runs as (`None`: the agent's); held while the job
    /// exists.
    pub user: Option<Arc<JobUser>>,
    /// Where the job's process groups are recorded.
    pub groups: Groups,
    /// Where the job's cgroup goes when it has limits.
    pub cgroups: Cgroups,
}

impl JobSpec {
    /// The IP the job listens on.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
}

/// How one run of the process ended.
enum Ended {
    Exited(String),
    Unhealthy(String),
    StopRequested,
}

/// Runs the job until `stop` is cancelled, publishing its state on `report`.
pub async fn supervise(
    spec: JobSpec,
    sink: LogSink,
    origin: LineOrigin,
    stop: CancellationToken,
    report: watch::Sender<Report>,
) {
    let mut streak = 0;
    let mut restarts = 0;
    // The job's cgroup when it has limits: made before the first start, kept across
    // restarts, removed when the job ends.
    let mut cgroup: Option<JobCgroup> = None;
    loop {
        let started = Instant::now();
        // A limited job never runs without its cgroup: failing to make one is a
        // failed start like a failed spawn.
        let mut refused = None;
        if cgroup.is_none() && !spec.job.limits.is_unlimited() {
            match spec.cgroups.create(&spec.job.id, &spec.job.limits) {
                Ok(c) => cgroup = Some(c),
                Err(e) => refused = Some(e.to_string()),
            }
        }
        let oom_before = cgroup.as_ref().map_or(0, JobCgroup::oom_kills);
        let spawned = match refused {
            Some(why) => Err(why),
            None => spawn_group(
                &spec.shim,
                &spec.command,
                &spec.env,
                &spec.workdir,
                spec.user.as_ref().map(|u| u.id),
                Stdio::null(),
                cgroup.as_ref(),
            )
            .map_err(|e| e.to_string()),
        };
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(job = %spec.job.id, error = %e, "cannot start job");
                let next = backoff(streak, Duration::ZERO);
                if !crashed(
                    &report,
                    &stop,
                    format!("cannot start: {e}"),
                    &next,
                    restarts,
                )
                .await
                {
                    return;
                }
                streak = next.streak;
                restarts += 1;
                continue;
            }
        };
        let pid = child.id();
        let _group = pid.map(|p| {
            GroupGuard::record(&spec.groups, &spec.job.id, p)
                .with_user(spec.user.as_ref().map(|u| u.id))
        });
        report.send_replace(Report {
            state: JobState::Starting,
            pid,
            restarts,
            started_at: Some(Utc::now()),
            message: format!(
                "started {}",
                pid.map(|p| format!("pid {p}")).unwrap_or_default()
            ),
        });
        tracing::info!(job = %spec.job.id, pid, restarts, "job started");
        let pumps = start_capture(&mut child, &sink, &origin);
        let ended = watch_run(&mut child, &spec, &report, &stop).await;
        let message = match ended {
            Ended::StopRequested => {
                report.send_modify(|r| {
                    r.state = JobState::Stopping;
                    r.message = "stopping".into();
                });
                let status = terminate(&mut child, spec.stop_grace).await;
                finish_capture(pumps).await;
                let how = status.map(describe_exit).unwrap_or_else(|| "gone".into());
                tracing::info!(job = %spec.job.id, %how, "job stopped");
                report.send_replace(Report {
                    state: JobState::Down,
                    pid: None,
                    restarts,
                    started_at: None,
                    message: format!("stopped ({how})"),
                });
                return;
            }
            Ended::Exited(how) => match &cgroup {
                Some(c) if c.oom_kills() > oom_before => format!(
                    "{how}: out of memory (limit {})",
                    spec.job
                        .limits
                        .memory
                        .map(format_memory)
                        .unwrap_or_default()
                ),
                _ => how,
            },
            Ended::Unhealthy(why) => {
                terminate(&mut child, spec.stop_grace).await;
                format!("health check failed: {why}")
            }
        };
        if let Some(pgid) = pid {
            signal_group(pgid, libc::SIGKILL);
        }
        finish_capture(pumps).await;
        let next = backoff(streak, started.elapsed());
        tracing::warn!(job = %spec.job.id, %message, delay = ?next.delay, reason = ?next.reason, "job crashed; restarting");
        if !crashed(&report, &stop, message, &next, restarts).await {
            return;
        }
        streak = next.streak;
        restarts += 1;
    }
}

/// Publishes `Crashed` and waits out the delay; false if a stop came meanwhile
/// (then `Down` is published).
async fn crashed(
    report: &watch::Sender<Report>,
    stop: &CancellationToken,
    message: String,
    next: &Restart,
    restarts: u32,
) -> bool {
    report.send_replace(Report {
        state: JobState::Crashed,
        pid: None,
        restarts,
        started_at: None,
        message: format!("{message}; restarting in {:?}", next.delay),
    });
    tokio::select! {
        _ = stop.cancelled() => {
            report.send_modify(|r| {
                r.state = JobState::Down;
                r.message = format!("stopped after: {message}");
            });
            false
        }
        _ = tokio::time::sleep(next.delay) => true,
    }
}

/// Waits for exit, a stop request, or a decisive health result.
async fn watch_run(
    child: &mut Child,
    spec: &JobSpec,
    report: &watch::Sender<Report>,
    stop: &CancellationToken,
) -> Ended {
    let check: Option<&Check> = match &spec.exposure {
        Exposure::Service { check } => check.as_ref(),
        Exposure::Internal => None,
    };
    let started = Instant::now();
    let mut up = false;
    let mut failures = 0;
    if check.is_none() {
        set_up(report, "running".into());
        up = true;
    }
    loop {
        let delay = if up {
            spec.check_interval
        } else {
            Duration::from_millis(200)
        };
        tokio::select! {
            status = child.wait() => {
                return Ended::Exited(match status {
                    Ok(s) => describe_exit(s),
                    Err(e) => format!("wait failed: {e}"),
                });
            }
            _ = stop.cancelled() => return Ended::StopRequested,
            _ = tokio::time::sleep(delay), if check.is_some() => {
                let Some(check) = check else { continue };
                match health::probe(check, spec.addr).await {
                    Ok(()) => {
                        failures = 0;
                        if !up {
                            up = true;
                            set_up(report, format!("healthy ({check:?} on {})", spec.addr));
                        }
                    }
                    Err(why) if up => {
                        failures += 1;
                        tracing::warn!(job = %spec.job.id, %why, failures, "health check failed");
                        if failures >= UNHEALTHY_AFTER {
                            return Ended::Unhealthy(why);
                        }
                    }
                    Err(why) => {
                        if started.elapsed() >= START_TIMEOUT {
                            return Ended::Unhealthy(format!("not healthy after {START_TIMEOUT:?}: {why}"));
                        }
                    }
                }
            }
        }
    }
}

fn set_up(report: &watch::Sender<Report>, message: String) {
    report.send_modify(|r| {
        r.state = JobState::Up;
        r.message = message;
    });
}

type Pumps = Vec<tokio::task::JoinHandle<()>>;

fn start_capture(child: &mut Child, sink: &LogSink, origin: &LineOrigin) -> Pumps {
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(spawn_pump(
            sink.clone(),
            origin.clone(),
            Stream::Stdout,
            out,
        ));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(spawn_pump(
            sink.clone(),
            origin.clone(),
            Stream::Stderr,
            err,
        ));
    }
    pumps
}

fn spawn_pump(
    sink: LogSink,
    origin: LineOrigin,
    stream: Stream,
    output: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = capture::pump(&sink, &origin, stream, output).await {
            tracing::warn!(job = %origin.job, error = %e, "capturing job output failed");
        }
    })
}

/// Waits briefly for the pipes to drain (the group is gone, so they close), then gives up
/// on any pipe a detached process still holds.
async fn finish_capture(pumps: Pumps) {
    for mut pump in pumps {
        if tokio::time::timeout(Duration::from_secs(2), &mut pump)
            .await
            .is_err()
        {
            pump.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(streak: u32, uptime_ms: u64, delay_ms: u64, next_streak: u32) {
        let r = backoff(streak, Duration::from_millis(uptime_ms));
        assert_eq!(
            (r.delay, r.streak),
            (Duration::from_millis(delay_ms), next_streak),
            "streak {streak} uptime {uptime_ms}ms: {r:?}"
        );
    }

    #[test]
    fn backoff_doubles_on_quick_crashes_and_resets_after_stable_runs() {
        check(0, 0, 200, 1);
        check(1, 500, 400, 2);
        check(3, 9_999, 1_600, 4);
        check(7, 100, 25_600, 8);
        check(8, 100, 30_000, 9);
        check(40, 100, 30_000, 41);
        check(40, 10_000, 200, 0);
        assert_eq!(
            backoff(5, STABLE_UPTIME).reason,
            RestartReason::AfterStableRun
        );
        assert_eq!(backoff(5, Duration::ZERO).reason, RestartReason::QuickCrash);
    }

    #[test]
    fn job_env_sets_runtime_variables_over_release_ones() {
        let job = Job {
            id: "j1".into(),
            app: "shop".into(),
            release: 4,
            process_type: "web".into(),
            host: "h1".into(),
            created_at: Utc::now(),
            limits: Default::default(),
        };
        let release: BTreeMap<String, String> =
            [("PORT", "1"), ("DATABASE_URL", "pg://x"), ("HOME", "/h")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let env = job_env(
            &release,
            &job,
            "127.0.0.3:5000".parse().unwrap(),
            Path::new("/w"),
        );
        assert_eq!(env["PORT"], "5000");
        assert_eq!(env["HOST_IP"], "127.0.0.3");
        assert_eq!(env["APP"], "shop");
        assert_eq!(env["RELEASE"], "4");
        assert_eq!(env["JOB_ID"], "j1");
        assert_eq!(env["DATABASE_URL"], "pg://x");
        assert_eq!(env["HOME"], "/h");
        assert!(env.contains_key("PATH"));
    }
}
