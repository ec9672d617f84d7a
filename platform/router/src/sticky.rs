//! Sticky sessions: a cookie naming the client's backend, signed with HMAC-SHA256 so a
//! client cannot steer itself to a backend of its choice (or of another app). Pure.
//!
//! Cookie: `paas_sticky=<addr>~<mac>`, where `<mac>` is the URL-safe base64 HMAC of
//! `<app>\n<addr>` under the cluster's sticky key (`router/sticky-key` in etcd, shared
//! by every router, so any router honours a cookie another one set). A cookie that does
//! not verify is ignored. When the named backend is gone the request goes elsewhere and
//! the response sets a new cookie ([`crate::balance`] does the fallback).

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::COOKIE;
use http::HeaderMap;
use ring::hmac;

/// The cookie's name.
pub const COOKIE_NAME: &str = "paas_sticky";

/// The key cookies are signed with.
#[derive(Clone)]
pub struct StickyKey(hmac::Key);

impl std::fmt::Debug for StickyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StickyKey(..)")
    }
}

impl StickyKey {
    /// A key from secret bytes.
    pub fn new(secret: &[u8]) -> Self {
        StickyKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn mac(&self, app: &str, addr: &str) -> hmac::Tag {
        hmac::sign(&self.0, format!("{app}\n{addr}").as_bytes())
    }

    /// The cookie value sending `app`'s client to `addr`.
    pub fn value(&self, app: &str, addr: SocketAddr) -> String {
        let addr = addr.to_string();
        let tag = self.mac(app, &addr);
        format!("{addr}~{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The backend a cookie value names, if its signature is valid for `app`.
    pub fn verify(&self, app: &str, value: &str) -> Option<SocketAddr> {
        let (addr, mac) = value.rsplit_once('~')?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        hmac::verify(&self.0, format!("{app}\n{addr}").as_bytes(), &mac).ok()?;
        addr.parse().ok()
    }

    /// The verified backend from a request's `Cookie` headers, if any. Read as bytes:
    /// other cookies may carry bytes beyond ASCII (browsers send back what servers set),
    /// and they must not hide this one.
    pub fn from_headers(&self, app: &str, headers: &HeaderMap) -> Option<SocketAddr> {
        headers
            .get_all(COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
            .filter_map(|pair| {
                let eq = pair.iter().position(|&b| b == b'=')?;
                let (name, value) = (&pair[..eq], &pair[eq + 1..]);
                (name.trim_ascii() == COOKIE_NAME.as_bytes()).then_some(value)
            })
            .filter_map(|value| std::str::from_utf8(value.trim_ascii()).ok())
            .find_map(|value| self.verify(app, value))
    }

    /// A `Set-Cookie` value for `addr` (whole session, every path, HTTP only).
    pub fn set_cookie(&self, app: &str, addr: SocketAddr) -> String {
        format!(
            "{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Lax",
            self.value(app, addr)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn addr() -> SocketAddr {
        "127.0.0.1:5001".parse().unwrap()
    }

    #[test]
    fn round_trip_and_tampering() {
        let key = StickyKey::new(b"secret");
        let value = key.value("shop", addr());
        assert_eq!(key.verify("shop", &value), Some(addr()));
        // Another app, another key, another address, garbage: refused.
        assert_eq!(key.verify("blog", &value), None);
        assert_eq!(StickyKey::new(b"other").verify("shop", &value), None);
        let forged = value.replace("5001", "5002");
        assert_eq!(key.verify("shop", &forged), None);
        assert_eq!(key.verify("shop", "127.0.0.1:5001"), None);
        assert_eq!(key.verify("shop", "~"), None);
    }

    #[test]
    fn found_among_other_cookies() {
        let key = StickyKey::new(b"secret");
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; paas_sticky=bogus"));
        let good = format!("b=2; {COOKIE_NAME}={}", key.value("shop", addr()));
        headers.append(COOKIE, HeaderValue::from_str(&good).unwrap());
        assert_eq!(key.from_headers("shop", &headers), Some(addr()));
        assert_eq!(key.from_headers("blog", &headers), None);
        assert!(key
            .set_cookie("shop", addr())
            .starts_with("paas_sticky=127.0.0.1:5001~"));
    }

    #[test]
    fn other_cookies_beyond_ascii_do_not_hide_it() {
        // Found by the `sticky_cookie` fuzz target: a byte beyond ASCII anywhere in the
        // header made the whole header unreadable as text, and the client lost its
        // backend.
        let key = StickyKey::new(b"secret");
        let mut raw = format!("{COOKIE_NAME}={}; name=caf", key.value("shop", addr())).into_bytes();
        raw.extend_from_slice(&[0xc3, 0xa9]);
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_bytes(&raw).unwrap());
        assert_eq!(key.from_headers("shop", &headers), Some(addr()));

        // Not our cookie's value: refused, whatever its bytes.
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_bytes(b"paas_sticky=\xe1~x").unwrap(),
        );
        assert_eq!(key.from_headers("shop", &headers), None);
    }
}
