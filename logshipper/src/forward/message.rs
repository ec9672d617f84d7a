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
//! Two passes, neither of which builds a value tree: [`parse`] checks the whole message
//! (shape, every time and record) in place; [`Entries::lines`] then builds the lines one
//! at a time through [`super::mapping`]. A message is accepted whole or rejected whole,
//! and decoding costs time linear in its size and memory of one line at a time.

use std::borrow::Cow;
use std::io::Read;

use thiserror::Error;

use super::cursor::{Cursor, Item};
use super::mapping::{entry_to_line, scan_record, Record, TagParts};
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

/// The limits decoding works within.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest line message; longer ones are cut while they are built.
    pub max_line: usize,
    /// Largest decompressed body of a CompressedPackedForward message.
    pub max_inflated: usize,
}

/// A checked message: what it asks of the connection, and its entries, which become
/// lines one at a time ([`Entries::lines`]), so a message of many small entries never
/// exists as one large batch of lines.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// Heartbeat, PING, or events with their `chunk` option.
    pub message: Message,
    /// The event entries (none unless `message` is [`Message::Events`]).
    pub entries: Entries<'a>,
}

/// The checked entries of one message.
#[derive(Debug)]
pub struct Entries<'a> {
    tag: TagParts<'a>,
    body: Body<'a>,
    count: usize,
}

#[derive(Debug)]
enum Body<'a> {
    /// Message mode: one entry.
    Single { time_ns: i64, record: Record<'a> },
    /// Forward and PackedForward: `[time, record]` arrays back to back.
    Stream(Cow<'a, [u8]>),
}

impl<'a> Entries<'a> {
    fn none() -> Self {
        Entries {
            tag: TagParts::parse(""),
            body: Body::Stream(Cow::Borrowed(&[])),
            count: 0,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The entries as lines, each message at most `max_line` bytes.
    pub fn lines(&self, max_line: usize) -> Lines<'_> {
        let (single, bytes): (_, &[u8]) = match &self.body {
            Body::Single { time_ns, record } => (Some((*time_ns, *record)), &[]),
            Body::Stream(b) => (None, b),
        };
        Lines {
            tag: self.tag,
            single,
            cur: Cursor::new(bytes),
            remaining: self.count,
            max_line,
            truncated: 0,
        }
    }
}

/// Iterator over the lines of checked [`Entries`].
#[derive(Debug)]
pub struct Lines<'e> {
    tag: TagParts<'e>,
    single: Option<(i64, Record<'e>)>,
    cur: Cursor<'e>,
    remaining: usize,
    max_line: usize,
    truncated: u64,
}

impl Lines<'_> {
    /// How many of the lines so far had their message cut at the line cap.
    pub fn truncated(&self) -> u64 {
        self.truncated
    }
}

impl Iterator for Lines<'_> {
    type Item = LogLine;

    fn next(&mut self) -> Option<LogLine> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let (time_ns, record) = match self.single.take() {
            Some(single) => single,
            // Checked by `parse`, so this does not fail.
            None => match entry(&mut self.cur, &self.tag) {
                Ok(e) => e,
                Err(_) => {
                    self.remaining = 0;
                    return None;
                }
            },
        };
        let (line, cut) = entry_to_line(&self.tag, time_ns, &record, self.max_line);
        self.truncated += u64::from(cut);
        Some(line)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

/// Checks one complete message (a frame from [`super::frame::check`]) without building
/// any line: its shape, every entry's time and record. An error rejects the whole
/// message, so no entry of it is ever accepted.
pub fn parse(frame: &[u8], max_inflated: usize) -> Result<Parsed<'_>, DecodeError> {
    let mut cur = Cursor::new(frame);
    let parsed = parse_value(&mut cur, max_inflated)?;
    if !cur.is_empty() {
        return Err(DecodeError::Shape("trailing bytes after the message"));
    }
    Ok(parsed)
}

