//! Decoding one Fluent Forward v1 message (the second phase, after [`super::frame`]).
//!
//! A message is a MessagePack array; its shape selects the mode:
//!
//! ```text
//! Message:                 [tag, time, record, option?]
//! Forward:                 [tag, [[time, record], ...], option?]
//! PackedForward:           [tag, bin|str of concatenated [time, record], option?]
//! CompressedPackedForward: PackedForward with option.compressed == "gzip"
//! ```
//!
//! `time` is an integer (seconds), a float (seconds) or EventTime: ext type 0 with 8
//! bytes, big-endian `u32` seconds then `u32` nanoseconds. A top-level `nil` is a
//! heartbeat; `["PING", ...]` is the client's half of the shared-key handshake.
//!
//! Entries become [`LogLine`]s through [`super::mapping`]. A message is decoded whole or
//! rejected whole: an error leaves `out` as it was.

use std::io::Read;

use rmpv::ValueRef;
use thiserror::Error;

use super::mapping::{entry_to_line, TagParts};
use crate::line::LogLine;

/// Why a complete MessagePack value is not an acceptable forward message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not valid MessagePack (or nest deeper than rmpv allows).
    #[error("invalid MessagePack: {0}")]
    Msgpack(String),
    /// The value is valid MessagePack but not one of the forward shapes.
    #[error("not a forward message: {0}")]
    Shape(&'static str),
    /// An entry's time is not an integer, a float or an 8-byte EventTime.
    #[error("bad event time")]
    Time,
    /// option.compressed names an algorithm other than gzip.
    #[error("unsupported compression {0:?}")]
    Compression(String),
    /// A gzip body is corrupt.
    #[error("bad gzip body: {0}")]
    Gzip(String),
    /// A gzip body inflates beyond the configured limit.
    #[error("gzip body inflates beyond {0} bytes")]
    Inflated(usize),
}

/// The client's PING (second step of the shared-key handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    /// The client's self-declared hostname.
    pub hostname: Vec<u8>,
    /// Random salt chosen by the client.
    pub salt: Vec<u8>,
    /// `hex(sha512(salt + hostname + nonce + shared_key))` as the client computed it.
    pub digest: Vec<u8>,
}

/// What one decoded message asks of the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// Event entries were appended to `out`; ack `chunk` once they are durable.
    Events {
        /// The `chunk` option, when the client wants an ack.
        chunk: Option<String>,
    },
    /// A keep-alive with no data.
    Heartbeat,
    /// A handshake PING.
    Ping(Ping),
}

/// Decodes one complete message, appending its entries to `out`.
///
/// `max_inflated` bounds the size of a decompressed CompressedPackedForward body.
pub fn decode(
    frame: &[u8],
    max_inflated: usize,
    out: &mut Vec<LogLine>,
) -> Result<Message, DecodeError> {
    let before = out.len();
    let result = decode_inner(frame, max_inflated, out);
    if result.is_err() {
        out.truncate(before);
    }
    result
}

