//! The job shim: a tiny process between the agent and each job, so that no job process
//! outlives its agent, whatever kills the agent (SIGKILL, OOM, panic).
//!
//! Process tree of one job:
//!
//! ```text
//! agent ── shim            leader of the job's process group; parent-death signal SIGTERM
//!           └─ sh -c CMD   same group; parent-death signal SIGKILL
//!               └─ ...     same group (whatever the job forks)
//! ```
//!
//! The shim is the agent's own executable run with a hidden subcommand ([`SUBCOMMAND`],
//! see [`Shim`]); its arguments are `AGENT_PID [--as UID] [--] PROGRAM ARGS...`: with
//! `--as`, the job runs as that uid and gid (no supplementary groups) with the
//! [`JOB_LIMITS`] (open files, processes), switched in the
//! job's process after the shim, still root, has entered the working directory. It blocks every
//! catchable signal and waits for them with `sigtimedwait` (waking at least every
//! [`POLL`] as a backstop); on every wake it asks [`decide`]:
//! - the agent is gone (the shim's parent pid is no longer the agent's; the kernel sends
//!   the parent-death signal the moment the agent dies, however it dies): SIGKILL to the
//!   whole group, the shim included;
//! - the job's leader exited: the shim exits the same way (same code, or same signal), so
//!   the agent sees the job's own exit; the agent then SIGKILLs what is left of the group;
//! - otherwise keep waiting: a signal the agent sent to the group was meant for the job
//!   (which got it too), and a parent-death signal with the agent still the parent only
//!   means the agent's thread that spawned the shim ended.
//!
//! If the shim itself is SIGKILLed (the agent's SIGKILL to the group, or anyone's), the
//! leader dies with it (its parent-death signal) and the agent, which waits on the shim,
//! SIGKILLs the rest of the group. If the agent and its shims die together (`pkill -9`),
//! the next agent's start-up sweep ([`crate::reaper`]) kills what is left.
//!
//! [`decide`] is pure; [`main`] is the only I/O and uses no async runtime.

use std::ffi::{OsStr, OsString};
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::time::Duration;

/// The hidden subcommand of an agent binary that runs the shim (`paas job-shim ...`).
pub const SUBCOMMAND: &str = "job-shim";

/// Limits of a job that runs as its own user (`--as`): open files, and processes of
/// its uid, which is the job's alone, so it bounds a fork bomb to this job. The values
/// are Heroku's for a standard dyno's files and a generous process count.
pub const JOB_LIMITS: [(libc::__rlimit_resource_t, libc::rlim_t); 2] =
    [(libc::RLIMIT_NOFILE, 10_000), (libc::RLIMIT_NPROC, 512)];

/// Longest time between two looks at the parent and the leader.
pub const POLL: Duration = Duration::from_millis(250);

/// How the agent starts a shim: `PROGRAM ARGS... AGENT_PID -- JOB...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shim {
    /// The executable (default `/proc/self/exe`: the agent's own binary, even if the file
    /// was replaced since it started).
    pub program: PathBuf,
    /// Arguments before the shim's own (default: [`SUBCOMMAND`]).
    pub args: Vec<OsString>,
}

impl Shim {
    /// The agent's own executable with [`SUBCOMMAND`]: right for any binary that
    /// dispatches that subcommand to [`main`] (the `paas` binary does).
    pub fn current_exe() -> Shim {
        Shim {
            program: PathBuf::from("/proc/self/exe"),
            args: vec![OsString::from(SUBCOMMAND)],
        }
    }

    /// `program args...` as the shim.
    pub fn new(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Shim {
        Shim {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
        }
    }

    /// The command that runs `program args` under a shim whose agent is this process,
    /// as user `user` (uid = gid) when given.
    pub fn command(
        &self,
        program: &OsStr,
        args: &[&OsStr],
        user: Option<u32>,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args).arg(std::process::id().to_string());
        if let Some(uid) = user {
            cmd.arg("--as").arg(uid.to_string());
        }
        cmd.arg("--").arg(program).args(args);
        cmd
    }
}

/// How the job's leader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderExit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

