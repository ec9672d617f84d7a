//! Free TCP ports on 127.0.0.1.
//!
//! A port is picked at random below the kernel's ephemeral range (20000-25999; the
//! ephemeral range is 32768-60999) and checked free by binding it. A port from the
//! ephemeral range, as binding port 0 gives, can be handed by the kernel to any other
//! socket bound to port 0 or any outgoing connection between the check and the server's
//! bind: seen when `paas up` bound its own log input to port 0 and got the very port a
//! test had chosen for its API. Ports below the range are never handed out that way, and
//! this range stays clear of the platform's fixed ports. Within one test process a port
//! is never handed out twice; fixtures still retry with a fresh port when a server
//! reports "address already in use" (another test process may pick the same one).

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

use crate::error::{FixtureError, Result};

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and that this process has
/// not handed out before.
pub fn free_port() -> Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0u32..10_000 {
        let mut h = random.build_hasher();
        h.write_u32(attempt);
        h.write_u32(std::process::id());
        let port = FIRST + (h.finish() % u64::from(COUNT)) as u16;
        let mut seen = handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            seen.insert(port);
            return Ok(port);
        }
    }
    Err(FixtureError::io(format!(
        "no free port in {FIRST}-{} on 127.0.0.1",
        FIRST + COUNT - 1
    ))(std::io::Error::from(std::io::ErrorKind::AddrInUse)))
}

/// The first port [`free_port`] hands out.
const FIRST: u16 = 20_000;
/// How many ports it picks from.
const COUNT: u16 = 6_000;