fn decode_inner(
    frame: &[u8],
    max_inflated: usize,
    out: &mut Vec<LogLine>,
) -> Result<Message, DecodeError> {
    let value = read_one(frame)?;
    let items = match value {
        ValueRef::Nil => return Ok(Message::Heartbeat),
        ValueRef::Array(items) => items,
        _ => return Err(DecodeError::Shape("top level is not an array")),
    };
    let mut items = items.into_iter();
    let head = items.next().ok_or(DecodeError::Shape("empty array"))?;
    let tag = bytes_of(&head).ok_or(DecodeError::Shape("tag is not a string"))?;
    let second = items.next().ok_or(DecodeError::Shape("missing entries"))?;
    if tag == b"PING" {
        if let Some(ping) = as_ping(&second, items.as_slice()) {
            return Ok(Message::Ping(ping));
        }
    }
    let tag = std::str::from_utf8(tag).map_err(|_| DecodeError::Shape("tag is not UTF-8"))?;
    let tag = TagParts::parse(tag);
    match second {
        ValueRef::Array(entries) => {
            let option = items.next();
            for entry in &entries {
                let ValueRef::Array(pair) = entry else {
                    return Err(DecodeError::Shape("entry is not an array"));
                };
                let [time, record] = pair.as_slice() else {
                    return Err(DecodeError::Shape("entry is not [time, record]"));
                };
                out.push(entry_to_line(&tag, event_time(time)?, record)?);
            }
            Ok(Message::Events {
                chunk: chunk_of(option.as_ref()),
            })
        }
        ValueRef::Binary(packed) => packed_entries(&tag, packed, items.next(), max_inflated, out),
        ValueRef::String(packed) => {
            packed_entries(&tag, packed.as_bytes(), items.next(), max_inflated, out)
        }
        time => {
            let record = items.next().ok_or(DecodeError::Shape("missing record"))?;
            let option = items.next();
            out.push(entry_to_line(&tag, event_time(&time)?, &record)?);
            Ok(Message::Events {
                chunk: chunk_of(option.as_ref()),
            })
        }
    }
}

fn packed_entries(
    tag: &TagParts<'_>,
    packed: &[u8],
    option: Option<ValueRef<'_>>,
    max_inflated: usize,
    out: &mut Vec<LogLine>,
) -> Result<Message, DecodeError> {
    let compressed = option.as_ref().and_then(|o| map_get(o, "compressed"));
    let inflated;
    let mut body = match compressed {
        // Fluentd writes "text" for an uncompressed body.
        None => packed,
        Some(c) if bytes_of(c) == Some(b"text") => packed,
        Some(c) if bytes_of(c) == Some(b"gzip") => {
            inflated = gunzip(packed, max_inflated)?;
            inflated.as_slice()
        }
        Some(c) => {
            let name = bytes_of(c).map(String::from_utf8_lossy).unwrap_or_default();
            return Err(DecodeError::Compression(name.into_owned()));
        }
    };
    while !body.is_empty() {
        let entry = rmpv::decode::read_value_ref(&mut body)
            .map_err(|e| DecodeError::Msgpack(e.to_string()))?;
        let ValueRef::Array(pair) = entry else {
            return Err(DecodeError::Shape("packed entry is not an array"));
        };
        let [time, record] = pair.as_slice() else {
            return Err(DecodeError::Shape("packed entry is not [time, record]"));
        };
        out.push(entry_to_line(tag, event_time(time)?, record)?);
    }
    Ok(Message::Events {
        chunk: chunk_of(option.as_ref()),
    })
}

fn gunzip(data: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(max));
    flate2::read::MultiGzDecoder::new(data)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Gzip(e.to_string()))?;
    if out.len() > max {
        return Err(DecodeError::Inflated(max));
    }
    Ok(out)
}

fn read_one(frame: &[u8]) -> Result<ValueRef<'_>, DecodeError> {
    let mut rd = frame;
    let value =
        rmpv::decode::read_value_ref(&mut rd).map_err(|e| DecodeError::Msgpack(e.to_string()))?;
    if !rd.is_empty() {
        return Err(DecodeError::Shape("trailing bytes after the message"));
    }
    Ok(value)
}

/// Reads an entry time as nanoseconds since the Unix epoch.
///
/// Fluent Bit (2.1+) may send `[time, metadata]` in the time position; the metadata is
/// ignored.
pub fn event_time(v: &ValueRef<'_>) -> Result<i64, DecodeError> {
    match v {
        ValueRef::Array(parts) => match parts.as_slice() {
            [time @ (ValueRef::Integer(_)
            | ValueRef::F64(_)
            | ValueRef::F32(_)
            | ValueRef::Ext(..)), ValueRef::Map(_)] => event_time(time),
            _ => Err(DecodeError::Time),
        },
        ValueRef::Integer(i) => i
            .as_i64()
            .and_then(|s| s.checked_mul(1_000_000_000))
            .ok_or(DecodeError::Time),
        ValueRef::F64(f) => float_time(*f),
        ValueRef::F32(f) => float_time(f64::from(*f)),
        ValueRef::Ext(0, data) if data.len() == 8 => {
            let secs = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            let nanos = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
            Ok(i64::from(secs) * 1_000_000_000 + i64::from(nanos))
        }
        _ => Err(DecodeError::Time),
    }
}

