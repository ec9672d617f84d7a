//! How a forward entry (tag, time, record) becomes a [`LogLine`].
//!
//! * The tag is `<app>[.<type>]`: the part before the first dot is the app, the rest (if
//!   any) the process type.
//! * Record fields override the tag and fill the rest: `app`; `type` or `process_type`;
//!   `job`; `host` or `hostname`; `stream` or `source` (`stdout`/`stderr`, as Docker's
//!   fluentd driver writes it).
//! * The text is the first of `message`, `log`, `msg` (one trailing newline removed);
//!   a record with none of them is kept whole as its JSON text, so nothing is dropped.

use rmpv::ValueRef;

use super::message::{bytes_of, DecodeError};
use crate::line::{LogLine, SmolStr, Stream};

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

/// Builds the line for one entry; the record must be a map.
pub fn entry_to_line(
    tag: &TagParts<'_>,
    timestamp_ns: i64,
    record: &ValueRef<'_>,
) -> Result<LogLine, DecodeError> {
    let ValueRef::Map(fields) = record else {
        return Err(DecodeError::Shape("record is not a map"));
    };
    let mut line = LogLine {
        id: 0,
        app: SmolStr::default(),
        process_type: tag.process_type.map(SmolStr::new),
        job: None,
        host: None,
        stream: Stream::Unknown,
        timestamp_ns,
        message: String::new(),
    };
    let mut app = None;
    let mut text: Option<(u8, &ValueRef<'_>)> = None;
    for (key, value) in fields {
        let Some(key) = bytes_of(key) else { continue };
        match key {
            b"app" => app = name_of(value),
            b"type" | b"process_type" => line.process_type = name_of(value),
            b"job" => line.job = name_of(value),
            b"host" | b"hostname" => line.host = name_of(value),
            b"stream" | b"source" => {
                line.stream = match bytes_of(value) {
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
                if text.is_none_or(|(r, _)| rank < r) {
                    text = Some((rank, value));
                }
            }
            _ => {}
        }
    }
    line.app = match app {
        Some(a) if !a.is_empty() => a,
        _ => SmolStr::new(tag.app),
    };
    if line.app.is_empty() {
        return Err(DecodeError::Shape("no app in tag or record"));
    }
    line.message = match text {
        Some((_, ValueRef::String(s))) => match s.as_str() {
            Some(text) => trim_newline(text),
            None => trim_newline(&String::from_utf8_lossy(s.as_bytes())),
        },
        Some((_, ValueRef::Binary(b))) => trim_newline(&String::from_utf8_lossy(b)),
        Some((_, other)) => to_json(other).to_string(),
        None => to_json(record).to_string(),
    };
    Ok(line)
}

fn trim_newline(s: &str) -> String {
    s.strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(s)
        .to_owned()
}

/// A short text field (app, type, job, host) as a [`SmolStr`], without a heap
/// allocation when it fits inline.
fn name_of(v: &ValueRef<'_>) -> Option<SmolStr> {
    match v {
        ValueRef::String(s) => Some(match s.as_str() {
            Some(text) => SmolStr::new(text),
            None => String::from_utf8_lossy(s.as_bytes()).into(),
        }),
        ValueRef::Binary(b) => Some(String::from_utf8_lossy(b).into()),
        _ => None,
    }
}

/// Converts a MessagePack value to JSON for records without a text field.
fn to_json(v: &ValueRef<'_>) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        ValueRef::Nil => J::Null,
        ValueRef::Boolean(b) => J::Bool(*b),
        ValueRef::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(n), _) => J::from(n),
            (_, Some(n)) => J::from(n),
            _ => J::Null,
        },
        ValueRef::F32(f) => J::from(f64::from(*f)),
        ValueRef::F64(f) => J::from(*f),
        ValueRef::String(s) => J::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        ValueRef::Binary(b) => J::String(String::from_utf8_lossy(b).into_owned()),
        ValueRef::Array(items) => J::Array(items.iter().map(to_json).collect()),
        ValueRef::Map(pairs) => J::Object(
            pairs
                .iter()
                .map(|(k, v)| {
                    let key = match bytes_of(k) {
                        Some(b) => String::from_utf8_lossy(b).into_owned(),
                        None => to_json(k).to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        ValueRef::Ext(t, data) => J::Object(
            [
                ("ext_type".to_owned(), J::from(*t)),
                ("data".to_owned(), J::String(hex::encode(data))),
            ]
            .into_iter()
            .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn check(tag: &str, record: Value, expected: Result<LogLine, DecodeError>) {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &record).unwrap();
        let value = rmpv::decode::read_value_ref(&mut buf.as_slice()).unwrap();
        assert_eq!(
            entry_to_line(&TagParts::parse(tag), 7, &value),
            expected,
            "{tag} {record}"
        );
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
                message: r#"{"ok":true,"status":200}"#.into(),
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
}
