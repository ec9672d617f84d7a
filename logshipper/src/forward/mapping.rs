//! How a forward entry (tag, time, record) becomes a [`LogLine`].
//!
//! * The tag is `<app>[.<type>]`: the part before the first dot is the app, the rest (if
//!   any) the process type.
//! * Record fields override the tag and fill the rest: `app`; `type` or `process_type`;
//!   `job`; `host` or `hostname`; `stream` or `source` (`stdout`/`stderr`, as Docker's
//!   fluentd driver writes it).
//! * The text is the first of `message`, `log`, `msg` (one trailing newline removed);
//!   a record with none of them is kept whole as its JSON text, so nothing is dropped.
//! * Every message is at most the line cap (`max_line`, cut on a character boundary while
//!   it is built, see [`crate::text`]); names at most [`MAX_NAME`] bytes.
//!
//! Records are read in place ([`scan_record`] notes where the fields are; nothing is
//! allocated until the line is built), so a message's decoding cost is linear in its
//! size whatever it nests.

use std::fmt::Write;

use super::cursor::{Cursor, Item};
use super::message::DecodeError;
use crate::line::{LogLine, SmolStr, Stream};
use crate::text::BoundedText;

/// A forward tag split into app and optional process type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagParts<'a> {
    /// Text before the first dot.
    pub app: &'a str,
    /// Text after the first dot, if any.
    pub process_type: Option<&'a str>,
}

impl<'a> TagParts<'a> {
    /// Splits `<app>[.<type>]`.
    pub fn parse(tag: &'a str) -> Self {
        match tag.split_once('.') {
            Some((app, t)) if !t.is_empty() => TagParts {
                app,
                process_type: Some(t),
            },
            Some((app, _)) => TagParts {
                app,
                process_type: None,
            },
            None => TagParts {
                app: tag,
                process_type: None,
            },
        }
    }
}

/// Longest app, process type, job or host name kept; longer ones are cut.
pub const MAX_NAME: usize = 255;

/// Containers nested deeper than this in a rendered record are shown as `"…"`.
const MAX_DEPTH: usize = 32;

/// Where a record's named fields are, found without allocating (see [`scan_record`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record<'a> {
    /// The whole record (a MessagePack map).
    pub bytes: &'a [u8],
    app: Option<&'a [u8]>,
    process_type: Option<&'a [u8]>,
    job: Option<&'a [u8]>,
    host: Option<&'a [u8]>,
    stream: Stream,
    /// Rank (message 0, log 1, msg 2) and encoded value of the text field.
    text: Option<(u8, &'a [u8])>,
}

/// Reads one record (a map) at the cursor: where its named fields are. Checks that the
/// entry can become a line: the record is a map and an app is named by it or the tag.
pub fn scan_record<'a>(
    cur: &mut Cursor<'a>,
    tag: &TagParts<'_>,
) -> Result<Record<'a>, DecodeError> {
    let start = cur.rest();
    let Item::Map(pairs) = cur.item()? else {
        return Err(DecodeError::Shape("record is not a map"));
    };
    let mut rec = Record {
        bytes: &[],
        app: None,
        process_type: None,
        job: None,
        host: None,
        stream: Stream::Unknown,
        text: None,
    };
    for _ in 0..pairs {
        let mut peek = *cur;
        let key = match peek.item()? {
            Item::Str(k) | Item::Bin(k) => {
                *cur = peek;
                k
            }
            _ => {
                cur.skip()?; // a non-string key: it names no field
                cur.skip()?;
                continue;
            }
        };
        match key {
            b"app" => rec.app = name_value(cur)?,
            b"type" | b"process_type" => rec.process_type = name_value(cur)?,
            b"job" => rec.job = name_value(cur)?,
            b"host" | b"hostname" => rec.host = name_value(cur)?,
            b"stream" | b"source" => {
                rec.stream = match name_value(cur)? {
                    Some(b"stdout") => Stream::Stdout,
                    Some(b"stderr") => Stream::Stderr,
                    _ => Stream::Unknown,
                }
            }
            // Lower rank wins: message, then log, then msg.
            b"message" | b"log" | b"msg" => {
                let rank = match key {
                    b"message" => 0,
                    b"log" => 1,
                    _ => 2,
                };
                let value = cur.skip()?;
                if rec.text.is_none_or(|(r, _)| rank < r) {
                    rec.text = Some((rank, value));
                }
            }
            _ => {
                cur.skip()?;
            }
        }
    }
    rec.bytes = &start[..start.len() - cur.rest().len()];
    if rec.app_name(tag).is_empty() {
        return Err(DecodeError::Shape("no app in tag or record"));
    }
    Ok(rec)
}

