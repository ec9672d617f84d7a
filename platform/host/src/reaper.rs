//! Records of the process groups the agent started, and the start-up sweep that kills
//! the groups an earlier run of the agent left behind.
//!
//! On disk: one file per live group, `DATA_DIR/groups/<pgid>.json`, holding a
//! [`GroupRecord`] (job id, pgid, boot id, the leader's start time in clock ticks since
//! boot). It is written right after the shim (the group's leader) is spawned and removed
//! once the whole group has been killed, so a record that exists at start-up names a
//! group an earlier run may have left: the agent and its shims were killed together
//! (`pkill -9 paas`), or the agent died between a leader's exit and its SIGKILL to the
//! rest of the group.
//!
//! Before it starts anything, the agent [`Groups::sweep`]s: for each record it reads
//! `/proc` and asks the pure [`verdict`] whether the group still holding that pgid is the
//! one recorded. A pid cannot be reused while a process group of that id has members, so
//! the group is ours when its leader is alive with the recorded start time, or, with the
//! leader dead, when a member still carries the job's `JOB_ID` in its environment; after
//! a reboot nothing of the earlier run can be alive. Groups judged ours are SIGKILLed
//! and the sweep waits (up to [`SWEEP_WAIT`]) until they are gone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long the sweep waits for killed groups to disappear.
pub const SWEEP_WAIT: Duration = Duration::from_secs(2);

/// What is recorded about one process group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The job (its `JOB_ID`).
    pub job: String,
    /// The process group id (the shim's pid).
    pub pgid: u32,
    /// `/proc/sys/kernel/random/boot_id` when the group was started.
    pub boot_id: String,
    /// The leader's start time, clock ticks after boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
}

/// One live process as seen in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its pid.
    pub pid: u32,
    /// Its start time, clock ticks after boot.
    pub start_ticks: u64,
    /// Whether its environment holds the recorded job's `JOB_ID`.
    pub marked: bool,
}

/// What the sweep does with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The group is the recorded one and has members: SIGKILL it.
    Kill {
        /// Why it is ours.
        reason: &'static str,
    },
    /// Nothing to kill: forget the record.
    Forget {
        /// Why not.
        reason: &'static str,
    },
}

/// Decides whether the live members of the record's pgid are the recorded group.
pub fn verdict(record: &GroupRecord, boot_id: &str, members: &[Member]) -> Verdict {
    if record.boot_id != boot_id {
        return Verdict::Forget {
            reason: "recorded before the last boot",
        };
    }
    if members.is_empty() {
        return Verdict::Forget {
            reason: "the group has no live member",
        };
    }
    match members.iter().find(|m| m.pid == record.pgid) {
        Some(leader) if leader.start_ticks == record.start_ticks => Verdict::Kill {
            reason: "its leader is the recorded one",
        },
        Some(_) => Verdict::Forget {
            reason: "the pid now belongs to another process",
        },
        None if members.iter().any(|m| m.marked) => Verdict::Kill {
            reason: "its leader is gone and a member carries the job's JOB_ID",
        },
        None => Verdict::Forget {
            reason: "its leader is gone and no member carries the job's JOB_ID",
        },
    }
}

/// The records in one data dir.
#[derive(Debug, Clone)]
pub struct Groups {
    dir: PathBuf,
}

/// One record looked at by [`Groups::sweep`], and what was done.
#[derive(Debug, Clone)]
pub struct Swept {
    /// The record.
    pub record: GroupRecord,
    /// The decision.
    pub verdict: Verdict,
    /// Live members when it was looked at.
    pub members: usize,
}

impl Groups {
    /// The records under `data_dir/groups`.
    pub fn new(data_dir: &Path) -> Groups {
        Groups {
            dir: data_dir.join("groups"),
        }
    }

    fn path(&self, pgid: u32) -> PathBuf {
        self.dir.join(format!("{pgid}.json"))
    }

    /// Records the group led by `pgid` (just spawned) for `job`.
    pub fn record(&self, job: &str, pgid: u32) -> std::io::Result<()> {
        let record = GroupRecord {
            job: job.to_string(),
            pgid,
            boot_id: boot_id()?,
            start_ticks: stat(pgid)
                .map(|s| s.start_ticks)
                .ok_or_else(|| std::io::Error::other(format!("no process {pgid}")))?,
        };
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{pgid}.tmp"));
        std::fs::write(
            &tmp,
            serde_json::to_vec(&record).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, self.path(pgid))
    }

