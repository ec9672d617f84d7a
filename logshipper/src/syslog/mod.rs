//! Syslog input: RFC 6587 framing ([`frame`]), RFC 5424 parsing ([`message`]) and the
//! mapping of a message to a [`LogLine`] ([`to_line`]).
//!
//! Mapping (documented contract with senders such as the host agent):
//!
//! | RFC 5424 field | [`LogLine`] field                                             |
//! |----------------|---------------------------------------------------------------|
//! | APP-NAME       | `app` (required: a message without one is rejected)          |
//! | PROCID         | `<type>.<job>` → `process_type`, `job`; without a dot, `job` |
//! | MSGID          | `stdout` / `stderr` → `stream`, anything else `Unknown`      |
//! | HOSTNAME       | `host`                                                        |
//! | TIMESTAMP      | `timestamp_ns`; nil → the time the line was received         |
//! | MSG            | `message` (invalid UTF-8 replaced, trailing CR/LF removed, cut at |
//! |                | the line cap, which is the input's message size limit)       |

pub mod frame;
pub mod message;

use thiserror::Error;

use crate::line::{LogLine, SmolStr, Stream};
use crate::text::BoundedText;
pub use frame::{Check, FrameError, Framing};
pub use message::{parse, ParseError, SyslogMessage};

/// Why a well-formed syslog message cannot become a [`LogLine`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MapError {
    /// APP-NAME is nil, so the line belongs to no app.
    #[error("message has no APP-NAME")]
    NoApp,
}

/// Maps a parsed message to a line; `received_ns` stands in for a nil TIMESTAMP, and
/// the message is at most `max_line` bytes (invalid UTF-8 replaced while it is built).
///
/// `prev` is the line decoded before it on the same connection, if any: a sender's lines
/// mostly share app, host, type and job, and taking those from `prev` when equal is
/// cheaper than building them again.
pub fn to_line(
    msg: &SyslogMessage<'_>,
    received_ns: i64,
    prev: Option<&LogLine>,
    max_line: usize,
) -> Result<LogLine, MapError> {
    let app = msg.app_name.ok_or(MapError::NoApp)?;
    let (process_type, job) = match msg.proc_id {
        Some(p) => match p.split_once('.') {
            Some((t, j)) => (
                Some(name(t, prev.and_then(|l| l.process_type.as_ref()))),
                Some(name(j, prev.and_then(|l| l.job.as_ref()))),
            ),
            None => (None, Some(name(p, prev.and_then(|l| l.job.as_ref())))),
        },
        None => (None, None),
    };
    let stream = match msg.msg_id {
        Some("stdout") => Stream::Stdout,
        Some("stderr") => Stream::Stderr,
        _ => Stream::Unknown,
    };
    let mut text = msg.msg;
    while let [rest @ .., b'\n' | b'\r'] = text {
        text = rest;
    }
    let message = match std::str::from_utf8(text) {
        Ok(s) if s.len() <= max_line => s.to_owned(),
        _ => {
            let mut bounded = BoundedText::new(max_line);
            bounded.push_lossy(text);
            bounded.finish().0
        }
    };
    Ok(LogLine {
        id: 0,
        app: name(app, prev.map(|l| &l.app)),
        process_type,
        job,
        host: msg
            .hostname
            .map(|h| name(h, prev.and_then(|l| l.host.as_ref()))),
        stream,
        timestamp_ns: msg.timestamp_ns.unwrap_or(received_ns),
        message,
    })
}

/// `text` as a [`SmolStr`], cloned from `prev` when that holds the same text.
fn name(text: &str, prev: Option<&SmolStr>) -> SmolStr {
    match prev {
        Some(p) if p.as_str() == text => p.clone(),
        _ => SmolStr::new(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &[u8], expected: Result<LogLine, MapError>) {
        let msg = parse(input).expect("valid syslog");
        assert_eq!(to_line(&msg, 42, None, 1000), expected, "{input:?}");
        // Names taken over from a previous line are only those that are equal.
        let other = parse(b"<14>1 - other shop web.zz stdout - x").unwrap();
        let prev = to_line(&other, 1, None, 1000).unwrap();
        assert_eq!(to_line(&msg, 42, Some(&prev), 1000), expected, "{input:?}");
    }

    #[test]
    fn maps_fields() {
        check(
            b"<14>1 1970-01-01T00:00:01Z host1 shop web.a1b2 stderr - boom\r\n",
            Ok(LogLine {
                id: 0,
                app: "shop".into(),
                process_type: Some("web".into()),
                job: Some("a1b2".into()),
                host: Some("host1".into()),
                stream: Stream::Stderr,
                timestamp_ns: 1_000_000_000,
                message: "boom".into(),
            }),
        );
        check(
            b"<14>1 - - shop 4711 - - \xff",
            Ok(LogLine {
                id: 0,
                app: "shop".into(),
                process_type: None,
                job: Some("4711".into()),
                host: None,
                stream: Stream::Unknown,
                timestamp_ns: 42,
                message: "\u{fffd}".into(),
            }),
        );
        check(b"<14>1 - - - - - - hi", Err(MapError::NoApp));
    }
}
