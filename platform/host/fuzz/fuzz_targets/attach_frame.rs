//! Fuzzes the `paas run` attach frame decoder (both the agent and the client read these
//! frames from the network).
//! Invariants checked: no panic; a frame never claims more bytes than were given; a
//! decoded frame encodes back to exactly the bytes it was decoded from; an incomplete
//! prefix of a frame is reported as incomplete, never as an error or another frame.
//!
//! Run: `cargo +nightly fuzz run attach_frame -- -timeout=1 -rss_limit_mb=512` from
//! `platform/host/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paas_host::attach::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, used))) = decode(rest) {
        assert!(used > 0 && used <= rest.len());
        let mut again = Vec::new();
        encode(&frame, &mut again);
        assert_eq!(again.as_slice(), &rest[..used]);
        if used > 1 {
            assert!(matches!(decode(&rest[..used - 1]), Ok(None)));
        }
        rest = &rest[used..];
    }
});
