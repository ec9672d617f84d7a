//! Fuzzes the store's segment reader (`paas log` history is rebuilt from these files at
//! start, so a torn or corrupt file must never stop the aggregator).
//! Invariants checked: no panic; the valid prefix is within the input; decoding just
//! that prefix gives the same lines and a clean tail; re-encoding the lines gives bytes
//! that decode to the same lines.
//!
//! Run: `cargo +nightly fuzz run store_segment -- -timeout=1 -rss_limit_mb=512`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paas_logshipper::store::segment::{decode_records, encode_record, Tail};

fuzz_target!(|data: &[u8]| {
    let (lines, good, _) = decode_records(data);
    assert!(good <= data.len());
    let (again, good_again, tail) = decode_records(&data[..good]);
    assert_eq!((&again, good_again, tail), (&lines, good, Tail::Clean));
    let mut encoded = Vec::new();
    for line in &lines {
        if encode_record(&mut encoded, line).is_err() {
            return;
        }
    }
    let (decoded, _, tail) = decode_records(&encoded);
    assert_eq!((decoded, tail), (lines, Tail::Clean));
});
