//! Fuzzes the hop-by-hop header removal the router applies to every request and
//! response, with client- (or backend-) chosen `Connection` values.
//! Invariants checked: no panic; afterwards none of the always-hop-by-hop headers and
//! none of the headers a `Connection` value names is left (`Upgrade` and
//! `Connection: upgrade` only on an upgrade); every other header keeps all its values,
//! in order.
//!
//! Input: the first byte's low bit says whether it is an upgrade; the rest is lines of
//! `name:value` (lines that are not a valid header are skipped).
//!
//! Run: `cargo +nightly fuzz run hop_by_hop -- -timeout=1 -rss_limit_mb=512` from
//! `platform/router/`.
#![no_main]

use http::header::{HeaderName, CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use paas_router::headers::strip_hop_by_hop;

const ALWAYS: [&str; 8] = [
    "connection",
    "te",
    "trailer",
    "transfer-encoding",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let upgrade = flags & 1 == 1;
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let before = headers.clone();
    strip_hop_by_hop(&mut headers, upgrade);

    let hop = |name: &HeaderName| {
        ALWAYS.contains(&name.as_str()) || named.contains(name) || *name == UPGRADE
    };
    for name in headers.keys() {
        if *name == CONNECTION && upgrade {
            let values: Vec<_> = headers.get_all(CONNECTION).iter().collect();
            assert_eq!(values, ["upgrade"]);
        } else if *name == UPGRADE && upgrade {
            let kept: Vec<_> = headers.get_all(UPGRADE).iter().collect();
            let given: Vec<_> = before.get_all(UPGRADE).iter().collect();
            assert_eq!(kept, given);
        } else {
            assert!(!hop(name), "{name} is left");
        }
    }
    for name in before.keys().filter(|n| !hop(n)) {
        let kept: Vec<_> = headers.get_all(name).iter().collect();
        let given: Vec<_> = before.get_all(name).iter().collect();
        assert_eq!(kept, given, "{name}");
    }
});