/// A name field's value: the bytes of a str or bin, `None` for any other value.
fn name_value<'a>(cur: &mut Cursor<'a>) -> Result<Option<&'a [u8]>, DecodeError> {
    let mut peek = *cur;
    match peek.item()? {
        Item::Str(b) | Item::Bin(b) => {
            *cur = peek;
            Ok(Some(b))
        }
        _ => {
            cur.skip()?;
            Ok(None)
        }
    }
}

impl Record<'_> {
    fn app_name<'s>(&'s self, tag: &'s TagParts<'_>) -> &'s [u8] {
        match self.app {
            Some(a) if !a.is_empty() => a,
            _ => tag.app.as_bytes(),
        }
    }
}

/// Builds the line for one scanned entry; the message is at most `max_line` bytes.
/// Returns the line and whether its message was cut.
pub fn entry_to_line(
    tag: &TagParts<'_>,
    timestamp_ns: i64,
    rec: &Record<'_>,
    max_line: usize,
) -> (LogLine, bool) {
    let mut text = BoundedText::new(max_line);
    match rec.text {
        Some((_, value)) => {
            let mut cur = Cursor::new(value);
            match cur.item() {
                Ok(Item::Str(b) | Item::Bin(b)) => text.push_lossy(trim_newline(b)),
                _ => render(&mut Cursor::new(value), &mut text, 0, false),
            }
        }
        None => render(&mut Cursor::new(rec.bytes), &mut text, 0, false),
    }
    let (message, truncated) = text.finish();
    let line = LogLine {
        id: 0,
        app: name(rec.app_name(tag)),
        process_type: rec
            .process_type
            .or(tag.process_type.map(str::as_bytes))
            .map(name),
        job: rec.job.map(name),
        host: rec.host.map(name),
        stream: rec.stream,
        timestamp_ns,
        message,
    };
    (line, truncated)
}

fn trim_newline(b: &[u8]) -> &[u8] {
    match b.strip_suffix(b"\n") {
        Some(t) => t.strip_suffix(b"\r").unwrap_or(t),
        None => b,
    }
}

/// A short text field (app, type, job, host) as a [`SmolStr`] of at most
/// [`MAX_NAME`] bytes, without a heap allocation when it fits inline.
fn name(b: &[u8]) -> SmolStr {
    match std::str::from_utf8(b) {
        Ok(s) if s.len() <= MAX_NAME => SmolStr::new(s),
        _ => {
            let mut t = BoundedText::new(MAX_NAME);
            t.push_lossy(b);
            SmolStr::new(t.finish().0)
        }
    }
}