/// What the shim does after a wake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The agent is gone: SIGKILL the whole group, the shim included.
    KillGroup {
        /// Why, for people.
        reason: String,
    },
    /// The leader ended and the agent is there: end the same way.
    Exit(LeaderExit),
    /// Nothing decisive: wait for the next signal or poll.
    Wait,
}

/// Decides from the agent's pid, the shim's current parent pid and the leader's exit
/// (if it has exited). The agent's absence wins over everything: then nobody would kill
/// what the leader leaves behind.
pub fn decide(agent_pid: u32, parent_now: u32, leader: Option<LeaderExit>) -> Action {
    if parent_now != agent_pid {
        return Action::KillGroup {
            reason: format!("agent {agent_pid} is gone (parent is now {parent_now})"),
        };
    }
    match leader {
        Some(exit) => Action::Exit(exit),
        None => Action::Wait,
    }
}

/// Why the shim could not run its job.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The arguments are not `AGENT_PID -- PROGRAM ARGS...`.
    #[error("usage: {SUBCOMMAND} AGENT_PID -- PROGRAM [ARGS...]")]
    Usage,
    /// The agent died before the shim started its job.
    #[error("agent {0} is already gone")]
    AgentGone(u32),
    /// A system call failed.
    #[error("{what}: {source}")]
    Os {
        /// Which call.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The job's program could not be started.
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        /// The program.
        program: OsString,
        /// The error.
        source: std::io::Error,
    },
}

/// Runs the shim with `args` (after the subcommand) and returns the process exit code;
/// a leader killed by a signal is mirrored by the shim killing itself with it.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            // Into the job's log; ignored if nobody reads it any more.
            let _ = writeln!(std::io::stderr(), "{SUBCOMMAND}: {e}");
            127
        }
    }
}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> ShimError {
    move |source| ShimError::Os { what, source }
}

fn check(what: &'static str, rc: libc::c_int) -> Result<(), ShimError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(os(what)(std::io::Error::last_os_error()))
    }
}

