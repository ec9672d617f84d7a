//! Fuzzes the PROXY protocol header decoder (v1 and v2), which reads the first bytes of
//! every connection on the PROXY listener.
//! Invariants checked: no panic; a header never claims more bytes than were given, nor
//! more than the protocol allows; it decodes the same from exactly its own bytes (what
//! follows it is the HTTP request's); a prefix of a header, or of bytes still
//! `Incomplete`, is `Incomplete` too (never an error or a header), so the reader waits
//! for more bytes exactly when it should.
//!
//! Run: `cargo +nightly fuzz run proxy_header -- -timeout=1 -rss_limit_mb=512` from
//! `platform/router/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paas_router::proxy_protocol::{decode, Decoded, V1_MAX, V2_MAX};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(Decoded::Complete { header, len }) => {
            assert!(len > 0 && len <= data.len());
            assert!(len <= V1_MAX.max(V2_MAX), "a {len}-byte header");
            assert_eq!(decode(&data[..len]), Ok(Decoded::Complete { header, len }));
            for cut in [len - 1, len / 2, 12.min(len - 1), 16.min(len - 1)] {
                assert_eq!(
                    decode(&data[..cut]),
                    Ok(Decoded::Incomplete),
                    "cut at {cut}"
                );
            }
        }
        Ok(Decoded::Incomplete) => {
            assert!(data.len() < V1_MAX.max(V2_MAX));
            if let Some(cut) = data.len().checked_sub(1) {
                assert_eq!(decode(&data[..cut]), Ok(Decoded::Incomplete));
            }
        }
        Err(_) => {}
    }
});
