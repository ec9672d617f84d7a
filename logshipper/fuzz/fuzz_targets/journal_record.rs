//! Fuzzes the journal's record reader and payload decoders, as recovery runs them over
//! a segment file whose tail may be torn or corrupt.
//! Invariants checked: no panic; the reader never claims more bytes than it was given;
//! a decoded line encodes back to a payload that decodes to the same line.
//!
//! Run: `cargo +nightly fuzz run journal_record -- -timeout=1 -rss_limit_mb=512`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paas_logshipper::journal::record::{self, ReadRecord};

fuzz_target!(|data: &[u8]| {
    let mut reader = data;
    let mut payload = Vec::new();
    let mut consumed = 0u64;
    loop {
        match record::read_record(&mut reader, &mut payload).expect("reading a slice") {
            ReadRecord::Record { id, bytes } => {
                consumed += bytes;
                assert!(consumed <= data.len() as u64);
                let _ = record::decode_origin(&payload);
                if let Ok(line) = record::decode_payload(id, &payload) {
                    let again = record::encode_payload(&line, None).expect("re-encode");
                    let back = record::decode_payload(id, &again).expect("decode again");
                    assert_eq!(back, line);
                }
            }
            ReadRecord::End | ReadRecord::Torn | ReadRecord::Corrupt(_) => break,
        }
    }
});
