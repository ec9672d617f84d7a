//! Member addresses that cannot collide and cannot be stolen.
//!
//! A port found by binding port 0 lies in the kernel's ephemeral range: two members can
//! be handed the same one, and after a restart any outgoing connection may already hold
//! it. So every cluster gets a loopback address of its own, `127.X.Y.Z` derived from a
//! stable seed (its data directory), and its members fixed ports below the ephemeral
//! range (`base + member index`). Different clusters differ by address, members of one
//! cluster by port, and outgoing connections never take a port below 32768.
//! [`check_free`] fails fast, naming the process that holds a port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

/// Fixed port bases of the PostgreSQL appliance: server and health API.
pub const POSTGRES_PORT: u16 = 15432;
/// Health API port base of the PostgreSQL appliance.
pub const POSTGRES_HEALTH_PORT: u16 = 18008;
/// Server port base of the MariaDB appliance.
pub const MYSQL_PORT: u16 = 13306;
/// Health API port base of the MariaDB appliance.
pub const MYSQL_HEALTH_PORT: u16 = 18108;
/// Server port base of a Redis replication group (each group has its own address).
pub const REDIS_PORT: u16 = 16379;
/// Health API port base of a Redis replication group.
pub const REDIS_HEALTH_PORT: u16 = 18208;

/// The loopback address of the cluster whose seed (data directory) is `seed`: never in
/// 127.0.0.0/24 (where other local services live) and never a network or broadcast
/// address. Stable: FNV-1a of the seed.
pub fn cluster_ip(seed: &str) -> Ipv4Addr {
    let mut h: u32 = 0x811c_9dc5;
    for b in seed.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let [a, b, c, _] = h.to_be_bytes();
    let second = a.max(1); // 127.0.x.x holds 127.0.0.1 and friends
    let last = 1 + c % 254; // 1..=254
    Ipv4Addr::new(127, second, b, last)
}

/// The address a member listens and registers at: the address of the host it runs on
/// (`job_ip`, which the host agent gives every job as `HOST_IP`) when that is reachable
/// from other machines, else the cluster's own loopback address (`cluster`, from
/// [`cluster_ip`]), so that on a single machine several clusters never collide.
pub fn member_host(cluster: &str, job_ip: Option<IpAddr>) -> String {
    match job_ip {
        Some(ip) if reachable_from_elsewhere(ip) => ip.to_string(),
        _ => cluster.to_string(),
    }
}

/// Whether other machines may reach a server listening on `ip`: neither loopback nor
/// unspecified (a host's job IP that members then listen on, see [`member_host`]).
pub fn reachable_from_elsewhere(ip: IpAddr) -> bool {
    !ip.is_loopback() && !ip.is_unspecified()
}

/// Port `base + member`.
pub fn member_port(base: u16, member: usize) -> u16 {
    base + u16::try_from(member).unwrap_or(u16::MAX - base)
}

/// Checks that `addr` can be bound now; otherwise says who holds it, e.g. "127.3.4.5:15432
/// (pg0's postgres port) is in use by pid 4242 (postgres)".
pub fn check_free(addr: SocketAddr, what: &str) -> Result<(), String> {
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) => {
            let owner = owner_of(addr.port())
                .map(|(pid, name)| format!(" by pid {pid} ({name})"))
                .unwrap_or_default();
            Err(format!("{addr} ({what}) is in use{owner}: {e}"))
        }
    }
}

/// [`check_free`], retried for up to `patience`: a previous run of the same member (killed
/// with its parent a moment ago) may still be letting go of the port.
pub fn wait_free(
    addr: SocketAddr,
    what: &str,
    patience: std::time::Duration,
) -> Result<(), String> {
    wait_free_or_held_within(addr, what, patience, None)
}

