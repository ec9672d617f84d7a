//! Fuzzes the syslog input decoder: framing detection, RFC 6587 frame checks (both
//! framings) and RFC 5424 parsing/mapping, exactly as a connection runs them.
//! Invariants checked: no panic, never more bytes consumed than given, and decoding the
//! same bytes split at any point yields the same lines as decoding them whole.
//!
//! Run: `cargo +nightly fuzz run syslog` from `logshipper/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paas_logshipper::aggregator::Batch;
use paas_logshipper::ingest::scan_syslog;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut framing = None;
    let mut whole = Batch::default();
    let scan = scan_syslog(data, &mut framing, MAX, 0, &mut whole);
    assert!(scan.consumed <= data.len());

    // Feed the same bytes in two reads, as a socket might deliver them.
    let split = data
        .first()
        .map_or(0, |b| usize::from(*b) % (data.len() + 1));
    let mut framing2 = None;
    let mut parts = Batch::default();
    let first = scan_syslog(&data[..split], &mut framing2, MAX, 0, &mut parts);
    if first.close.is_none() {
        let second = scan_syslog(&data[first.consumed..], &mut framing2, MAX, 0, &mut parts);
        if scan.close.is_none() && second.close.is_none() {
            assert_eq!(whole, parts);
        }
    }
});
