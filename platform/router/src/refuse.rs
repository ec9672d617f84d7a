//! Requests the router refuses before routing, whatever their route. Pure.
//!
//! - More than one `Host` header: RFC 9112 3.2 requires a 400. The router routes by
//!   the first while a backend (or a cache in front of it) may read the last, so such a
//!   request could be routed as one host and served as another.
//! - `CONNECT`: a forward proxy's tunnel. A reverse proxy has no target for it; sent on
//!   to a backend it would be mangled (`CONNECT /`) and its 2xx answer would turn the
//!   client's connection into a tunnel nothing reads. nginx refuses it too.
//! - `TRACE`: it echoes the request back, the forwarding headers the router adds and
//!   any credentials with it (cross-site tracing); nginx answers it 405 as well.

use http::{HeaderMap, HeaderValue, Method, StatusCode};

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// More than one `Host` header.
    MultipleHosts,
    /// A method the router does not proxy.
    Method,
}

/// The methods a refused method's `Allow` header lists: every other standard one.
pub const ALLOWED: HeaderValue =
    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");

impl Refusal {
    /// The status it is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::MultipleHosts => StatusCode::BAD_REQUEST,
            Refusal::Method => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::MultipleHosts => "more than one Host header",
            Refusal::Method => "the router does not proxy CONNECT or TRACE",
        }
    }
}

/// Whether a request with `method` and `headers` is refused, and why.
pub fn check(method: &Method, headers: &HeaderMap) -> Option<Refusal> {
    if *method == Method::CONNECT || *method == Method::TRACE {
        return Some(Refusal::Method);
    }
    if headers.get_all(http::header::HOST).iter().nth(1).is_some() {
        return Some(Refusal::MultipleHosts);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::HOST, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn one_host_or_none_passes_two_do_not() {
        assert_eq!(check(&Method::GET, &hosts(&["a.example"])), None);
        // No Host at all: HTTP/2 (the target's authority) or HTTP/1.0; routing decides.
        assert_eq!(check(&Method::GET, &hosts(&[])), None);
        for two in [["a.example", "b.example"], ["a.example", "a.example"]] {
            assert_eq!(
                check(&Method::GET, &hosts(&two)),
                Some(Refusal::MultipleHosts)
            );
        }
        assert_eq!(Refusal::MultipleHosts.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn connect_and_trace_are_refused_other_methods_pass() {
        let one = hosts(&["a.example"]);
        for m in [Method::CONNECT, Method::TRACE] {
            assert_eq!(check(&m, &one), Some(Refusal::Method), "{m}");
        }
        for m in [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND",
        ] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert_eq!(check(&m, &one), None, "{m}");
        }
        assert_eq!(Refusal::Method.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
