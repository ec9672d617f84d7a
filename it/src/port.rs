//! Free TCP ports on 127.0.0.1.
//!
//! A port is picked at random below the kernel's ephemeral range (20000-25999; the
//! ephemeral range is 32768-60999) and checked free by binding it. A port from the
//! ephemeral range, as binding port 0 gives, can be handed by the kernel to any other
//! socket bound to port 0 or any outgoing connection between the check and the server's
//! bind: seen when `paas up` bound its own log input to port 0 and got the very port a
//! test had chosen for its API. Ports below the range are never handed out that way, and
//! this range stays clear of the platform's fixed ports.
//!
//! A port is handed out at most once while the process lives, across every test
//! process on the machine: each claim holds an exclusive lock on a file named after the
//! port (in `$TMPDIR/paas-it-ports`) until the process exits, so two tests running at
//! once, in one process or in two, never both take a port that neither has bound yet.
//! Fixtures still retry with a fresh port when a server reports "address already in
//! use" (anything else on the machine may take a port between the check and the bind).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use crate::error::{FixtureError, Result};

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and that no live test
/// process has been handed before.
pub fn free_port() -> Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    static CLAIMS: OnceLock<Mutex<Claims>> = OnceLock::new();
    let claims = CLAIMS.get_or_init(Default::default);
    let dir = lock_dir();
    std::fs::create_dir_all(&dir).map_err(FixtureError::io(format!("create {}", dir.display())))?;
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0u32..10_000 {
        let mut h = random.build_hasher();
        h.write_u32(attempt);
        h.write_u32(std::process::id());
        let port = FIRST + (h.finish() % u64::from(COUNT)) as u16;
        let mut claims = claims.lock().unwrap_or_else(|e| e.into_inner());
        if claims.ports.contains(&port) {
            continue;
        }
        let path = dir.join(port.to_string());
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(FixtureError::io(format!("open {}", path.display())))?;
        if lock.try_lock().is_err() {
            // Another test process holds it (or cannot be told apart from one).
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            claims.ports.insert(port);
            claims.locks.push(lock);
            return Ok(port);
        }
    }
    Err(FixtureError::io(format!(
        "no free port in {FIRST}-{} on 127.0.0.1",
        FIRST + COUNT - 1
    ))(std::io::Error::from(std::io::ErrorKind::AddrInUse)))
}

/// The ports this process was handed, and the locks that keep other processes off them
/// until it exits.
#[derive(Default)]
struct Claims {
    ports: HashSet<u16>,
    locks: Vec<File>,
}

/// Where the per-port lock files live, shared by every test process of the machine.
fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("paas-it-ports")
}

/// The first port [`free_port`] hands out.
const FIRST: u16 = 20_000;
/// How many ports it picks from.
const COUNT: u16 = 6_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_held_against_other_processes() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!((FIRST..FIRST + COUNT).contains(&port));
            // A second open file description is what another process would hold: its
            // lock attempt must fail while this process lives.
            let other = File::open(lock_dir().join(port.to_string())).unwrap();
            assert!(other.try_lock().is_err(), "port {port} is not held");
        }
    }
}
