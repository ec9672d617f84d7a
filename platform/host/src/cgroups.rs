//! Memory and CPU limits of jobs, enforced by the kernel's control groups.
//!
//! A job whose placement carries [`Limits`] (`paas scale -a shop web=3 --memory 512M --cpu
//! 0.5`) runs in a cgroup of its own, `<own>/paas-jobs/<host>/<job>`, where `<own>` is
//! the agent's own cgroup (so the machine's or the container's limits above the agent
//! still apply) and `<host>` the agent's id (so several agents on one machine never touch
//! each other's groups). With the unified hierarchy (cgroup v2, where it has the `memory`
//! and `cpu` controllers) the limits are `memory.max`, `memory.swap.max = 0` and
//! `cpu.max`; on the legacy hierarchies (v1) `memory.limit_in_bytes` (and
//! `memory.memsw.limit_in_bytes`, so swap does not extend it) and
//! `cpu.cfs_quota_us`/`cpu.cfs_period_us`.
//!
//! The job's shim enters the cgroup between fork and exec: the descriptors of the
//! groups' `cgroup.procs` are opened before the fork and the child writes its own pid
//! into them, so the shim, the job and all they fork are inside from their first
//! instruction. A job running as its own unprivileged user cannot leave: the files are
//! root's.
//!
//! When the kernel kills a job for memory, the group's `oom_kill` counter says so, and
//! the supervisor reports "out of memory" instead of a bare signal 9.
//!
//! Jobs without limits get no cgroup. A host that cannot make one (no controller, not
//! root) runs unlimited jobs as before and refuses limited ones with the reason, which
//! `paas ps` shows: a limit is never silently ignored.

use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsRawFd as _, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use paas_model::Limits;

/// CPU bandwidth period: the quota is `cpu_millis * PERIOD / 1000` per period.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Which cgroup interface the machine offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Legacy: one hierarchy per controller.
    V1,
    /// Unified: one hierarchy, controllers enabled per subtree.
    V2,
}

/// The directories under which this agent makes job cgroups, found once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bases {
    /// The interface.
    pub version: Version,
    /// Parent of the jobs' memory groups (v2: of all their groups).
    pub memory: PathBuf,
    /// Parent of the jobs' cpu groups (v2: the same directory as `memory`).
    pub cpu: PathBuf,
}

/// Why a job's limits cannot be enforced here.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The machine has no usable memory and cpu controllers.
    #[error("this host cannot enforce limits: {0}")]
    Unavailable(String),
    /// Making or configuring the group failed (not root, a controller missing...).
    #[error("cgroup {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// This agent's cgroups, or why there are none.
#[derive(Debug, Clone)]
pub struct Cgroups {
    bases: Result<Bases, String>,
}

impl Cgroups {
    /// Finds the machine's cgroups and this agent's place in them, for agent `host`.
    pub fn detect(host: &str) -> Cgroups {
        let read = |p: &str| fs::read_to_string(p).map_err(|e| format!("reading {p}: {e}"));
        let bases = read("/proc/self/mountinfo").and_then(|mounts| {
            let own = read("/proc/self/cgroup")?;
            locate(&mounts, &own, host, |dir| {
                fs::read_to_string(dir.join("cgroup.controllers")).ok()
            })
        });
        match &bases {
            Ok(b) => {
                tracing::info!(version = ?b.version, memory = %b.memory.display(), cpu = %b.cpu.display(), "job limits through cgroups")
            }
            Err(why) => {
                tracing::warn!(%why, "jobs with memory or cpu limits cannot run on this host")
            }
        }
        Cgroups { bases }
    }

    /// Cgroups under the given bases (tests, and hosts configured by hand).
    pub fn at(bases: Bases) -> Cgroups {
        Cgroups { bases: Ok(bases) }
    }

    /// The bases, or why there are none.
    pub fn bases(&self) -> Result<&Bases, CgroupError> {
        self.bases
            .as_ref()
            .map_err(|why| CgroupError::Unavailable(why.clone()))
    }