/// Renders the value at the cursor as JSON into `out`, for records without a text field.
///
/// Linear in the input: strings are escaped once, also inside keys. A JSON key must be a
/// string, so a key that is not a str (a number, an array, a map) is written as a string
/// holding its text with strings unquoted (`{[1,"a"]: 2}` becomes `{"[1,a]":2}`):
/// rendering it as quoted JSON and escaping that again would double the backslashes at
/// every level of nesting. Containers deeper than `MAX_DEPTH` become `"…"`. Stops as
/// soon as `out` is full.
fn render(cur: &mut Cursor<'_>, out: &mut BoundedText, depth: usize, in_key: bool) {
    if out.is_full() {
        return;
    }
    let Ok(item) = cur.item() else {
        return;
    };
    let deep = depth >= MAX_DEPTH;
    match item {
        Item::Nil => out.push_str("null"),
        Item::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        Item::Uint(n) => {
            let _ = write!(out, "{n}");
        }
        Item::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Item::F32(f) => push_float(out, f64::from(f)),
        Item::F64(f) => push_float(out, f),
        Item::Str(b) | Item::Bin(b) if in_key => out.push_json_escaped(b),
        Item::Str(b) | Item::Bin(b) => out.push_json_string(b),
        Item::Array(n) | Item::Map(n) if deep => {
            let values = if matches!(item, Item::Map(_)) {
                2 * n
            } else {
                n
            };
            for _ in 0..values {
                if cur.skip().is_err() {
                    return;
                }
            }
            out.push_str(if in_key { "…" } else { "\"…\"" });
        }
        Item::Array(n) => {
            out.push_str("[");
            for i in 0..n {
                if i > 0 {
                    out.push_str(",");
                }
                render(cur, out, depth + 1, in_key);
                if out.is_full() {
                    return;
                }
            }
            out.push_str("]");
        }
        Item::Map(n) => {
            out.push_str("{");
            for i in 0..n {
                if i > 0 {
                    out.push_str(",");
                }
                let mut peek = *cur;
                match peek.item() {
                    Ok(Item::Str(k) | Item::Bin(k)) if !in_key => {
                        *cur = peek;
                        out.push_json_string(k);
                    }
                    _ if in_key => render(cur, out, depth + 1, true),
                    _ => {
                        out.push_str("\"");
                        render(cur, out, depth + 1, true);
                        out.push_str("\"");
                    }
                }
                out.push_str(":");
                render(cur, out, depth + 1, in_key);
                if out.is_full() {
                    return;
                }
            }
            out.push_str("}");
        }
        Item::Ext(t, data) => {
            let room = out.room() / 2 + 1;
            let hex = hex::encode(&data[..data.len().min(room)]);
            let _ = if in_key {
                write!(out, "ext({t}:{hex})")
            } else {
                write!(out, "{{\"ext_type\":{t},\"data\":\"{hex}\"}}")
            };
        }
    }
}

