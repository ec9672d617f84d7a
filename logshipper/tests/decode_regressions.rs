//! Inputs that once made a decoder misbehave (found by fuzzing or reported), replayed on
//! every test run with the limits the service uses by default.
//!
//! Each file under `tests/regressions/<input>/` is one connection's bytes. Decoding must
//! finish, every line must respect the line cap, and the decoded text must stay linear
//! in the input ([`MAX_GROWTH`] bytes per byte received, plus a little per line).
//! `nested-map-keys-536mb-line.bin` (232 bytes) once built a 536,871,965-byte line.

use std::path::Path;

use paas_logshipper::aggregator::Batch;
use paas_logshipper::forward::{self, frame, Limits};
use paas_logshipper::ingest::{scan_syslog, IngestConfig};

/// Most bytes of message text one input byte may become (a 3-byte ext becomes a
/// 27-byte JSON object; everything else grows less).
const MAX_GROWTH: usize = 10;

fn corpus(input: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/regressions")
        .join(input);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no regression inputs in {}",
        dir.display()
    );
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

fn check_growth(name: &str, input: usize, messages: impl Iterator<Item = usize>, cap: usize) {
    let (mut lines, mut total) = (0usize, 0usize);
    for len in messages {
        assert!(
            len <= cap,
            "{name}: a {len}-byte line is over the {cap}-byte cap"
        );
        lines += 1;
        total += len;
    }
    assert!(
        total <= MAX_GROWTH * input + 16 * lines,
        "{name}: {input} bytes became {total} bytes of text in {lines} lines"
    );
}

#[test]
fn forward_regressions_decode_within_bounds() {
    let config = IngestConfig::default();
    let limits = Limits {
        max_line: config.max_line_bytes,
        max_inflated: config.max_inflated_bytes,
    };
    for (name, bytes) in corpus("forward") {
        let mut rest = bytes.as_slice();
        let mut sizes = Vec::new();
        while let Ok(frame::Check::Complete(len)) = frame::check(rest, config.max_message_bytes) {
            if let Ok(parsed) = forward::parse(&rest[..len], limits.max_inflated) {
                sizes.extend(
                    parsed
                        .entries
                        .lines(limits.max_line)
                        .map(|l| l.message.len()),
                );
            }
            rest = &rest[len..];
        }
        check_growth(&name, bytes.len(), sizes.into_iter(), limits.max_line);
    }
}

#[test]
fn syslog_regressions_decode_within_bounds() {
    let config = IngestConfig::default();
    for (name, bytes) in corpus("syslog") {
        let mut framing = None;
        let mut out = Batch::default();
        scan_syslog(&bytes, &mut framing, config.max_message_bytes, 0, &mut out);
        let sizes = out.lines.iter().map(|l| l.message.len());
        check_growth(&name, bytes.len(), sizes, config.max_message_bytes);
    }
}