fn run(args: impl IntoIterator<Item = OsString>) -> Result<i32, ShimError> {
    let mut args = args.into_iter();
    let agent_pid: u32 = args
        .next()
        .and_then(|a| a.to_str()?.parse().ok())
        .ok_or(ShimError::Usage)?;
    let mut program = args.next().ok_or(ShimError::Usage)?;
    let mut user: Option<u32> = None;
    if program == "--as" {
        user = Some(
            args.next()
                .and_then(|a| a.to_str()?.parse().ok())
                .ok_or(ShimError::Usage)?,
        );
        program = args.next().ok_or(ShimError::Usage)?;
    }
    if program == "--" {
        program = args.next().ok_or(ShimError::Usage)?;
    }
    let rest: Vec<OsString> = args.collect();

    // SAFETY: plain system calls on this (single-threaded) process's own state; the
    // sigset is initialised by sigfillset before use.
    let all = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        check("sigfillset", libc::sigfillset(&mut all))?;
        check(
            "sigprocmask",
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut()),
        )?;
        check(
            "prctl(PR_SET_PDEATHSIG)",
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM),
        )?;
        if libc::getpgrp() != libc::getpid() {
            check("setpgid", libc::setpgid(0, 0))?;
        }
        all
    };
    // SAFETY: getppid(2) cannot fail.
    if unsafe { libc::getppid() } as u32 != agent_pid {
        return Err(ShimError::AgentGone(agent_pid));
    }
    // SAFETY: as above.
    let shim_pid = unsafe { libc::getpid() };
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&rest);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (sigemptyset, sigprocmask, setrlimit, setgroups, setgid,
    // setuid, prctl, getppid). The user switch comes first: it clears the parent-death signal.
    unsafe {
        cmd.pre_exec(move || {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            if let Some(id) = user {
                // Limits first, while still root (a hard limit cannot be raised after).
                for (resource, limit) in JOB_LIMITS {
                    let l = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(resource, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(id) != 0
                    || libc::setuid(id) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != shim_pid {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let leader = cmd
        .spawn()
        .map_err(|source| ShimError::Spawn {
            program: program.clone(),
            source,
        })?
        .id() as libc::pid_t;
    let timeout = libc::timespec {
        tv_sec: POLL.as_secs() as libc::time_t,
        tv_nsec: POLL.subsec_nanos() as libc::c_long,
    };
    let mut exited = None;
    loop {
        if exited.is_none() {
            exited = reap(leader)?;
        }
        // SAFETY: getppid(2) cannot fail.
        let parent = unsafe { libc::getppid() } as u32;
        match decide(agent_pid, parent, exited) {
            Action::KillGroup { .. } => {
                // Nothing is written first: the agent held the read ends of our output,
                // and a failed write must not stop us before the kill.
                // SAFETY: kill(2) of our own process group (we are its leader).
                unsafe { libc::kill(-shim_pid, libc::SIGKILL) };
                return Ok(128 + libc::SIGKILL);
            }
            Action::Exit(LeaderExit::Code(code)) => return Ok(code),
            Action::Exit(LeaderExit::Signal(signal)) => {
                mirror(signal);
                return Ok(128 + signal);
            }
            Action::Wait => {
                // SAFETY: `all` is an initialised sigset; a null siginfo is allowed.
                // EAGAIN (timeout) and EINTR are the expected non-signal returns.
                unsafe { libc::sigtimedwait(&all, std::ptr::null_mut(), &timeout) };
            }
        }
    }
}

/// The leader's exit, if it has exited (non-blocking).
fn reap(leader: libc::pid_t) -> Result<Option<LeaderExit>, ShimError> {
    let mut status = 0;
    // SAFETY: waitpid(2) on our own child with a valid status pointer.
    let rc = unsafe { libc::waitpid(leader, &mut status, libc::WNOHANG) };
    if rc < 0 {
        return Err(os("waitpid")(std::io::Error::last_os_error()));
    }
    if rc == 0 {
        return Ok(None);
    }
    Ok(if libc::WIFSIGNALED(status) {
        Some(LeaderExit::Signal(libc::WTERMSIG(status)))
    } else if libc::WIFEXITED(status) {
        Some(LeaderExit::Code(libc::WEXITSTATUS(status)))
    } else {
        None
    })
}

/// Ends this process by `signal` (default action), so its parent sees the leader's exit;
/// the shim itself never leaves a core file.
fn mirror(signal: libc::c_int) {
    // SAFETY: sets this process's core limit, resets one signal's disposition, unblocks
    // it and sends it to ourselves.
    unsafe {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(signal, libc::SIG_DFL);
        let mut one: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut one);
        libc::sigaddset(&mut one, signal);
        libc::kill(libc::getpid(), signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_absence_wins() {
        assert!(matches!(decide(10, 1, None), Action::KillGroup { .. }));
        assert!(matches!(
            decide(10, 1, Some(LeaderExit::Code(0))),
            Action::KillGroup { .. }
        ));
        // Reparented to a subreaper rather than init: still gone.
        assert!(matches!(decide(10, 77, None), Action::KillGroup { .. }));
    }

    #[test]
    fn with_the_agent_there_the_shim_mirrors_the_leader_or_waits() {
        assert_eq!(decide(10, 10, None), Action::Wait);
        assert_eq!(
            decide(10, 10, Some(LeaderExit::Code(3))),
            Action::Exit(LeaderExit::Code(3))
        );
        assert_eq!(
            decide(10, 10, Some(LeaderExit::Signal(15))),
            Action::Exit(LeaderExit::Signal(15))
        );
    }

    #[test]
    fn the_command_puts_the_agent_pid_before_the_job() {
        let shim = Shim::new("/bin/paas", ["job-shim"]);
        let cmd = shim.command(OsStr::new("sh"), &[OsStr::new("-c"), OsStr::new("x")], None);
        let args: Vec<&OsStr> = cmd.as_std().get_args().collect();
        let pid = std::process::id().to_string();
        assert_eq!(
            args,
            ["job-shim", pid.as_str(), "--", "sh", "-c", "x"]
                .map(OsStr::new)
                .to_vec()
        );
        assert_eq!(Shim::current_exe().args, vec![OsString::from(SUBCOMMAND)]);
    }
}