    /// Makes `job`'s group with `limits` (replacing one an earlier run left).
    pub fn create(&self, job: &str, limits: &Limits) -> Result<JobCgroup, CgroupError> {
        let bases = self.bases()?;
        let mut group = JobCgroup {
            version: bases.version,
            dirs: Vec::new(),
            procs: Vec::new(),
            memory: None,
        };
        for (controller, settings) in settings(bases.version, limits) {
            let base = match controller {
                Controller::Memory => &bases.memory,
                Controller::Cpu => &bases.cpu,
            };
            let dir = base.join(job);
            if !group.dirs.contains(&dir) {
                prepare_base(bases.version, base)?;
                let _ = fs::remove_dir(&dir);
                fs::create_dir(&dir).map_err(io(&dir))?;
                group.dirs.push(dir.clone());
                let procs = dir.join("cgroup.procs");
                group.procs.push(
                    OpenOptions::new()
                        .write(true)
                        .open(&procs)
                        .map_err(io(&procs))?,
                );
            }
            if controller == Controller::Memory {
                group.memory = Some(dir.clone());
            }
            for (file, value) in settings {
                let path = dir.join(file);
                if !path.exists() && OPTIONAL.contains(&file) {
                    continue;
                }
                fs::write(&path, &value).map_err(io(&path))?;
            }
        }
        Ok(group)
    }

    /// Removes the empty job groups an earlier run of this agent left (groups still
    /// holding processes stay: the agent's process sweep kills those first).
    pub fn sweep(&self) {
        let Ok(bases) = &self.bases else { return };
        for base in [&bases.memory, &bases.cpu] {
            let Ok(entries) = fs::read_dir(base) else {
                continue;
            };
            for e in entries.flatten() {
                if e.path().is_dir() && fs::remove_dir(e.path()).is_ok() {
                    tracing::info!(group = %e.path().display(), "removed a job cgroup an earlier run left");
                }
            }
        }
    }
}

/// Settings that older kernels or machines without swap accounting lack.
const OPTIONAL: [&str; 2] = ["memory.memsw.limit_in_bytes", "memory.swap.max"];

/// A controller a limit needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    /// Memory.
    Memory,
    /// CPU bandwidth.
    Cpu,
}

