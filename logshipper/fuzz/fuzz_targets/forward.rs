//! Fuzzes the Fluent Forward decoder: the MessagePack frame check followed by decoding of
//! every complete frame (all four modes, gzip, handshake messages).
//! Invariants checked: no panic; a complete frame is never longer than the input; a
//! failed decode leaves the output batch as it was.
//!
//! Run: `cargo +nightly fuzz run forward` from `logshipper/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paas_logshipper::forward::{decode, frame};

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut out = Vec::new();
    while let Ok(frame::Check::Complete(len)) = frame::check(rest, MAX) {
        assert!(len > 0 && len <= rest.len());
        let before = out.len();
        if decode(&rest[..len], MAX, &mut out).is_err() {
            assert_eq!(out.len(), before);
        }
        rest = &rest[len..];
    }
});
