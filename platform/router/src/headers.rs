//! Request and response header rules of the proxy. Pure.
//!
//! Upstream requests lose their hop-by-hop headers (RFC 9110 7.6.1: `Connection`, the
//! headers it names, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`,
//! `Upgrade`), except that an upgrade request keeps `Connection: upgrade` and
//! `Upgrade`. They gain `X-Forwarded-For` (the client appended to any earlier list),
//! `X-Forwarded-Proto`, `X-Forwarded-Port` (both replaced) and `X-Request-Id` (kept if
//! the client sent one, else generated). Responses lose hop-by-hop headers too, and
//! carry the request id back.

use std::net::IpAddr;

use http::header::{
    HeaderName, CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderValue};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Port`.
pub const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
/// `X-Request-Id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

// Hop-by-hop headers http has no constant for (a constant spares parsing the name on
// every request).
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Longest client-given request id kept; longer ones are replaced.
pub const MAX_REQUEST_ID: usize = 200;

/// What the proxy adds about the client connection, as header values made once per
/// connection (each request then shares them instead of formatting its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The client's address (the last `X-Forwarded-For` entry).
    client: HeaderValue,
    /// `http` or `https`.
    proto: HeaderValue,
    /// The port the client connected to.
    port: HeaderValue,
}

impl Forwarded {
    /// The values for a client at `client` connected to `port` over `proto`.
    pub fn new(client: IpAddr, proto: &'static str, port: u16) -> Self {
        Forwarded {
            client: HeaderValue::try_from(client.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static(proto),
            port: HeaderValue::from(port),
        }
    }
}

/// Whether the request asks for a protocol upgrade the router passes through
/// (`Connection: upgrade` + `Upgrade`, as websockets do).
///
/// An upgrade that offers `h2c` is not one: it is forwarded as a plain request, its
/// `Upgrade` and `Connection` stripped. A backend that accepted it would speak HTTP/2
/// on a spliced connection the router no longer reads, so every request the client
/// then sent on it would reach the backend unrouted, unlogged and without forwarding
/// headers ("h2c smuggling"). Clients that want HTTP/2 get it from the router itself.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let Some(upgrade) = headers.get(UPGRADE) else {
        return false;
    };
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
        && !tokens(upgrade).any(|protocol| {
            let name = protocol.split('/').next().unwrap_or(protocol);
            name.trim().eq_ignore_ascii_case("h2c")
        })
}

/// The tokens of every `Connection` value of `headers`.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all(CONNECTION).iter().flat_map(tokens)
}