fn parse_value<'a>(cur: &mut Cursor<'a>, max_inflated: usize) -> Result<Parsed<'a>, DecodeError> {
    let items = match cur.item()? {
        Item::Nil => {
            return Ok(Parsed {
                message: Message::Heartbeat,
                entries: Entries::none(),
            })
        }
        Item::Array(n) => n,
        _ => return Err(DecodeError::Shape("top level is not an array")),
    };
    if items == 0 {
        return Err(DecodeError::Shape("empty array"));
    }
    let tag = cur
        .item()?
        .bytes()
        .ok_or(DecodeError::Shape("tag is not a string"))?;
    if items < 2 {
        return Err(DecodeError::Shape("missing entries"));
    }
    if tag == b"PING" {
        let mut peek = *cur;
        if let Some(ping) = as_ping(&mut peek, items - 1)? {
            *cur = peek;
            return Ok(Parsed {
                message: Message::Ping(ping),
                entries: Entries::none(),
            });
        }
    }
    let tag = std::str::from_utf8(tag).map_err(|_| DecodeError::Shape("tag is not UTF-8"))?;
    let tag = TagParts::parse(tag);
    let mut rest = items - 2;
    let (body, count, option) = match cur.item()? {
        Item::Array(n) => {
            let start = cur.rest();
            for _ in 0..n {
                entry(cur, &tag)?;
            }
            let body = &start[..start.len() - cur.rest().len()];
            (
                Body::Stream(Cow::Borrowed(body)),
                n,
                take_option(cur, &mut rest)?,
            )
        }
        Item::Bin(packed) | Item::Str(packed) => {
            let option = take_option(cur, &mut rest)?;
            let body = match option.compressed {
                // Fluentd writes "text" for an uncompressed body.
                None => Cow::Borrowed(packed),
                Some(c) if c == b"text" => Cow::Borrowed(packed),
                Some(c) if c == b"gzip" => Cow::Owned(gunzip(packed, max_inflated)?),
                Some(c) => {
                    return Err(DecodeError::Compression(
                        String::from_utf8_lossy(c).into_owned(),
                    ))
                }
            };
            let mut entries = Cursor::new(&body);
            let mut n = 0;
            while !entries.is_empty() {
                entry(&mut entries, &tag).map_err(packed_error)?;
                n += 1;
            }
            (Body::Stream(body), n, option)
        }
        time => {
            let time_ns = event_time(time, cur)?;
            if rest == 0 {
                return Err(DecodeError::Shape("missing record"));
            }
            rest -= 1;
            let record = scan_record(cur, &tag)?;
            (
                Body::Single { time_ns, record },
                1,
                take_option(cur, &mut rest)?,
            )
        }
    };
    for _ in 0..rest {
        cur.skip()?;
    }
    Ok(Parsed {
        message: Message::Events {
            chunk: option.chunk,
        },
        entries: Entries { tag, body, count },
    })
}

/// Inside a packed body, a malformed entry is a shape error of the message.
fn packed_error(e: DecodeError) -> DecodeError {
    match e {
        DecodeError::Shape("entry is not an array") => {
            DecodeError::Shape("packed entry is not an array")
        }
        DecodeError::Shape("entry is not [time, record]") => {
            DecodeError::Shape("packed entry is not [time, record]")
        }
        e => e,
    }
}

/// Reads one `[time, record]` entry.
fn entry<'a>(cur: &mut Cursor<'a>, tag: &TagParts<'_>) -> Result<(i64, Record<'a>), DecodeError> {
    match cur.item()? {
        Item::Array(2) => {}
        Item::Array(_) => return Err(DecodeError::Shape("entry is not [time, record]")),
        _ => return Err(DecodeError::Shape("entry is not an array")),
    }
    let time = cur.item()?;
    let time_ns = event_time(time, cur)?;
    Ok((time_ns, scan_record(cur, tag)?))
}

/// The option map's fields that matter here.
#[derive(Default)]
struct Options<'a> {
    chunk: Option<String>,
    compressed: Option<&'a [u8]>,
}

/// Reads the option map if one is left (`rest` counts the message's unread items).
fn take_option<'a>(cur: &mut Cursor<'a>, rest: &mut usize) -> Result<Options<'a>, DecodeError> {
    let mut options = Options::default();
    if *rest == 0 {
        return Ok(options);
    }
    *rest -= 1;
    let mut peek = *cur;
    let Item::Map(pairs) = peek.item()? else {
        cur.skip()?;
        return Ok(options);
    };
    *cur = peek;
    for _ in 0..pairs {
        let mut peek = *cur;
        let key = match peek.item()? {
            Item::Str(k) | Item::Bin(k) => {
                *cur = peek;
                k
            }
            _ => {
                cur.skip()?;
                cur.skip()?;
                continue;
            }
        };
        let mut peek = *cur;
        match (key, peek.item()?) {
            (b"chunk", Item::Str(v) | Item::Bin(v)) => {
                *cur = peek;
                options.chunk = Some(String::from_utf8_lossy(v).into_owned());
            }
            (b"compressed", Item::Str(v) | Item::Bin(v)) => {
                *cur = peek;
                options.compressed = Some(v);
            }
            _ => {
                cur.skip()?;
            }
        }
    }
    Ok(options)
}

