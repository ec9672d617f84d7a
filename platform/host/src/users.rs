//! The unprivileged users jobs run as.
//!
//! An app's jobs must not be root: an app-scoped token can deploy any Procfile and `paas
//! run` anything, so root jobs would make every app token root on the platform. Every
//! job of an app (a user app: system apps, named `paas-...`, run the platform's own
//! servers and keep the agent's user) gets a uid of its own, not shared with any other
//! running job on the host, from a range no account uses ([`JobUsers`]); its working
//! directory is owned by that uid and mode 0700, so jobs cannot read each other's
//! files, the data dir's private directories, nor signal each other or the platform.
//! The switch happens in the job's process after the shim (root) has entered the
//! working directory and before it executes the command.
//!
//! When the agent is not root it cannot switch users: jobs then run as the agent's user,
//! which has no privilege to give away.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Apps whose jobs keep the agent's user: the platform's own (appliance members).
pub fn is_system_app(app: &str) -> bool {
    app.starts_with("paas-")
}

/// A uid (and gid of the same number) held by one job while it runs.
#[derive(Debug)]
pub struct JobUser {
    /// The uid and gid.
    pub id: u32,
    pool: Arc<Mutex<HashSet<u32>>>,
}

impl Drop for JobUser {
    fn drop(&mut self) {
        self.pool.lock().expect("uid pool lock").remove(&self.id);
    }
}

/// The range of uids jobs get and the ones in use.
#[derive(Debug, Clone)]
pub struct JobUsers {
    base: u32,
    count: u32,
    used: Arc<Mutex<HashSet<u32>>>,
    /// Whether this process can switch users at all (it is root).
    can_switch: bool,
}

impl JobUsers {
    /// Uids `base..base + count`; switching only when running as root.
    pub fn new(base: u32, count: u32) -> JobUsers {
        // SAFETY: geteuid(2) has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        JobUsers {
            base,
            count: count.max(1),
            used: Arc::default(),
            can_switch: root,
        }
    }

    /// The user a job of `app` with id `job` runs as, `Ok(None)` when it keeps the
    /// agent's (a system app, or an agent that is not root), or an error when every uid
    /// of the range is taken (the job must not start as root instead). Stable for a job
    /// id while free: the first try is a hash of the id, then the next free uid.
    pub fn for_job(&self, app: &str, job: &str) -> Result<Option<JobUser>, String> {
        if !self.can_switch || is_system_app(app) {
            return Ok(None);
        }
        let mut used = self.used.lock().expect("uid pool lock");
        let start = first_choice(job, self.count);
        let offset = (0..self.count)
            .map(|i| (start + i) % self.count)
            .find(|o| !used.contains(&(self.base + o)))
            .ok_or_else(|| format!("all {} job uids of this host are in use", self.count))?;
        let id = self.base + offset;
        used.insert(id);
        Ok(Some(JobUser {
            id,
            pool: self.used.clone(),
        }))
    }

    /// Whether jobs are switched to their own users.
    pub fn switching(&self) -> bool {
        self.can_switch
    }
}

/// SIGKILLs every process of `uid`, whatever group or session it moved to: a shell run
/// as that user sends `kill(-1, SIGKILL)`, which reaches every process the user owns but
/// the sender, atomically with respect to forks. Blocks for the few milliseconds that
/// takes.
pub fn kill_all(uid: u32) {
    use std::os::unix::process::CommandExt;
    let ran = std::process::Command::new("/bin/sh")
        .args(["-c", "kill -KILL -1 2>/dev/null; exit 0"])
        .env_clear()
        .uid(uid)
        .gid(uid)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if let Err(e) = ran {
        tracing::warn!(uid, error = %e, "killing the processes of a job's user failed");
    }
}

/// The uids in `base..base + count` that own a process now (from `/proc`).
pub fn live_uids(base: u32, count: u32) -> Vec<u32> {
    let mut uids = HashSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        if let Some(uid) = uid.filter(|u| (base..base.saturating_add(count)).contains(u)) {
            uids.insert(uid);
        }
    }
    let mut uids: Vec<u32> = uids.into_iter().collect();
    uids.sort_unstable();
    uids
}