/// [`wait_free`], except that a port held by process `ours` or one of its descendants
/// counts as free: on a restart the host agent inside `paas up` may already have started
/// a member from the formation a previous run stored, before the launcher checks its
/// ports; that member is not a conflict, anyone else is.
pub fn wait_free_or_held_within(
    addr: SocketAddr,
    what: &str,
    patience: std::time::Duration,
    ours: Option<u32>,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match check_free(addr, what) {
            Ok(()) => return Ok(()),
            Err(_) if ours.is_some_and(|pid| held_within(addr.port(), pid)) => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// Whether the process listening on TCP `port` is `ancestor` or a descendant of it
/// (following parent pids in /proc; false when the owner cannot be found).
fn held_within(port: u16, ancestor: u32) -> bool {
    let Some((mut pid, _)) = owner_of(port) else {
        return false;
    };
    // A bound on the walk, in case /proc changes under it.
    for _ in 0..256 {
        if pid == ancestor {
            return true;
        }
        match parent_of(pid) {
            Some(parent) if parent > 1 && parent != pid => pid = parent,
            _ => return false,
        }
    }
    false
}

/// The parent pid of `pid`, from `/proc/PID/stat` (the field after the state, which
/// follows the command name's closing parenthesis; the name may contain spaces).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The process listening on TCP `port`, from /proc (best effort, Linux).
fn owner_of(port: u16) -> Option<(u32, String)> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let local = cols.get(1)?;
                let listening = cols.get(3) == Some(&"0A");
                let p = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
                (listening && p == port).then(|| cols.get(9).map(|s| s.to_string()))?
            })
        })?;
    let target = format!("socket:[{inode}]");
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target) {
                let name = std::fs::read_to_string(proc_entry.path().join("comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_default();
                return Some((pid, name));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_get_stable_distinct_loopback_addresses() {
        let a = cluster_ip("/var/lib/paas/postgres");
        assert_eq!(a, cluster_ip("/var/lib/paas/postgres"));
        assert_ne!(a, cluster_ip("/tmp/other/postgres"));
        for seed in ["", "a", "/x", "/var/lib/paas"] {
            let ip = cluster_ip(seed).octets();
            assert_eq!(ip[0], 127);
            assert_ne!(ip[1], 0, "{seed}");
            assert!((1..=254).contains(&ip[3]), "{seed}");
        }
        assert_eq!(member_port(POSTGRES_PORT, 2), 15434);
    }

    #[test]
    fn members_take_their_host_address_only_when_it_is_routable() {
        let cluster = "127.3.4.5";
        let check = |job_ip: Option<&str>, expected: &str| {
            let job_ip = job_ip.map(|ip| ip.parse::<IpAddr>().unwrap());
            assert_eq!(member_host(cluster, job_ip), expected, "{job_ip:?}");
        };
        check(None, cluster);
        check(Some("127.0.0.1"), cluster);
        check(Some("127.9.9.9"), cluster);
        check(Some("::1"), cluster);
        check(Some("0.0.0.0"), cluster);
        check(Some("10.77.0.2"), "10.77.0.2");
        check(Some("fd00::2"), "fd00::2");
    }

    #[test]
    fn a_taken_port_names_its_owner() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let err = check_free(addr, "test port").unwrap_err();
        assert!(err.contains("test port"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        assert!(check_free(addr, "test port").is_ok());
    }

    #[test]
    fn a_port_held_by_our_own_tree_counts_as_free_only_when_asked() {
        use std::time::Duration;
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let me = std::process::id();
        assert!(held_within(addr.port(), me));
        assert!(wait_free_or_held_within(addr, "ours", Duration::ZERO, Some(me)).is_ok());
        assert!(wait_free(addr, "ours", Duration::ZERO).is_err());
        // A process that is not our ancestor: a child of ours.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let err = wait_free_or_held_within(addr, "theirs", Duration::ZERO, Some(child.id()));
        let _ = child.kill();
        let _ = child.wait();
        assert!(err.is_err(), "held by us, not by a child of ours");
        assert_eq!(parent_of(me), Some(std::os::unix::process::parent_id()));
    }
}