fn float_time(secs: f64) -> Result<i64, DecodeError> {
    let ns = secs * 1e9;
    if ns.is_finite() && ns.abs() < 9.2e18 {
        Ok(ns as i64)
    } else {
        Err(DecodeError::Time)
    }
}

/// The raw bytes of a str or bin value.
pub fn bytes_of<'v>(v: &'v ValueRef<'_>) -> Option<&'v [u8]> {
    match v {
        ValueRef::String(s) => Some(s.as_bytes()),
        ValueRef::Binary(b) => Some(b),
        _ => None,
    }
}

/// Looks up a string key in a map value.
pub fn map_get<'v, 'a>(map: &'v ValueRef<'a>, key: &str) -> Option<&'v ValueRef<'a>> {
    let ValueRef::Map(pairs) = map else {
        return None;
    };
    pairs
        .iter()
        .find(|(k, _)| bytes_of(k) == Some(key.as_bytes()))
        .map(|(_, v)| v)
}

fn chunk_of(option: Option<&ValueRef<'_>>) -> Option<String> {
    let chunk = map_get(option?, "chunk")?;
    bytes_of(chunk).map(|b| String::from_utf8_lossy(b).into_owned())
}

fn as_ping(second: &ValueRef<'_>, rest: &[ValueRef<'_>]) -> Option<Ping> {
    let [salt, digest, ..] = rest else {
        return None;
    };
    Some(Ping {
        hostname: bytes_of(second)?.to_vec(),
        salt: bytes_of(salt)?.to_vec(),
        digest: bytes_of(digest)?.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::Stream;
    use rmpv::Value;

    fn event_time_value(secs: u32, nanos: u32) -> Value {
        let mut data = secs.to_be_bytes().to_vec();
        data.extend_from_slice(&nanos.to_be_bytes());
        Value::Ext(0, data)
    }

    fn record(msg: &str) -> Value {
        Value::Map(vec![
            (Value::from("log"), Value::from(msg)),
            (Value::from("stream"), Value::from("stderr")),
        ])
    }

    fn encode(v: &Value) -> Vec<u8> {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, v).unwrap();
        buf
    }

    fn option(chunk: &str) -> Value {
        Value::Map(vec![(Value::from("chunk"), Value::from(chunk))])
    }

    fn decode_ok(v: &Value) -> (Vec<LogLine>, Option<String>) {
        let bytes = encode(v);
        let mut out = Vec::new();
        match decode(&bytes, 1 << 20, &mut out).expect("decodes") {
            Message::Events { chunk } => (out, chunk),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn line(msg: &str, ts: i64) -> LogLine {
        LogLine {
            id: 0,
            app: "shop".into(),
            process_type: Some("web".into()),
            job: None,
            host: None,
            stream: Stream::Stderr,
            timestamp_ns: ts,
            message: msg.into(),
        }
    }

    fn packed(entries: &[(Value, Value)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, r) in entries {
            rmpv::encode::write_value(&mut body, &Value::Array(vec![t.clone(), r.clone()]))
                .unwrap();
        }
        body
    }

    #[test]
    fn message_mode_with_integer_and_event_time() {
        let (lines, chunk) = decode_ok(&Value::Array(vec![
            Value::from("shop.web"),
            Value::from(10),
            record("a"),
        ]));
        assert_eq!((lines, chunk), (vec![line("a", 10_000_000_000)], None));
        let (lines, chunk) = decode_ok(&Value::Array(vec![
            Value::from("shop.web"),
            event_time_value(1, 5),
            record("b"),
            option("c1"),
        ]));
        assert_eq!(
            (lines, chunk),
            (vec![line("b", 1_000_000_005)], Some("c1".into()))
        );
    }

    #[test]
    fn time_with_metadata_and_text_compression() {
        let timed = Value::Array(vec![event_time_value(9, 1), Value::Map(vec![])]);
        let body = packed(&[(timed, record("meta"))]);
        let opts = Value::Map(vec![(Value::from("compressed"), Value::from("text"))]);
        let (lines, _) = decode_ok(&Value::Array(vec![
            Value::from("shop.web"),
            Value::Binary(body),
            opts,
        ]));
        assert_eq!(lines, vec![line("meta", 9_000_000_001)]);
        let bad_time = Value::Array(vec![Value::Array(vec![Value::from(1)]), Value::Map(vec![])]);
        let body = packed(&[(bad_time, record("x"))]);
        let bytes = encode(&Value::Array(vec![Value::from("t"), Value::Binary(body)]));
        let mut out = Vec::new();
        assert_eq!(decode(&bytes, 1 << 20, &mut out), Err(DecodeError::Time));
    }

    #[test]
    fn ping_with_a_binary_salt_in_a_str_as_fluent_bit_sends_it() {
        // ["PING", "fluent-bit", <16 raw bytes as str>, <128 hex chars>, "", ""]
        let mut frame = vec![0x96, 0xa4];
        frame.extend_from_slice(b"PING");
        frame.push(0xaa);
        frame.extend_from_slice(b"fluent-bit");
        frame.push(0xb0);
        frame.extend_from_slice(&[0xff; 16]);
        frame.extend_from_slice(&[0xd9, 128]);
        frame.extend_from_slice(&[b'a'; 128]);
        frame.extend_from_slice(&[0xa0, 0xa0]);
        let mut out = Vec::new();
        assert_eq!(
            decode(&frame, 1024, &mut out),
            Ok(Message::Ping(Ping {
                hostname: b"fluent-bit".to_vec(),
                salt: vec![0xff; 16],
                digest: vec![b'a'; 128],
            }))
        );
    }

    #[test]
    fn forward_mode() {
        let (lines, chunk) = decode_ok(&Value::Array(vec![
            Value::from("shop.web"),
            Value::Array(vec![
                Value::Array(vec![Value::from(1), record("a")]),
                Value::Array(vec![event_time_value(2, 0), record("b")]),
            ]),
            option("c2"),
        ]));
        assert_eq!(
            (lines, chunk),
            (
                vec![line("a", 1_000_000_000), line("b", 2_000_000_000)],
                Some("c2".into())
            )
        );
    }

    #[test]
    fn packed_forward_as_bin_and_str() {
        let body = packed(&[
            (event_time_value(3, 1), record("x")),
            (Value::from(4), record("y")),
        ]);
        let expected = vec![line("x", 3_000_000_001), line("y", 4_000_000_000)];
        let (lines, _) = decode_ok(&Value::Array(vec![
            Value::from("shop.web"),
            Value::Binary(body.clone()),
        ]));
        assert_eq!(lines, expected);
        // Some clients send the packed entries as a str; the bytes are not UTF-8 text.
        let mut frame = vec![0x92, 0xa8];
        frame.extend_from_slice(b"shop.web");
        frame.push(0xdb);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        let mut out = Vec::new();
        assert_eq!(
            decode(&frame, 1 << 20, &mut out),
            Ok(Message::Events { chunk: None })
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn compressed_packed_forward() {
        use std::io::Write;
        let body = packed(&[(Value::from(5), record("z")), (Value::from(6), record("w"))]);
        // Two gzip members back to back, as Fluent Bit may send.
        let mut gz = Vec::new();
        for half in [&body[..body.len() / 2], &body[body.len() / 2..]] {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(half).unwrap();
            gz.extend(enc.finish().unwrap());
        }
        let opts = Value::Map(vec![
            (Value::from("chunk"), Value::from("c3")),
            (Value::from("compressed"), Value::from("gzip")),
        ]);
        let msg = Value::Array(vec![
            Value::from("shop.web"),
            Value::Binary(gz.clone()),
            opts,
        ]);
        let (lines, chunk) = decode_ok(&msg);
        assert_eq!(
            (lines, chunk),
            (
                vec![line("z", 5_000_000_000), line("w", 6_000_000_000)],
                Some("c3".into())
            )
        );
        let mut out = Vec::new();
        assert_eq!(
            decode(&encode(&msg), 10, &mut out),
            Err(DecodeError::Inflated(10))
        );
        let bad = Value::Array(vec![
            Value::from("shop.web"),
            Value::Binary(gz),
            Value::Map(vec![(Value::from("compressed"), Value::from("zstd"))]),
        ]);
        assert_eq!(
            decode(&encode(&bad), 1 << 20, &mut out),
            Err(DecodeError::Compression("zstd".into()))
        );
    }

    #[test]
    fn heartbeat_ping_and_errors_leave_out_untouched() {
        let mut out = vec![line("keep", 1)];
        assert_eq!(decode(&[0xc0], 10, &mut out), Ok(Message::Heartbeat));
        let ping = encode(&Value::Array(vec![
            Value::from("PING"),
            Value::from("client"),
            Value::Binary(vec![1, 2]),
            Value::from("abcd"),
            Value::from(""),
            Value::from(""),
        ]));
        assert_eq!(
            decode(&ping, 10, &mut out),
            Ok(Message::Ping(Ping {
                hostname: b"client".to_vec(),
                salt: vec![1, 2],
                digest: b"abcd".to_vec(),
            }))
        );
        let cases: Vec<(Value, DecodeError)> = vec![
            (
                Value::from(1),
                DecodeError::Shape("top level is not an array"),
            ),
            (Value::Array(vec![]), DecodeError::Shape("empty array")),
            (
                Value::Array(vec![Value::from(1), Value::from(1)]),
                DecodeError::Shape("tag is not a string"),
            ),
            (
                Value::Array(vec![Value::from("t"), Value::from(1)]),
                DecodeError::Shape("missing record"),
            ),
            (
                Value::Array(vec![Value::from("t"), Value::Nil, record("x")]),
                DecodeError::Time,
            ),
            (
                Value::Array(vec![
                    Value::from("t"),
                    Value::Ext(0, vec![0; 4]),
                    record("x"),
                ]),
                DecodeError::Time,
            ),
            (
                Value::Array(vec![
                    Value::from("t"),
                    Value::Array(vec![
                        Value::Array(vec![Value::from(1), record("ok")]),
                        Value::Array(vec![Value::from(1)]),
                    ]),
                ]),
                DecodeError::Shape("entry is not [time, record]"),
            ),
        ];
        for (value, expected) in cases {
            let result = decode(&encode(&value), 10, &mut out);
            assert_eq!(result.map(|_| ()).unwrap_err(), expected, "{value}");
            assert_eq!(out, vec![line("keep", 1)], "{value}");
        }
        let truncated_packed =
            Value::Array(vec![Value::from("t"), Value::Binary(vec![0x92, 0x01])]);
        assert!(matches!(
            decode(&encode(&truncated_packed), 10, &mut out),
            Err(DecodeError::Msgpack(_))
        ));
        assert!(matches!(
            decode(&[0x92, 0xa1, b't'], 10, &mut out),
            Err(DecodeError::Msgpack(_))
        ));
        assert!(matches!(
            decode(&[0xc0, 0xc0], 10, &mut out),
            Err(DecodeError::Shape(_))
        ));
    }
}
