//! Free TCP ports on 127.0.0.1.
//!
//! The kernel picks a free ephemeral port for a socket bound to port 0; the socket is
//! closed and the number handed to a server. Between the close and the server's bind
//! another process may grab the port, so fixtures retry with a fresh port when a
//! server reports "address already in use". Within one test process a port is never
//! handed out twice, even after the kernel would reuse it.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

use crate::error::{FixtureError, Result};

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and that this process has
/// not handed out before.
pub fn free_port() -> Result<u16> {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(FixtureError::io("binding 127.0.0.1:0 to find a free port"))?;
        let port = listener
            .local_addr()
            .map_err(FixtureError::io("reading the bound address"))?
            .port();
        let mut seen = handed_out.lock().unwrap_or_else(|e| e.into_inner());
        if seen.insert(port) {
            return Ok(port);
        }
    }
}