impl JobUsers {
    /// Kills every process an earlier run's jobs left under their users (the agent
    /// starting: no job of its own runs yet); returns the users that had some.
    pub fn sweep(&self) -> Vec<u32> {
        if !self.can_switch {
            return Vec::new();
        }
        let live = live_uids(self.base, self.count);
        for uid in &live {
            kill_all(*uid);
        }
        live
    }
}

/// The agent's directories beside `jobs`, 0700.
const PRIVATE: [&str; 4] = ["artifacts", "spool", "logs", "groups"];

/// Makes `DATA_DIR/jobs` (and `DATA_DIR`) traversable but not listable for job users,
/// and checks that every directory above can be entered by anyone: a job's user must
/// reach its working directory by path (programs build absolute paths from their
/// working directory). Fails naming the directory that blocks.
pub fn prepare_jobs_dir(data_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let jobs = data_dir.join("jobs");
    std::fs::create_dir_all(&jobs).map_err(|e| format!("creating {}: {e}", jobs.display()))?;
    for dir in [data_dir, jobs.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| format!("making {} traversable: {e}", dir.display()))?;
    }
    // The agent's own state beside the jobs (unpacked code of every app, the log spool,
    // group records, log files): nobody else's.
    for name in PRIVATE {
        let dir = data_dir.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("restricting {}: {e}", dir.display()))?;
    }
    let absolute = std::path::absolute(&jobs).map_err(|e| format!("{}: {e}", jobs.display()))?;
    for ancestor in absolute.ancestors() {
        let meta = std::fs::metadata(ancestor)
            .map_err(|e| format!("reading {}: {e}", ancestor.display()))?;
        if meta.mode() & 0o001 == 0 {
            return Err(format!(
                "jobs run as their own users and cannot reach {}: {} (mode {:o}) may not be \
                 entered by other users; choose a data dir whose parents are searchable \
                 (e.g. chmod o+x {})",
                jobs.display(),
                ancestor.display(),
                meta.mode() & 0o7777,
                ancestor.display()
            ));
        }
    }
    Ok(())
}

/// Uids per agent: concurrent jobs of one host.
const PER_AGENT: u32 = 10_000;

/// The uid range of the agent on `data_dir`: one of 10,000 blocks of 10,000 uids from
/// 2,000,000 up, chosen by the data dir, so agents sharing a machine (tests, a joined
/// host beside `paas up`) do not share uids, and neither kills the other's processes.
pub fn default_range(data_dir: &Path) -> (u32, u32) {
    let block = (fnv(&data_dir.to_string_lossy()) % 10_000) as u32;
    (2_000_000 + block * PER_AGENT, PER_AGENT)
}

fn fnv(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV-1a of the job id, reduced to the range.
fn first_choice(job: &str, count: u32) -> u32 {
    (fnv(job) % u64::from(count)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(count: u32) -> JobUsers {
        JobUsers {
            base: 2_000_000,
            count,
            used: Arc::default(),
            can_switch: true,
        }
    }

    #[test]
    fn running_jobs_never_share_a_uid_and_freed_uids_return() {
        let users = pool(4);
        let held: Vec<JobUser> = (0..4)
            .map(|i| users.for_job("shop", &format!("j{i}")).unwrap().unwrap())
            .collect();
        let ids: HashSet<u32> = held.iter().map(|u| u.id).collect();
        assert_eq!(ids.len(), 4);
        assert!(ids.iter().all(|id| (2_000_000..2_000_004).contains(id)));
        assert!(users.for_job("shop", "j5").is_err(), "the range is full");
        drop(held);
        assert!(users.for_job("shop", "j5").unwrap().is_some());
    }

    #[test]
    fn system_apps_and_unprivileged_agents_keep_the_agent_user() {
        let users = pool(10);
        assert!(users.for_job("paas-postgres", "j1").unwrap().is_none());
        let mut plain = pool(10);
        plain.can_switch = false;
        assert!(plain.for_job("shop", "j1").unwrap().is_none());
        assert!(users.for_job("shop", "j1").unwrap().is_some());
    }
}
