//! Property tests of the input decoders on arbitrary and on valid-but-split input, run on
//! stable in every test run (the cargo-fuzz targets in `fuzz/` explore further).

use paas_logshipper::aggregator::Batch;
use paas_logshipper::forward::{decode, frame, Limits};
use paas_logshipper::ingest::scan_syslog;
use proptest::prelude::*;
use rmpv::Value;

const LIMITS: Limits = Limits {
    max_line: 1 << 16,
    max_inflated: 1 << 16,
};

fn syslog_frames(msgs: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        let msg = format!("<14>1 - host app web.1 stdout - {m}");
        out.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
    }
    out
}

proptest! {
    #[test]
    fn syslog_never_panics_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut framing = None;
        let mut out = Batch::default();
        let scan = scan_syslog(&data, &mut framing, 512, 0, &mut out);
        prop_assert!(scan.consumed <= data.len());
    }

    #[test]
    fn syslog_split_reads_give_the_same_lines(
        msgs in proptest::collection::vec("[ -~]{0,60}", 1..20),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = syslog_frames(&msgs);
        let cut = cut.index(bytes.len() + 1);
        let mut framing = None;
        let mut out = Batch::default();
        let first = scan_syslog(&bytes[..cut], &mut framing, 4096, 0, &mut out);
        prop_assert_eq!(first.close, None);
        let second = scan_syslog(&bytes[first.consumed..], &mut framing, 4096, 0, &mut out);
        prop_assert_eq!(second.close, None);
        prop_assert_eq!(first.consumed + second.consumed, bytes.len());
        let got: Vec<String> = out.lines.into_iter().map(|l| l.message).collect();
        let expected: Vec<String> = msgs.iter().map(|m| m.trim_end_matches(['\r', '\n']).to_owned()).collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn forward_never_panics_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut rest = data.as_slice();
        let mut out = Vec::new();
        while let Ok(frame::Check::Complete(len)) = frame::check(rest, 1 << 16) {
            prop_assert!(len > 0 && len <= rest.len());
            let before = out.len();
            if decode(&rest[..len], &LIMITS, &mut out).is_err() {
                prop_assert_eq!(out.len(), before);
            }
            rest = &rest[len..];
        }
    }

    #[test]
    fn forward_frames_are_found_at_any_split(
        msgs in proptest::collection::vec("[a-z ]{0,40}", 1..20),
        cut in any::<prop::sample::Index>(),
    ) {
        let entries = msgs
            .iter()
            .map(|m| Value::Array(vec![
                Value::from(7),
                Value::Map(vec![(Value::from("log"), Value::from(m.as_str()))]),
            ]))
            .collect();
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &Value::Array(vec![Value::from("app"), Value::Array(entries)])).unwrap();
        let cut = cut.index(bytes.len());
        prop_assert_eq!(frame::check(&bytes[..cut], 1 << 16), Ok(frame::Check::Incomplete));
        prop_assert_eq!(frame::check(&bytes, 1 << 16), Ok(frame::Check::Complete(bytes.len())));
        let mut out = Vec::new();
        decode(&bytes, &LIMITS, &mut out).unwrap();
        let got: Vec<String> = out.into_iter().map(|l| l.message).collect();
        prop_assert_eq!(got, msgs);
    }
}