    /// Removes the record of `pgid` (its group has been killed); absent is fine.
    pub fn forget(&self, pgid: u32) {
        if let Err(e) = std::fs::remove_file(self.path(pgid)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(pgid, error = %e, "removing a process group record failed");
            }
        }
    }

    /// Kills every recorded group that is still the recorded one, waits until they are
    /// gone (at most [`SWEEP_WAIT`]) and removes every record. Blocking.
    pub fn sweep(&self) -> std::io::Result<Vec<Swept>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let boot = boot_id()?;
        let procs = processes();
        let mut swept = Vec::new();
        let mut killed = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let record: Option<GroupRecord> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let Some(record) = record else {
                tracing::warn!(path = %path.display(), "unreadable process group record; removed");
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let marker = format!("JOB_ID={}", record.job);
            let members: Vec<Member> = procs
                .iter()
                .filter(|s| s.pgid == record.pgid)
                .map(|s| Member {
                    pid: s.pid,
                    start_ticks: s.start_ticks,
                    marked: has_env(s.pid, &marker),
                })
                .collect();
            let verdict = verdict(&record, &boot, &members);
            if let Verdict::Kill { .. } = verdict {
                // SAFETY: kill(2) of a process group judged to be the recorded one.
                unsafe { libc::kill(-(record.pgid as i32), libc::SIGKILL) };
                killed.push(record.pgid);
            }
            let _ = std::fs::remove_file(&path);
            swept.push(Swept {
                members: members.len(),
                record,
                verdict,
            });
        }
        let deadline = Instant::now() + SWEEP_WAIT;
        while Instant::now() < deadline {
            let live = processes();
            if !live.iter().any(|s| killed.contains(&s.pgid)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(swept)
    }
}

/// This boot's id.
fn boot_id() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// The fields of `/proc/PID/stat` the sweep needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    pid: u32,
    pgid: u32,
    start_ticks: u64,
}

/// Parses `/proc/PID/stat`; `None` for zombies (dead, only not yet reaped).
fn parse_stat(pid: u32, text: &str) -> Option<Stat> {
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); pgrp is field 5, starttime field 22.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    Some(Stat {
        pid,
        pgid: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

/// Every live process.
fn processes() -> Vec<Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .collect()
}

/// Whether `pid`'s environment holds the entry `marker` (`KEY=VALUE`).
fn has_env(pid: u32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|e| e == marker.as_bytes()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> GroupRecord {
        GroupRecord {
            job: "j1".into(),
            pgid: 100,
            boot_id: "boot".into(),
            start_ticks: 5000,
        }
    }

    fn member(pid: u32, start_ticks: u64, marked: bool) -> Member {
        Member {
            pid,
            start_ticks,
            marked,
        }
    }

    fn check(boot: &str, members: &[Member], kill: bool) {
        let v = verdict(&record(), boot, members);
        assert_eq!(
            matches!(v, Verdict::Kill { .. }),
            kill,
            "{boot} {members:?}: {v:?}"
        );
    }

    #[test]
    fn kills_only_the_recorded_group() {
        // The leader (shim) alive with the recorded start time.
        check(
            "boot",
            &[member(100, 5000, false), member(101, 5001, true)],
            true,
        );
        // The leader dead, its job's children left: marked by JOB_ID.
        check(
            "boot",
            &[member(101, 5001, true), member(102, 5001, false)],
            true,
        );
        // Another boot: nothing of ours can be alive.
        check("other", &[member(100, 5000, true)], false);
        // The pid was reused by another process.
        check("boot", &[member(100, 9000, true)], false);
        // A group of that id without our marker (its leader dead).
        check("boot", &[member(101, 9000, false)], false);
        check("boot", &[], false);
    }

    #[test]
    fn parses_proc_stat_with_odd_command_names() {
        let line = "4242 (we (ird) x) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        assert_eq!(
            parse_stat(4242, line),
            Some(Stat {
                pid: 4242,
                pgid: 4240,
                start_ticks: 987654,
            })
        );
        assert_eq!(
            parse_stat(1, "1 (sh) Z 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0"),
            None
        );
        // Our own process parses.
        let me = stat(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
    }

    #[test]
    fn records_are_written_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let groups = Groups::new(dir.path());
        let me = std::process::id();
        groups.record("j1", me).unwrap();
        let text = std::fs::read_to_string(dir.path().join(format!("groups/{me}.json"))).unwrap();
        let r: GroupRecord = serde_json::from_str(&text).unwrap();
        assert_eq!((r.job.as_str(), r.pgid), ("j1", me));
        groups.forget(me);
        groups.forget(me);
        assert!(!dir.path().join(format!("groups/{me}.json")).exists());
    }
}
