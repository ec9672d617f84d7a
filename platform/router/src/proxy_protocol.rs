//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer in front of the
//! router sends one header naming the real client before the HTTP bytes. Decoding is
//! pure and in two phases, like every framing decoder here: [`decode`] says
//! `Incomplete` (not an error: wait for more bytes) or gives the header and its length.
//!
//! v1: `PROXY TCP4|TCP6|UNKNOWN <src> <dst> <sport> <dport>\r\n`, at most 107 bytes.
//! v2: the 12-byte signature, version/command, family, a 16-bit length, then the
//! addresses (and TLVs, skipped). A v2 `LOCAL` command or v1 `UNKNOWN` (health checks
//! from the balancer itself) means: use the connection's own addresses.
//!
//! Only the listener configured for it expects the header; a connection there without a
//! valid one is closed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included.
pub const V1_MAX: usize = 107;
/// Longest v2 header accepted (addresses plus TLVs).
pub const V2_MAX: usize = 4096;

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied connection: the real client and the address it connected to.
    Proxied {
        /// The client.
        source: SocketAddr,
        /// The address the client connected to (the balancer's).
        destination: SocketAddr,
    },
    /// The balancer's own connection (v2 LOCAL, v1 UNKNOWN, unsupported families).
    Local,
}

/// The outcome of [`decode`] on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// A prefix of a valid header: read more.
    Incomplete,
    /// A whole header of `len` bytes.
    Complete {
        /// The header.
        header: Header,
        /// Its length: the HTTP bytes start after it.
        len: usize,
    },
}

/// Why a connection's first bytes are not a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// Neither the v1 nor the v2 signature.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// The signature matched but the rest did not parse.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    /// Longer than the protocol (or this router) allows.
    #[error("PROXY header too long")]
    TooLong,
    /// The header did not arrive in time, or reading failed.
    #[error("reading the PROXY header: {0}")]
    Read(String),
}

/// Decodes a header from the start of `buf`. Pure.
pub fn decode(buf: &[u8]) -> Result<Decoded, ProxyHeaderError> {
    const V1_PREFIX: &[u8] = b"PROXY ";
    let n = buf.len().min(12);
    if buf.len() >= 6 && buf.starts_with(V1_PREFIX) {
        return decode_v1(buf);
    }
    if buf.len() >= 12 && buf.starts_with(V2_SIGNATURE) {
        return decode_v2(buf);
    }
    if V1_PREFIX.starts_with(&buf[..n.min(6)]) || V2_SIGNATURE.starts_with(&buf[..n]) {
        return Ok(Decoded::Incomplete);
    }
    Err(ProxyHeaderError::NotProxy)
}

fn decode_v1(buf: &[u8]) -> Result<Decoded, ProxyHeaderError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyHeaderError::TooLong)
        } else {
            Ok(Decoded::Incomplete)
        };
    };
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| ProxyHeaderError::Malformed("v1 not ASCII"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    match parts.get(1).copied() {
        Some("UNKNOWN") => Ok(Decoded::Complete {
            header: Header::Local,
            len,
        }),
        Some(family @ ("TCP4" | "TCP6")) => {
            let [_, _, src, dst, sport, dport] = parts[..] else {
                return Err(ProxyHeaderError::Malformed(
                    "v1 needs 4 addresses and ports",
                ));
            };
            let ip = |s: &str| -> Result<IpAddr, ProxyHeaderError> {
                let ip: IpAddr = s
                    .parse()
                    .map_err(|_| ProxyHeaderError::Malformed("v1 address"))?;
                if ip.is_ipv4() != (family == "TCP4") {
                    return Err(ProxyHeaderError::Malformed("v1 address family"));
                }
                Ok(ip)
            };
            let port = |s: &str| {
                s.parse::<u16>()
                    .map_err(|_| ProxyHeaderError::Malformed("v1 port"))
            };
            Ok(Decoded::Complete {
                header: Header::Proxied {
                    source: SocketAddr::new(ip(src)?, port(sport)?),
                    destination: SocketAddr::new(ip(dst)?, port(dport)?),
                },
                len,
            })
        }
        _ => Err(ProxyHeaderError::Malformed("v1 protocol")),
    }
}

fn decode_v2(buf: &[u8]) -> Result<Decoded, ProxyHeaderError> {
    if buf.len() < 16 {
        return Ok(Decoded::Incomplete);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("v2 version"));
    }
    let family = buf[13];
    let body_len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let len = 16 + body_len;
    if len > V2_MAX {
        return Err(ProxyHeaderError::TooLong);
    }
    if buf.len() < len {
        return Ok(Decoded::Incomplete);
    }
    let body = &buf[16..len];
    let header = match (version_command & 0x0f, family) {
        (0x0, _) => Header::Local,
        (0x1, 0x11) => {
            if body.len() < 12 {
                return Err(ProxyHeaderError::Malformed("v2 TCP4 addresses"));
            }
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[at],
                    body[at + 1],
                    body[at + 2],
                    body[at + 3],
                ))
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            Header::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        (0x1, 0x21) => {
            if body.len() < 36 {
                return Err(ProxyHeaderError::Malformed("v2 TCP6 addresses"));
            }
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            Header::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        // UNSPEC, UDP, unix sockets: nothing usable about the client.
        (0x1, _) => Header::Local,
        _ => return Err(ProxyHeaderError::Malformed("v2 command")),
    };
    Ok(Decoded::Complete { header, len })
}