/// The tokens of one `Connection` value: comma-separated, trimmed, empty ones skipped
/// (none when the value is not text).
fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Headers that are hop-by-hop whatever `Connection` says (`Upgrade` too, unless the
/// request is an upgrade).
const ALWAYS_HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers; keeps `Connection: upgrade` and `Upgrade` when `upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most requests and responses carry none of them (and so no `Connection` naming
    // others): one pass over the names finds those present, and only they are removed
    // by a hashed lookup (a backend's `Connection: keep-alive` costs two removals, not
    // ten).
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = ALWAYS_HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        } else if *name == UPGRADE && !upgrade {
            present |= 1 << ALWAYS_HOP_BY_HOP.len();
        }
    }
    if present != 0 {
        // The headers `Connection` names go first, by the names as written (a lookup by
        // `&str` lowercases on the stack: no name is allocated). Its value is taken out
        // of the map first, so that the names are not borrowed from it.
        if headers.get_all(CONNECTION).iter().nth(1).is_none() {
            if let Some(connection) = headers.remove(CONNECTION) {
                remove_named(headers, &connection, upgrade);
            }
        } else {
            let values: Vec<HeaderValue> = match headers.entry(CONNECTION) {
                http::header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
                http::header::Entry::Vacant(_) => Vec::new(),
            };
            for connection in &values {
                remove_named(headers, connection, upgrade);
            }
        }
        for (i, name) in ALWAYS_HOP_BY_HOP.into_iter().enumerate() {
            if present & (1 << i) != 0 {
                headers.remove(name);
            }
        }
        if present & (1 << ALWAYS_HOP_BY_HOP.len()) != 0 {
            headers.remove(UPGRADE);
        }
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes the headers one `Connection` value names (all but `Upgrade` when `upgrade`).
fn remove_named(headers: &mut HeaderMap, connection: &HeaderValue, upgrade: bool) {
    for token in tokens(connection) {
        if !(upgrade && token.eq_ignore_ascii_case("upgrade")) {
            headers.remove(token);
        }
    }
}

/// The request's id: the client's `X-Request-Id` if it is short, visible ASCII,
/// else `generated`.
pub fn request_id(headers: &HeaderMap, generated: impl FnOnce() -> HeaderValue) -> HeaderValue {
    if let Some(v) = headers.get(X_REQUEST_ID) {
        let ok = !v.is_empty()
            && v.len() <= MAX_REQUEST_ID
            && v.as_bytes().iter().all(|b| b.is_ascii_graphic());
        if ok {
            return v.clone();
        }
    }
    generated()
}

/// Prepares a client request's headers for the backend.
pub fn to_upstream(
    headers: &mut HeaderMap,
    fwd: &Forwarded,
    request_id: &HeaderValue,
    upgrade: bool,
) {
    strip_hop_by_hop(headers, upgrade);
    let earlier = headers
        .get(X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty());
    let xff = match earlier {
        None => Some(fwd.client.clone()),
        Some(earlier) => {
            let client = fwd.client.as_bytes();
            let mut list = Vec::with_capacity(earlier.len() + 2 + client.len());
            list.extend_from_slice(earlier.as_bytes());
            list.extend_from_slice(b", ");
            list.extend_from_slice(client);
            HeaderValue::from_maybe_shared(bytes::Bytes::from(list)).ok()
        }
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, fwd.proto.clone());
    headers.insert(X_FORWARDED_PORT, fwd.port.clone());
    headers.insert(X_REQUEST_ID, request_id.clone());
}

/// Prepares a backend response's headers for the client.
pub fn to_client(headers: &mut HeaderMap, request_id: &HeaderValue, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade);
    headers.insert(X_REQUEST_ID, request_id.clone());
}

/// Bytes of all header names and values (what the header size limit counts).
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn fwd() -> Forwarded {
        Forwarded::new("10.0.0.7".parse().unwrap(), "https", 8443)
    }

    #[test]
    fn upstream_headers() {
        let mut h = map(&[
            ("host", "shop.localhost"),
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
            ("accept", "*/*"),
        ]);
        let id = HeaderValue::from_static("abc");
        to_upstream(&mut h, &fwd(), &id, false);
        let got: Vec<(String, String)> = h
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let mut got = got;
        got.sort();
        assert_eq!(
            got,
            [
                ("accept", "*/*"),
                ("host", "shop.localhost"),
                ("x-forwarded-for", "1.2.3.4, 10.0.0.7"),
                ("x-forwarded-port", "8443"),
                ("x-forwarded-proto", "https"),
                ("x-request-id", "abc"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    #[test]
    fn upgrade_keeps_its_headers() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade(&h));
        to_upstream(&mut h, &fwd(), &HeaderValue::from_static("x"), true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");

        let mut plain = map(&[("upgrade", "websocket")]);
        assert!(!is_upgrade(&plain));
        strip_hop_by_hop(&mut plain, false);
        assert!(plain.is_empty());
    }

    #[test]
    fn an_h2c_upgrade_is_forwarded_as_a_plain_request() {
        for offer in ["h2c", "H2C", "websocket, h2c", "h2c/1"] {
            let mut h = map(&[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", offer),
                ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ("accept", "*/*"),
            ]);
            assert!(!is_upgrade(&h), "{offer}");
            to_upstream(&mut h, &fwd(), &HeaderValue::from_static("x"), false);
            for gone in ["connection", "upgrade", "http2-settings"] {
                assert!(!h.contains_key(gone), "{offer}: {gone} forwarded");
            }
            assert_eq!(h["accept"], "*/*");
        }
        // Names that merely contain it are other protocols.
        let h = map(&[("connection", "upgrade"), ("upgrade", "h2cx")]);
        assert!(is_upgrade(&h));
    }

    #[test]
    fn every_connection_line_names_headers_to_drop_whatever_their_case() {
        let mut h = map(&[
            ("connection", "X-Secret, keep-alive"),
            ("connection", " x-other ,,"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
            ("keep-alive", "timeout=5"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, map(&[("x-kept", "3")]));

        // An upgrade keeps `Upgrade` even when `Connection` names it, in any case.
        let mut h = map(&[
            ("connection", "UPGRADE, x-secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h,
            map(&[("upgrade", "websocket"), ("connection", "upgrade")])
        );
    }

    #[test]
    fn each_hop_by_hop_header_goes_alone_or_together() {
        // The mask that picks what to remove is what is under test here; which names
        // are hop-by-hop, the fuzz target checks against its own list.
        let always = ALWAYS_HOP_BY_HOP;
        let hop: Vec<&str> = always
            .iter()
            .map(HeaderName::as_str)
            .chain(["upgrade"])
            .collect();
        for &name in &hop {
            // Twice, so that every value of the name goes, not the first only.
            let mut h = map(&[(name, "a"), ("x-kept", "1"), (name, "b")]);
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h, map(&[("x-kept", "1")]), "{name}");
        }
        let mut all: Vec<(&str, &str)> = hop.iter().map(|n| (*n, "v")).collect();
        all.push(("x-kept", "1"));
        let mut h = map(&all);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, map(&[("x-kept", "1")]));
    }

    #[test]
    fn headers_without_hop_by_hop_ones_are_kept() {
        let pairs = [("host", "a"), ("accept", "*/*"), ("x-custom", "1")];
        let mut h = map(&pairs);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, map(&pairs));
        // A response to an upgrade gets its `Connection: upgrade` all the same.
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h.len(), 4);
    }

    #[test]
    fn request_ids() {
        let gen = || HeaderValue::from_static("generated");
        assert_eq!(
            request_id(&map(&[("x-request-id", "given-1")]), gen),
            "given-1"
        );
        assert_eq!(request_id(&map(&[]), gen), "generated");
        assert_eq!(
            request_id(&map(&[("x-request-id", "has space")]), gen),
            "generated"
        );
        let long = "a".repeat(MAX_REQUEST_ID + 1);
        assert_eq!(
            request_id(&map(&[("x-request-id", &long)]), gen),
            "generated"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(header_bytes(&map(&[("ab", "cde")])), 9);
        assert_eq!(header_bytes(&HeaderMap::new()), 0);
    }
}