fn push_float(out: &mut BoundedText, f: f64) {
    match serde_json::Number::from_f64(f) {
        Some(n) => out.push_str(&n.to_string()),
        None => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn check(tag: &str, record: Value, expected: Result<LogLine, DecodeError>) {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &record).unwrap();
        let tag = TagParts::parse(tag);
        let mut cur = Cursor::new(&buf);
        let got = scan_record(&mut cur, &tag).map(|rec| {
            assert_eq!(rec.bytes, &buf[..]);
            entry_to_line(&tag, 7, &rec, 1 << 20).0
        });
        assert!(got.is_err() || cur.is_empty());
        assert_eq!(got, expected, "{record}");
    }

    fn map(fields: &[(&str, Value)]) -> Value {
        Value::Map(
            fields
                .iter()
                .map(|(k, v)| (Value::from(*k), v.clone()))
                .collect(),
        )
    }

    fn base(app: &str) -> LogLine {
        LogLine {
            id: 0,
            app: app.into(),
            process_type: None,
            job: None,
            host: None,
            stream: Stream::Unknown,
            timestamp_ns: 7,
            message: String::new(),
        }
    }

    #[test]
    fn tag_parts() {
        assert_eq!(
            TagParts::parse("shop.web.1"),
            TagParts {
                app: "shop",
                process_type: Some("web.1")
            }
        );
        assert_eq!(TagParts::parse("shop.").process_type, None);
        assert_eq!(TagParts::parse("shop").app, "shop");
    }

    #[test]
    fn fields_override_tag() {
        check(
            "shop.web",
            map(&[
                ("log", Value::from("hello\n")),
                ("message", Value::from("preferred")),
                ("source", Value::from("stdout")),
                ("job", Value::from("j1")),
                ("hostname", Value::from("h1")),
            ]),
            Ok(LogLine {
                process_type: Some("web".into()),
                job: Some("j1".into()),
                host: Some("h1".into()),
                stream: Stream::Stdout,
                message: "preferred".into(),
                ..base("shop")
            }),
        );
        check(
            "ignored",
            map(&[
                ("app", Value::from("blog")),
                ("type", Value::from("worker")),
                ("stream", Value::from("stderr")),
                ("log", Value::from("line\r\n")),
            ]),
            Ok(LogLine {
                process_type: Some("worker".into()),
                stream: Stream::Stderr,
                message: "line".into(),
                ..base("blog")
            }),
        );
    }

    #[test]
    fn records_without_text_are_kept_as_json() {
        check(
            "shop",
            map(&[("status", Value::from(200)), ("ok", Value::from(true))]),
            Ok(LogLine {
                message: r#"{"status":200,"ok":true}"#.into(),
                ..base("shop")
            }),
        );
        check(
            "shop",
            map(&[("message", Value::from(12))]),
            Ok(LogLine {
                message: "12".into(),
                ..base("shop")
            }),
        );
    }

    #[test]
    fn rejects_non_maps_and_missing_app() {
        check(
            "shop",
            Value::from(1),
            Err(DecodeError::Shape("record is not a map")),
        );
        check(
            "",
            map(&[("log", Value::from("x"))]),
            Err(DecodeError::Shape("no app in tag or record")),
        );
    }

    fn render_text(v: &Value, max: usize) -> (String, bool) {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, v).unwrap();
        let mut out = BoundedText::new(max);
        render(&mut Cursor::new(&buf), &mut out, 0, false);
        out.finish()
    }

    #[test]
    fn non_string_keys_are_escaped_once() {
        let key = Value::Array(vec![Value::from(1), Value::from("a\"b")]);
        let inner = Value::Map(vec![(key, Value::from(2))]);
        let outer = Value::Map(vec![(inner.clone(), Value::Nil)]);
        assert_eq!(
            render_text(&inner, 1000),
            (r#"{"[1,a\"b]":2}"#.into(), false)
        );
        assert_eq!(
            render_text(&outer, 1000),
            (r#"{"{[1,a\"b]:2}":null}"#.into(), false)
        );
        let ext = Value::Map(vec![(
            Value::Ext(5, vec![0xab]),
            Value::Ext(-1, vec![1, 2]),
        )]);
        assert_eq!(
            render_text(&ext, 1000),
            (
                r#"{"ext(5:ab)":{"ext_type":-1,"data":"0102"}}"#.into(),
                false
            )
        );
        let floats = Value::Array(vec![
            Value::F64(1e300),
            Value::F64(f64::NAN),
            Value::F32(0.5),
        ]);
        assert_eq!(
            render_text(&floats, 1000),
            ("[1e+300,null,0.5]".into(), false)
        );
    }

    #[test]
    fn nested_map_keys_do_not_amplify() {
        // Maps used as keys of maps, 60 deep: escaping each level's rendering again
        // doubles the backslashes per level (2^60 bytes). Rendered once, it stays small.
        let mut v = Value::Map(vec![(Value::from("\""), Value::from(1))]);
        for _ in 0..60 {
            v = Value::Map(vec![(v, Value::from("\""))]);
        }
        let (text, cut) = render_text(&v, 1 << 20);
        assert!(!cut);
        assert!(text.len() < 1000, "{} bytes", text.len());
        assert!(
            text.contains('…'),
            "deeper than MAX_DEPTH is elided: {text}"
        );
    }

    #[test]
    fn messages_are_cut_at_the_line_cap() {
        let tag = TagParts::parse("shop");
        let long = map(&[("log", Value::Binary(vec![0xff; 1000]))]);
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &long).unwrap();
        let rec = scan_record(&mut Cursor::new(&buf), &tag).unwrap();
        let (line, cut) = entry_to_line(&tag, 1, &rec, 100);
        assert!(cut);
        assert_eq!(line.message, "\u{fffd}".repeat(33));
        let json = map(&[("k", Value::from("\u{1}".repeat(1000)))]);
        let (text, cut) = render_text(&json, 64);
        assert!(
            cut && text.len() <= 64 && text.ends_with("\\u0001"),
            "{text}"
        );
        let name = map(&[
            ("job", Value::from("j".repeat(1000))),
            ("log", Value::from("x")),
        ]);
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &name).unwrap();
        let rec = scan_record(&mut Cursor::new(&buf), &tag).unwrap();
        assert_eq!(
            entry_to_line(&tag, 1, &rec, 100).0.job.unwrap().len(),
            MAX_NAME
        );
    }
}