/// The files to write for `limits`, per controller, in order. Pure.
pub fn settings(
    version: Version,
    limits: &Limits,
) -> Vec<(Controller, Vec<(&'static str, String)>)> {
    let mut out = Vec::new();
    if let Some(m) = limits.memory {
        out.push((
            Controller::Memory,
            match version {
                Version::V1 => vec![
                    ("memory.limit_in_bytes", m.to_string()),
                    ("memory.memsw.limit_in_bytes", m.to_string()),
                ],
                Version::V2 => vec![
                    ("memory.max", m.to_string()),
                    ("memory.swap.max", "0".to_string()),
                ],
            },
        ));
    }
    if let Some(c) = limits.cpu_millis {
        let quota = u64::from(c) * CPU_PERIOD_US / 1000;
        out.push((
            Controller::Cpu,
            match version {
                Version::V1 => vec![
                    ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ],
                Version::V2 => vec![("cpu.max", format!("{quota} {CPU_PERIOD_US}"))],
            },
        ));
    }
    out
}

/// Makes a base directory; on v2 also enables the memory and cpu controllers for the
/// jobs below it, from the agent's own group down.
fn prepare_base(version: Version, base: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(base).map_err(io(base))?;
    if version == Version::V2 {
        // base = <own>/paas-jobs/<host>: both levels below <own> must pass the
        // controllers on; <own> itself too (which the kernel refuses while <own> holds
        // processes, unless it is the root: then the error says so).
        let mut levels: Vec<&Path> = base.ancestors().skip(1).take(2).collect();
        levels.reverse();
        levels.push(base);
        for dir in levels {
            let control = dir.join("cgroup.subtree_control");
            fs::write(&control, "+memory +cpu").map_err(io(&control))?;
        }
    }
    Ok(())
}

/// One job's group(s): open `cgroup.procs` descriptors to enter at exec, and the
/// directories to remove when the job is gone (on drop).
#[derive(Debug)]
pub struct JobCgroup {
    version: Version,
    dirs: Vec<PathBuf>,
    procs: Vec<File>,
    memory: Option<PathBuf>,
}

impl JobCgroup {
    /// Makes the child of `cmd` enter the group between fork and exec.
    pub fn enter_at_exec(&self, cmd: &mut tokio::process::Command) {
        let fds: Vec<RawFd> = self.procs.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: the closure runs in the forked child before exec. It only calls
        // getpid(2) and write(2), which are async-signal-safe, formats into a stack
        // buffer and reads `fds`, which was allocated before the fork; the descriptors
        // stay open in the parent (held by `self`) until the spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                let mut buf = [0u8; 20];
                let text = decimal(libc::getpid() as u64, &mut buf);
                for fd in &fds {
                    if libc::write(*fd, text.as_ptr().cast(), text.len()) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    /// How many times the kernel killed a process of the group for memory so far.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory else { return 0 };
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| oom_kill_count(&t))
            .unwrap_or(0)
    }

    /// The group's directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

impl Drop for JobCgroup {
    /// Removes the directories once their last process is gone (a killed group may
    /// take a moment to exit), in the background.
    fn drop(&mut self) {
        let dirs = std::mem::take(&mut self.dirs);
        self.procs.clear();
        if dirs.is_empty() {
            return;
        }
        std::thread::spawn(move || {
            for dir in dirs {
                let mut tries = 0;
                while let Err(e) = fs::remove_dir(&dir) {
                    tries += 1;
                    if e.kind() == std::io::ErrorKind::NotFound || tries == 50 {
                        if tries == 50 {
                            tracing::warn!(group = %dir.display(), error = %e, "job cgroup not removed; the next start sweeps it");
                        }
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
    }
}

/// `n` in decimal, in `buf`, without allocating (for the forked child).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The `oom_kill N` line of `memory.oom_control` (v1) or `memory.events` (v2).
pub fn oom_kill_count(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix("oom_kill ")
            .and_then(|n| n.trim().parse().ok())
    })
}

/// Where this agent's job groups go, from `/proc/self/mountinfo`, `/proc/self/cgroup`
/// and a way to read a v2 directory's `cgroup.controllers`. Prefers the unified
/// hierarchy when it has both controllers; else the legacy `memory` and `cpu`
/// hierarchies. Pure but for `controllers`.
pub fn locate(
    mountinfo: &str,
    proc_cgroup: &str,
    host: &str,
    controllers: impl Fn(&Path) -> Option<String>,
) -> Result<Bases, String> {
    let mounts: Vec<Mount> = mountinfo.lines().filter_map(Mount::parse).collect();
    let own = |name: &str| -> Option<&str> {
        proc_cgroup.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            let hit = if name.is_empty() {
                list.is_empty()
            } else {
                list.split(',').any(|c| c == name)
            };
            hit.then_some(path)
        })
    };
    let base = |m: &Mount, own: &str| {
        let rel = own.strip_prefix(m.root.as_str()).unwrap_or(own);
        m.point
            .join(rel.trim_start_matches('/'))
            .join("paas-jobs")
            .join(host)
    };
    let mut why = Vec::new();
    if let (Some(m), Some(own)) = (mounts.iter().find(|m| m.fstype == "cgroup2"), own("")) {
        let rel = own.strip_prefix(m.root.as_str()).unwrap_or(own);
        let dir = m.point.join(rel.trim_start_matches('/'));
        let list = controllers(&dir).unwrap_or_default();
        let has = |c: &str| list.split_whitespace().any(|x| x == c);
        if has("memory") && has("cpu") {
            let b = base(m, own);
            return Ok(Bases {
                version: Version::V2,
                memory: b.clone(),
                cpu: b,
            });
        }
        why.push(format!(
            "the unified hierarchy at {} offers {:?}, not memory and cpu",
            dir.display(),
            list.trim()
        ));
    }
    let v1 = |name: &str| -> Option<PathBuf> {
        let m = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == name))?;
        Some(base(m, own(name)?))
    };
    match (v1("memory"), v1("cpu")) {
        (Some(memory), Some(cpu)) => Ok(Bases {
            version: Version::V1,
            memory,
            cpu,
        }),
        _ => {
            why.push("no legacy memory and cpu hierarchies are mounted".into());
            Err(why.join("; "))
        }
    }
}

/// A line of `/proc/self/mountinfo`, the parts that matter.
struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    options: String,
}

