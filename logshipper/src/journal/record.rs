//! Record framing inside a journal segment: encode one line, read one framed record back.
//!
//! A record is a 16-byte header followed by the payload:
//!
//! ```text
//! +-----------+-----------+-----------+-------------------------+
//! | len u32le | crc u32le | id u64le  | payload (len bytes)     |
//! +-----------+-----------+-----------+-------------------------+
//! ```
//!
//! `crc` is CRC-32 (IEEE) over the 8 id bytes followed by the payload. The payload is the
//! [`LogLine`] as a MessagePack map with its field names as keys; the `id` inside it is not
//! trusted, the header id is. A line that came with a sender's spool id
//! ([`Origin`]) also has the keys `seq` and (when known) `spool`; decoding a [`LogLine`]
//! ignores them, [`decode_origin`] reads them back to rebuild the duplicate marks. Reading is pure over [`std::io::Read`], so torn and corrupt
//! records are tested on byte slices.

use std::io::{self, Read};

use serde::Deserialize;

use crate::dedupe::Origin;
use crate::line::{LogLine, Stream};

/// Bytes in a record header (length, crc, id).
pub const HEADER_LEN: usize = 16;

/// Largest payload: appending a bigger line is refused, reading a bigger length is
/// corruption. Above the inputs' 16 MiB message limit, so every accepted line fits.
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;

/// Errors from encoding or decoding a record payload.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A payload whose crc matched could not be decoded as a line (format change or bug).
    #[error("decode line: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// A line encodes to more than [`MAX_PAYLOAD`] bytes.
    #[error("line of {0} bytes is over the {MAX_PAYLOAD} byte record limit")]
    TooLarge(usize),
}

/// What reading at the current position of a segment found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadRecord {
    /// A complete record with a valid crc; its payload is in the caller's buffer.
    Record {
        /// The record's line id.
        id: u64,
        /// Total bytes consumed (header + payload).
        bytes: u64,
    },
    /// Clean end of data exactly at a record boundary.
    End,
    /// Data ends inside a record: a write that did not complete (or is in progress).
    Torn,
    /// The bytes at this position are not a valid record.
    Corrupt(&'static str),
}

/// MessagePack writers for the payload map, written by hand because this runs once per
/// accepted line: the same bytes `rmp_serde::to_vec_named` gives for a [`LogLine`]
/// (tested), at a fraction of the instructions.
mod msgpack {
    /// A map header for `n` (< 16) entries.
    pub fn map_len(out: &mut Vec<u8>, n: u8) {
        debug_assert!(n < 16);
        out.push(0x80 | n);
    }

    /// A string in its smallest form.
    pub fn str(out: &mut Vec<u8>, s: &str) {
        let len = s.len();
        if len < 32 {
            out.push(0xa0 | len as u8);
        } else if len < 256 {
            out.extend_from_slice(&[0xd9, len as u8]);
        } else if len < 65_536 {
            out.push(0xda);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0xdb);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
        out.extend_from_slice(s.as_bytes());
    }