/// Decodes one complete message, appending its entries to `out` (each message at most
/// `limits.max_line` bytes). An error leaves `out` as it was.
pub fn decode(
    frame: &[u8],
    limits: &Limits,
    out: &mut Vec<LogLine>,
) -> Result<Message, DecodeError> {
    let parsed = parse(frame, limits.max_inflated)?;
    out.extend(parsed.entries.lines(limits.max_line));
    Ok(parsed.message)
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

/// Reads an entry time, whose first item is `first`, as nanoseconds since the epoch.
///
/// Fluent Bit (2.1+) may send `[time, metadata]` in the time position; the metadata is
/// skipped.
pub fn event_time(first: Item<'_>, cur: &mut Cursor<'_>) -> Result<i64, DecodeError> {
    match first {
        Item::Array(2) => {
            let time = cur.item()?;
            if matches!(time, Item::Array(_) | Item::Map(_)) {
                return Err(DecodeError::Time);
            }
            let mut peek = *cur;
            if !matches!(peek.item()?, Item::Map(_)) {
                return Err(DecodeError::Time);
            }
            cur.skip()?;
            event_time(time, cur)
        }
        Item::Uint(s) => i64::try_from(s)
            .ok()
            .and_then(|s| s.checked_mul(1_000_000_000))
            .ok_or(DecodeError::Time),
        Item::Int(s) => s.checked_mul(1_000_000_000).ok_or(DecodeError::Time),
        Item::F64(f) => float_time(f),
        Item::F32(f) => float_time(f64::from(f)),
        Item::Ext(0, data) if data.len() == 8 => {
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

/// A PING is `["PING", hostname, salt, digest, ...]`; `items` counts what follows the tag.
fn as_ping(cur: &mut Cursor<'_>, items: usize) -> Result<Option<Ping>, DecodeError> {
    if items < 3 {
        return Ok(None);
    }
    let mut field = || cur.item().map(|i| i.bytes().map(<[u8]>::to_vec));
    let (Some(hostname), Some(salt), Some(digest)) = (field()?, field()?, field()?) else {
        return Ok(None);
    };
    for _ in 3..items {
        cur.skip()?;
    }
    Ok(Some(Ping {
        hostname,
        salt,
        digest,
    }))
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

    fn lim(max_inflated: usize) -> Limits {
        Limits {
            max_line: 1 << 20,
            max_inflated,
        }
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
        match decode(&bytes, &lim(1 << 20), &mut out).expect("decodes") {
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
        assert_eq!(
            decode(&bytes, &lim(1 << 20), &mut out),
            Err(DecodeError::Time)
        );
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
            decode(&frame, &lim(1024), &mut out),
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
            decode(&frame, &lim(1 << 20), &mut out),
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
            decode(&encode(&msg), &lim(10), &mut out),
            Err(DecodeError::Inflated(10))
        );
        let bad = Value::Array(vec![
            Value::from("shop.web"),
            Value::Binary(gz),
            Value::Map(vec![(Value::from("compressed"), Value::from("zstd"))]),
        ]);
        assert_eq!(
            decode(&encode(&bad), &lim(1 << 20), &mut out),
            Err(DecodeError::Compression("zstd".into()))
        );
    }

    #[test]
    fn heartbeat_ping_and_errors_leave_out_untouched() {
        let mut out = vec![line("keep", 1)];
        assert_eq!(decode(&[0xc0], &lim(10), &mut out), Ok(Message::Heartbeat));
        let ping = encode(&Value::Array(vec![
            Value::from("PING"),
            Value::from("client"),
            Value::Binary(vec![1, 2]),
            Value::from("abcd"),
            Value::from(""),
            Value::from(""),
        ]));
        assert_eq!(
            decode(&ping, &lim(10), &mut out),
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
            let result = decode(&encode(&value), &lim(10), &mut out);
            assert_eq!(result.map(|_| ()).unwrap_err(), expected, "{value}");
            assert_eq!(out, vec![line("keep", 1)], "{value}");
        }
        let truncated_packed =
            Value::Array(vec![Value::from("t"), Value::Binary(vec![0x92, 0x01])]);
        assert!(matches!(
            decode(&encode(&truncated_packed), &lim(10), &mut out),
            Err(DecodeError::Msgpack(_))
        ));
        assert!(matches!(
            decode(&[0x92, 0xa1, b't'], &lim(10), &mut out),
            Err(DecodeError::Msgpack(_))
        ));
        assert!(matches!(
            decode(&[0xc0, 0xc0], &lim(10), &mut out),
            Err(DecodeError::Shape(_))
        ));
    }
}