impl Mount {
    fn parse(line: &str) -> Option<Mount> {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let mut right = right.split(' ');
        let fstype = right.next()?.to_string();
        let _source = right.next()?;
        Some(Mount {
            root: fields.get(3)?.to_string(),
            point: PathBuf::from(fields.get(4)?),
            fstype,
            options: right.next().unwrap_or_default().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:12 - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw,relatime shared:13 - cgroup cgroup rw,memory
";
    const HYBRID_SELF: &str = "\
4:memory:/api/42
2:cpu,cpuacct:/
0::/
";

    #[test]
    fn legacy_hierarchies_under_the_agents_own_groups() {
        let b = locate(HYBRID, HYBRID_SELF, "h1", |_| Some("hugetlb\n".into())).unwrap();
        assert_eq!(
            b,
            Bases {
                version: Version::V1,
                memory: "/sys/fs/cgroup/memory/api/42/paas-jobs/h1".into(),
                cpu: "/sys/fs/cgroup/cpu,cpuacct/paas-jobs/h1".into(),
            }
        );
    }

    #[test]
    fn unified_hierarchy_when_it_has_the_controllers() {
        let mounts = "29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let b = locate(mounts, "0::/system.slice/paas.service\n", "h1", |dir| {
            assert_eq!(dir, Path::new("/sys/fs/cgroup/system.slice/paas.service"));
            Some("cpuset cpu io memory pids\n".into())
        })
        .unwrap();
        assert_eq!(b.version, Version::V2);
        assert_eq!(
            b.memory,
            Path::new("/sys/fs/cgroup/system.slice/paas.service/paas-jobs/h1")
        );
        assert_eq!(b.cpu, b.memory);
    }

    #[test]
    fn a_container_mount_root_is_stripped() {
        let mounts = "34 30 0:30 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                      33 30 0:29 /docker/abc /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        let b = locate(
            mounts,
            "5:memory:/docker/abc\n3:cpu:/docker/abc/x\n",
            "h",
            |_| None,
        )
        .unwrap();
        assert_eq!(b.memory, Path::new("/sys/fs/cgroup/memory/paas-jobs/h"));
        assert_eq!(b.cpu, Path::new("/sys/fs/cgroup/cpu/x/paas-jobs/h"));
    }

    #[test]
    fn no_controllers_is_a_reason() {
        let mounts = "31 23 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let why = locate(mounts, "0::/\n", "h", |_| Some("pids\n".into())).unwrap_err();
        assert!(why.contains("not memory and cpu"), "{why}");
        assert!(why.contains("no legacy"), "{why}");
    }

    #[test]
    fn settings_per_version() {
        let l = Limits {
            memory: Some(64 << 20),
            cpu_millis: Some(250),
        };
        assert_eq!(
            settings(Version::V1, &l),
            vec![
                (
                    Controller::Memory,
                    vec![
                        ("memory.limit_in_bytes", "67108864".to_string()),
                        ("memory.memsw.limit_in_bytes", "67108864".to_string()),
                    ]
                ),
                (
                    Controller::Cpu,
                    vec![
                        ("cpu.cfs_period_us", "100000".to_string()),
                        ("cpu.cfs_quota_us", "25000".to_string()),
                    ]
                ),
            ]
        );
        assert_eq!(
            settings(Version::V2, &l)[1],
            (
                Controller::Cpu,
                vec![("cpu.max", "25000 100000".to_string())]
            )
        );
        assert!(settings(Version::V2, &Limits::default()).is_empty());
    }

    #[test]
    fn oom_counter_and_decimal() {
        assert_eq!(
            oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
            Some(3)
        );
        assert_eq!(
            oom_kill_count("low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n"),
            Some(1)
        );
        assert_eq!(oom_kill_count("oom_kill_disable 0\n"), None);
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(4_194_304, &mut buf), b"4194304");
    }
}