/// Reads and consumes the header at the start of `stream` (peeking, so not one byte of
/// the HTTP request after it is taken), within `limit`.
pub async fn read_header(
    stream: &mut TcpStream,
    limit: Duration,
) -> Result<Header, ProxyHeaderError> {
    let work = async {
        let mut buf = vec![0u8; V2_MAX];
        let mut seen = 0;
        loop {
            let n = stream
                .peek(&mut buf)
                .await
                .map_err(|e| ProxyHeaderError::Read(e.to_string()))?;
            if n == 0 {
                return Err(ProxyHeaderError::Read("connection closed".into()));
            }
            match decode(&buf[..n])? {
                Decoded::Complete { header, len } => {
                    stream
                        .read_exact(&mut buf[..len])
                        .await
                        .map_err(|e| ProxyHeaderError::Read(e.to_string()))?;
                    return Ok(header);
                }
                Decoded::Incomplete if n == seen => {
                    // Nothing new since the last peek: wait a little for the rest.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Decoded::Incomplete => seen = n,
            }
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| ProxyHeaderError::Read("timed out".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn check(input: &[u8], expected: Result<Decoded, ProxyHeaderError>) {
        assert_eq!(
            decode(input),
            expected,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }

    fn proxied(source: &str, destination: &str, len: usize) -> Result<Decoded, ProxyHeaderError> {
        Ok(Decoded::Complete {
            header: Header::Proxied {
                source: addr(source),
                destination: addr(destination),
            },
            len,
        })
    }

    #[test]
    fn v1() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n";
        check(line, proxied("203.0.113.7:5555", "10.0.0.1:80", 41));
        check(
            b"PROXY TCP6 2001:db8::1 ::1 4000 443\r\n",
            proxied("[2001:db8::1]:4000", "[::1]:443", 37),
        );
        check(
            b"PROXY UNKNOWN\r\n",
            Ok(Decoded::Complete {
                header: Header::Local,
                len: 15,
            }),
        );
        for prefix in [&b""[..], b"P", b"PROX", b"PROXY ", b"PROXY TCP4 1.2.3.4"] {
            check(prefix, Ok(Decoded::Incomplete));
        }
        check(b"GET / HTTP/1.1\r\n", Err(ProxyHeaderError::NotProxy));
        check(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            Err(ProxyHeaderError::Malformed(
                "v1 needs 4 addresses and ports",
            )),
        );
        check(
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            Err(ProxyHeaderError::Malformed("v1 address family")),
        );
        check(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
            Err(ProxyHeaderError::Malformed("v1 port")),
        );
        check(
            b"PROXY UDP4 x\r\n",
            Err(ProxyHeaderError::Malformed("v1 protocol")),
        );
        check(
            format!("PROXY {}", "x".repeat(120)).as_bytes(),
            Err(ProxyHeaderError::TooLong),
        );
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v2_headers() {
        let mut tcp4 = vec![203, 0, 113, 7, 10, 0, 0, 1];
        tcp4.extend_from_slice(&5555u16.to_be_bytes());
        tcp4.extend_from_slice(&80u16.to_be_bytes());
        tcp4.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]); // a TLV, skipped
        let header = v2(1, 0x11, &tcp4);
        let mut with_request = header.clone();
        with_request.extend_from_slice(b"GET / HTTP/1.1\r\n");
        check(
            &with_request,
            proxied("203.0.113.7:5555", "10.0.0.1:80", 32),
        );
        for cut in [1, 11, 12, 15, 16, 31] {
            check(&header[..cut], Ok(Decoded::Incomplete));
        }

        let mut tcp6 = Vec::new();
        tcp6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        tcp6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        tcp6.extend_from_slice(&4000u16.to_be_bytes());
        tcp6.extend_from_slice(&443u16.to_be_bytes());
        check(
            &v2(1, 0x21, &tcp6),
            proxied("[2001:db8::1]:4000", "[::1]:443", 52),
        );

        let local = || {
            Ok(Decoded::Complete {
                header: Header::Local,
                len: 16,
            })
        };
        check(&v2(0, 0x00, &[]), local());
        check(&v2(1, 0x00, &[]), local());
        check(
            &v2(1, 0x11, &[1, 2, 3]),
            Err(ProxyHeaderError::Malformed("v2 TCP4 addresses")),
        );
        check(
            &v2(2, 0x11, &[]),
            Err(ProxyHeaderError::Malformed("v2 command")),
        );
        let mut bad_version = v2(1, 0x11, &[]);
        bad_version[12] = 0x11;
        check(&bad_version, Err(ProxyHeaderError::Malformed("v2 version")));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        check(&huge, Err(ProxyHeaderError::TooLong));
    }
}
