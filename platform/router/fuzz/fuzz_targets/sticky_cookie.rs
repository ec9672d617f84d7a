//! Fuzzes the sticky cookie check: every request to a sticky route hands the router
//! its `Cookie` headers, whatever the client put in them.
//! Invariants checked: no panic; a cookie that verifies names a backend whose own
//! cookie verifies back to it; no cookie verifies for another app than its own.
//!
//! Input: the first byte splits the rest into the app name and the `Cookie` header's
//! bytes.
//!
//! Run: `cargo +nightly fuzz run sticky_cookie -- -timeout=1 -rss_limit_mb=512` from
//! `platform/router/`.
#![no_main]

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use paas_router::sticky::StickyKey;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (app, cookie) = rest.split_at((split as usize).min(rest.len()));
    let Ok(app) = std::str::from_utf8(app) else {
        return;
    };
    let Ok(value) = HeaderValue::from_bytes(cookie) else {
        return;
    };
    let key = StickyKey::new(b"fuzzing key");
    let mut headers = HeaderMap::new();
    headers.append(COOKIE, value);
    if let Some(addr) = key.from_headers(app, &headers) {
        let mine = key.value(app, addr);
        assert_eq!(key.verify(app, &mine), Some(addr));
        assert_eq!(key.verify(&format!("{app}x"), &mine), None);
    }
    // A cookie the router set itself, sent back with whatever else the client sends.
    let addr = "10.0.0.1:8080".parse().unwrap();
    let set = format!(
        "{}={}",
        paas_router::sticky::COOKIE_NAME,
        key.value(app, addr)
    );
    if let Ok(theirs) =
        HeaderValue::from_str(&format!("{set}; {}", String::from_utf8_lossy(cookie)))
    {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, theirs);
        assert_eq!(key.from_headers(app, &headers), Some(addr));
    }
});
