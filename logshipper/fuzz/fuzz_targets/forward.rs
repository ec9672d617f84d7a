//! Fuzzes the Fluent Forward decoder: the MessagePack frame check followed by decoding of
//! every complete frame (all four modes, gzip, handshake messages).
//! Invariants checked: no panic; a complete frame is never longer than the input; a
//! failed decode leaves the output batch as it was; no line is over the line cap; the
//! decoded text is linear in the input (at most `MAX_GROWTH` bytes per input byte plus a
//! little per line), so an amplifying input is a crash, not just a slow unit.
//!
//! Run with limits (`scripts/fuzz` does): `cargo +nightly fuzz run forward --
//! -timeout=1 -rss_limit_mb=512` from `logshipper/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paas_logshipper::forward::{decode, frame, Limits};

const MAX: usize = 1 << 20;
const LIMITS: Limits = Limits {
    max_line: 64 << 10,
    max_inflated: MAX,
};
const MAX_GROWTH: usize = 10;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut out = Vec::new();
    while let Ok(frame::Check::Complete(len)) = frame::check(rest, MAX) {
        assert!(len > 0 && len <= rest.len());
        let before = out.len();
        if decode(&rest[..len], &LIMITS, &mut out).is_err() {
            assert_eq!(out.len(), before);
        }
        rest = &rest[len..];
    }
    let text: usize = out.iter().map(|l| l.message.len()).sum();
    assert!(out.iter().all(|l| l.message.len() <= LIMITS.max_line));
    // Gzip bodies may legitimately inflate up to `max_inflated`.
    let budget = MAX_GROWTH * (data.len() + LIMITS.max_inflated * usize::from(has_gzip(data)));
    assert!(
        text <= budget + 16 * out.len(),
        "{} input bytes became {text} bytes of text in {} lines",
        data.len(),
        out.len()
    );
});

fn has_gzip(data: &[u8]) -> bool {
    data.windows(4).any(|w| w == b"gzip")
}