    /// Smallest unsigned form, as `rmp::encode::write_uint`.
    pub fn uint(out: &mut Vec<u8>, v: u64) {
        if v < 128 {
            out.push(v as u8);
        } else if v < 256 {
            out.extend_from_slice(&[0xcc, v as u8]);
        } else if v < 65_536 {
            out.push(0xcd);
            out.extend_from_slice(&(v as u16).to_be_bytes());
        } else if v < 1 << 32 {
            out.push(0xce);
            out.extend_from_slice(&(v as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// Smallest signed form, as `rmp::encode::write_sint` (non-negative as unsigned).
    pub fn sint(out: &mut Vec<u8>, v: i64) {
        if v >= 0 {
            uint(out, v as u64);
        } else if v >= -32 {
            out.push(v as i8 as u8);
        } else if v >= -128 {
            out.extend_from_slice(&[0xd0, v as i8 as u8]);
        } else if v >= -32_768 {
            out.push(0xd1);
            out.extend_from_slice(&(v as i16).to_be_bytes());
        } else if v >= -(1 << 31) {
            out.push(0xd2);
            out.extend_from_slice(&(v as i32).to_be_bytes());
        } else {
            out.push(0xd3);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// The part of a payload that identifies where a line came from.
#[derive(Deserialize)]
struct StoredOrigin {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    spool: Option<u64>,
}

/// Serializes a line (and its origin, if any) into a record payload.
pub fn encode_payload(line: &LogLine, origin: Option<&Origin>) -> Result<Vec<u8>, RecordError> {
    let mut payload = Vec::with_capacity(64 + line.message.len());
    encode_payload_into(&mut payload, line, origin)?;
    Ok(payload)
}

/// Appends the payload of a line (and its origin, if any) to `out`; on error `out` is
/// left as it was.
pub fn encode_payload_into(
    out: &mut Vec<u8>,
    line: &LogLine,
    origin: Option<&Origin>,
) -> Result<(), RecordError> {
    let start = out.len();
    let optional = [
        ("process_type", line.process_type.as_deref()),
        ("job", line.job.as_deref()),
        ("host", line.host.as_deref()),
    ];
    let origin_fields = [
        ("seq", origin.map(|o| o.seq)),
        ("spool", origin.and_then(|o| o.spool)),
    ];
    let present = optional.iter().filter(|(_, v)| v.is_some()).count()
        + origin_fields.iter().filter(|(_, v)| v.is_some()).count();
    msgpack::map_len(out, 5 + present as u8);
    msgpack::str(out, "id");
    msgpack::uint(out, line.id);
    msgpack::str(out, "app");
    msgpack::str(out, &line.app);
    for (key, value) in optional {
        if let Some(v) = value {
            msgpack::str(out, key);
            msgpack::str(out, v);
        }
    }
    msgpack::str(out, "stream");
    msgpack::str(
        out,
        match line.stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Unknown => "unknown",
        },
    );
    msgpack::str(out, "timestamp_ns");
    msgpack::sint(out, line.timestamp_ns);
    msgpack::str(out, "message");
    msgpack::str(out, &line.message);
    for (key, value) in origin_fields {
        if let Some(v) = value {
            msgpack::str(out, key);
            msgpack::uint(out, v);
        }
    }
    let len = out.len() - start;
    if len > MAX_PAYLOAD as usize {
        out.truncate(start);
        return Err(RecordError::TooLarge(len));
    }
    Ok(())
}

/// Reads the sender (host) and origin of a payload; `None` for a line without both.
pub fn decode_origin(payload: &[u8]) -> Result<Option<(String, Origin)>, RecordError> {
    let o: StoredOrigin = rmp_serde::from_slice(payload)?;
    Ok(match (o.host, o.seq) {
        (Some(host), Some(seq)) => Some((
            host,
            Origin {
                seq,
                spool: o.spool,
            },
        )),
        _ => None,
    })
}

/// Decodes a payload read by [`read_record`], giving the line the header's `id`.
pub fn decode_payload(id: u64, payload: &[u8]) -> Result<LogLine, RecordError> {
    let mut line: LogLine = rmp_serde::from_slice(payload)?;
    line.id = id;
    Ok(line)
}

/// Fills in the header of a record laid out as `HEADER_LEN` placeholder bytes followed
/// by its payload (`record` is exactly that), for line `id`.
pub fn fill_header(record: &mut [u8], id: u64) {
    let (header, payload) = record.split_at_mut(HEADER_LEN);
    let len = u32::try_from(payload.len()).expect("payload larger than 4 GiB");
    header[0..4].copy_from_slice(&len.to_le_bytes());
    header[4..8].copy_from_slice(&checksum(id, payload).to_le_bytes());
    header[8..16].copy_from_slice(&id.to_le_bytes());
}

/// Appends the framed record (`header + payload`) for `id` to `out`.
pub fn frame(out: &mut Vec<u8>, id: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payload larger than 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(id, payload).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(payload);
}

fn checksum(id: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&id.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Reads the next record from `r` into `payload` (cleared first).
pub fn read_record(r: &mut impl Read, payload: &mut Vec<u8>) -> io::Result<ReadRecord> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Ok(ReadRecord::End);
    }
    if got < HEADER_LEN {
        return Ok(ReadRecord::Torn);
    }
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let id = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    if len > MAX_PAYLOAD {
        return Ok(ReadRecord::Corrupt("record length over limit"));
    }
    // Read what is there rather than allocate what the header claims: a torn or
    // corrupt header must not cost a 32 MiB buffer.
    payload.clear();
    payload.reserve((len as usize).min(1 << 16));
    let got = r.by_ref().take(u64::from(len)).read_to_end(payload)?;
    if got < len as usize {
        return Ok(ReadRecord::Torn);
    }
    if checksum(id, payload) != crc {
        return Ok(ReadRecord::Corrupt("crc mismatch"));
    }
    Ok(ReadRecord::Record {
        id,
        bytes: HEADER_LEN as u64 + u64::from(len),
    })
}

/// Reads until `buf` is full or end of data; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::Stream;

    fn line(msg: &str) -> LogLine {
        LogLine {
            id: 0,
            app: "shop".into(),
            process_type: Some("web".into()),
            job: None,
            host: None,
            stream: Stream::Stdout,
            timestamp_ns: 1_700_000_000_000_000_000,
            message: msg.into(),
        }
    }

    fn framed(id: u64, msg: &str) -> Vec<u8> {
        let mut out = Vec::new();
        frame(&mut out, id, &encode_payload(&line(msg), None).unwrap());
        out
    }

    #[test]
    fn round_trip_sets_header_id() {
        let bytes = framed(42, "hello");
        let mut buf = Vec::new();
        let mut r = &bytes[..];
        let got = read_record(&mut r, &mut buf).unwrap();
        assert_eq!(
            got,
            ReadRecord::Record {
                id: 42,
                bytes: bytes.len() as u64
            }
        );
        let l = decode_payload(42, &buf).unwrap();
        assert_eq!(l.id, 42);
        assert_eq!(l.message, "hello");
        assert_eq!(read_record(&mut r, &mut buf).unwrap(), ReadRecord::End);
    }

    #[test]
    fn every_truncation_is_torn_or_end() {
        let bytes = framed(7, "a line that is long enough");
        let mut buf = Vec::new();
        for cut in 0..bytes.len() {
            let mut r = &bytes[..cut];
            let expected = if cut == 0 {
                ReadRecord::End
            } else {
                ReadRecord::Torn
            };
            assert_eq!(
                read_record(&mut r, &mut buf).unwrap(),
                expected,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn flipped_bits_are_corrupt() {
        let bytes = framed(7, "payload");
        let mut buf = Vec::new();
        for i in 4..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            let mut r = &b[..];
            assert_eq!(
                read_record(&mut r, &mut buf).unwrap(),
                ReadRecord::Corrupt("crc mismatch"),
                "byte {i}"
            );
        }
    }

    #[test]
    fn oversized_lines_are_refused() {
        let mut l = line("");
        l.message = "x".repeat(MAX_PAYLOAD as usize);
        assert!(matches!(
            encode_payload(&l, None),
            Err(RecordError::TooLarge(_))
        ));
    }

    #[test]
    fn origin_is_stored_beside_the_line() {
        let mut l = line("m");
        l.host = Some("h1".into());
        let origin = Origin {
            seq: 9,
            spool: Some(3),
        };
        let p = encode_payload(&l, Some(&origin)).unwrap();
        assert_eq!(
            decode_payload(5, &p).unwrap(),
            LogLine { id: 5, ..l.clone() }
        );
        assert_eq!(decode_origin(&p).unwrap(), Some(("h1".into(), origin)));
        let plain = encode_payload(&l, None).unwrap();
        assert_eq!(decode_origin(&plain).unwrap(), None);
    }

    #[test]
    fn payload_bytes_are_what_rmp_serde_writes() {
        let mut l = line("");
        let lens = [0usize, 1, 31, 32, 255, 256, 65_535, 65_536];
        for (i, len) in lens.into_iter().enumerate() {
            l.message = "m".repeat(len);
            l.stream = [Stream::Stdout, Stream::Stderr, Stream::Unknown][i % 3];
            l.host = (i % 2 == 0).then(|| "h".repeat(len.min(300)).into());
            l.job = (i % 3 == 0).then(|| "j".into());
            for v in [
                0i64,
                1,
                127,
                128,
                255,
                256,
                65_535,
                65_536,
                u32::MAX as i64,
                1 << 32,
                i64::MAX,
                -1,
                -32,
                -33,
                -128,
                -129,
                -32_768,
                -32_769,
                i32::MIN as i64,
                i32::MIN as i64 - 1,
                i64::MIN,
            ] {
                l.timestamp_ns = v;
                l.id = v.unsigned_abs();
                assert_eq!(
                    encode_payload(&l, None).unwrap(),
                    rmp_serde::to_vec_named(&l).unwrap(),
                    "len {len} value {v}"
                );
            }
        }
    }

    #[test]
    fn huge_length_is_corrupt() {
        let mut b = framed(1, "x");
        b[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut buf = Vec::new();
        assert_eq!(
            read_record(&mut &b[..], &mut buf).unwrap(),
            ReadRecord::Corrupt("record length over limit")
        );
    }
}
