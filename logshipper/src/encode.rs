//! Wire encoders for lines leaving this process: RFC 5424 syslog with RFC 6587 octet
//! counting (syslog drains and the host agent's shipper), and Fluent Forward (forward
//! drains).
//!
//! Syslog frame: `LEN SP <PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`, where
//! PRI is facility user with severity info (stdout) or err (stderr), TIMESTAMP is UTC with
//! microseconds, APP is the app (printable ASCII, at most 48), PROCID is `<type>.<job>` (or
//! whichever is known, at most 128), MSGID is `stdout`/`stderr`/`-`, and SD carries the
//! line id as `[paas id="N"]` when it is non-zero so a receiver can drop replays; a
//! sender that numbers lines in a spool adds the spool's incarnation,
//! `[paas id="N" spool="S"]` with S as 16 lowercase hex digits (see [`crate::dedupe`]).
//!
//! Forward frame: Forward mode `[tag, [[EventTime, record], ...], {"chunk": C, "size": N}]`
//! with tag `<app>[.<type>]` and record keys `message`, `stream`, `job`, `host`, `id`; all
//! entries of one frame share a tag. The receiver answers `{"ack": C}`.

use std::fmt::Write as _;

use chrono::{TimeZone, Utc};
use rmpv::Value;

use crate::line::{LogLine, Stream};

/// Syslog severity for a stream: info for stdout and unknown, err for stderr.
fn severity(stream: Stream) -> u8 {
    match stream {
        Stream::Stderr => 3,
        Stream::Stdout | Stream::Unknown => 6,
    }
}

/// Facility `user` (1).
const FACILITY_USER: u8 = 1;

/// Appends an RFC 5424 header field: printable ASCII without spaces, at most `max`
/// characters, `-` when empty.
fn push_field(out: &mut String, value: &str, max: usize) {
    let start = out.len();
    for c in value.chars().take(max) {
        out.push(if c.is_ascii_graphic() { c } else { '_' });
    }
    if out.len() == start {
        out.push('-');
    }
}

/// Appends nanoseconds since the epoch as an RFC 3339 UTC timestamp with microseconds
/// (`-` when out of range). Written field by field: a strftime pattern would be parsed
/// again for every line.
fn push_timestamp(out: &mut String, ns: i64) {
    use chrono::{Datelike, Timelike};
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    match Utc.timestamp_opt(secs, nanos).single() {
        Some(t) => {
            let _ = write!(
                out,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                nanos / 1000,
            );
        }
        None => out.push('-'),
    }
}

/// The syslog PROCID for a line: `<type>.<job>`, or whichever part is known.
pub fn procid(line: &LogLine) -> String {
    match (&line.process_type, &line.job) {
        (Some(t), Some(j)) => format!("{t}.{j}"),
        (Some(t), None) => t.to_string(),
        (None, Some(j)) => j.to_string(),
        (None, None) => String::new(),
    }
}

/// Appends one octet-counted RFC 5424 frame for `line` to `out`; `spool` is the sender's
/// spool incarnation, when the line id is a spool id.
pub fn syslog_frame(out: &mut Vec<u8>, line: &LogLine, spool: Option<u64>) {
    let mut msg = String::with_capacity(96 + line.message.len());
    let pri = FACILITY_USER * 8 + severity(line.stream);
    let _ = write!(msg, "<{pri}>1 ");
    push_timestamp(&mut msg, line.timestamp_ns);
    msg.push(' ');
    push_field(&mut msg, line.host.as_deref().unwrap_or(""), 255);
    msg.push(' ');
    push_field(&mut msg, &line.app, 48);
    msg.push(' ');
    push_field(&mut msg, &procid(line), 128);
    msg.push(' ');
    msg.push_str(match line.stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
        Stream::Unknown => "-",
    });
    match (line.id, spool) {
        (0, _) => msg.push_str(" - "),
        (id, None) => {
            let _ = write!(msg, " [paas id=\"{id}\"] ");
        }
        (id, Some(s)) => {
            let _ = write!(msg, " [paas id=\"{id}\" spool=\"{s:016x}\"] ");
        }
    }
    msg.push_str(&line.message);
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg.as_bytes());
}

/// The Fluent Forward tag of a line: `<app>[.<type>]`.
pub fn forward_tag(line: &LogLine) -> String {
    match &line.process_type {
        Some(t) => format!("{}.{}", line.app, t),
        None => line.app.to_string(),
    }
}

fn event_time(ns: i64) -> Value {
    let secs = ns.div_euclid(1_000_000_000) as u32;
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    let mut b = Vec::with_capacity(8);
    b.extend_from_slice(&secs.to_be_bytes());
    b.extend_from_slice(&nanos.to_be_bytes());
    Value::Ext(0, b)
}

fn record(line: &LogLine) -> Value {
    let mut fields = vec![
        (Value::from("message"), Value::from(line.message.as_str())),
        (
            Value::from("stream"),
            Value::from(match line.stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
                Stream::Unknown => "unknown",
            }),
        ),
        (Value::from("id"), Value::from(line.id)),
    ];
    if let Some(j) = &line.job {
        fields.push((Value::from("job"), Value::from(j.as_str())));
    }
    if let Some(h) = &line.host {
        fields.push((Value::from("host"), Value::from(h.as_str())));
    }
    Value::Map(fields)
}

/// Encodes lines that share one tag as a Forward-mode message asking for ack `chunk`.
pub fn forward_message(tag: &str, lines: &[&LogLine], chunk: &str) -> Vec<u8> {
    let entries = lines
        .iter()
        .map(|l| Value::Array(vec![event_time(l.timestamp_ns), record(l)]))
        .collect();
    let msg = Value::Array(vec![
        Value::from(tag),
        Value::Array(entries),
        Value::Map(vec![
            (Value::from("chunk"), Value::from(chunk)),
            (Value::from("size"), Value::from(lines.len() as u64)),
        ]),
    ]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &msg).expect("writing to a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> LogLine {
        LogLine {
            id: 42,
            app: "shop".into(),
            process_type: Some("web".into()),
            job: Some("abc".into()),
            host: Some("h1".into()),
            stream: Stream::Stderr,
            timestamp_ns: 1_700_000_000_123_456_789,
            message: "boom: ünïcode\nsecond".into(),
        }
    }

    fn check(l: &LogLine, expected: &str) {
        check_spool(l, None, expected);
    }

    fn check_spool(l: &LogLine, spool: Option<u64>, expected: &str) {
        let mut out = Vec::new();
        syslog_frame(&mut out, l, spool);
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn syslog_full_line() {
        let msg = "<11>1 2023-11-14T22:13:20.123456Z h1 shop web.abc stderr [paas id=\"42\"] boom: ünïcode\nsecond";
        check(&line(), &format!("{} {msg}", msg.len()));
    }

    #[test]
    fn syslog_line_with_spool_round_trips_its_origin() {
        let msg = "<11>1 2023-11-14T22:13:20.123456Z h1 shop web.abc stderr [paas id=\"42\" spool=\"00000000000000ff\"] boom: ünïcode\nsecond";
        check_spool(&line(), Some(255), &format!("{} {msg}", msg.len()));
        let parsed = crate::syslog::parse(msg.as_bytes()).unwrap();
        assert_eq!(
            parsed.structured_data.and_then(crate::dedupe::parse_origin),
            Some(crate::dedupe::Origin {
                seq: 42,
                spool: Some(255)
            })
        );
    }

    #[test]
    fn syslog_minimal_line() {
        let l = LogLine {
            id: 0,
            app: "my app".into(),
            process_type: None,
            job: None,
            host: None,
            stream: Stream::Unknown,
            timestamp_ns: 0,
            message: String::new(),
        };
        let msg = "<14>1 1970-01-01T00:00:00.000000Z - my_app - - - ";
        check(&l, &format!("{} {msg}", msg.len()));
    }

    #[test]
    fn forward_message_round_trips_through_msgpack() {
        let l = line();
        let bytes = forward_message(&forward_tag(&l), &[&l], "c1");
        let v = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr[0].as_str(), Some("shop.web"));
        let entry = arr[1].as_array().unwrap()[0].as_array().unwrap();
        let Value::Ext(0, t) = &entry[0] else {
            panic!("not an EventTime")
        };
        assert_eq!(t[..4], 1_700_000_000u32.to_be_bytes());
        assert_eq!(t[4..], 123_456_789u32.to_be_bytes());
        let rec = entry[1].as_map().unwrap();
        let get = |k: &str| {
            rec.iter()
                .find(|(kk, _)| kk.as_str() == Some(k))
                .map(|x| &x.1)
        };
        assert_eq!(
            get("message").unwrap().as_str(),
            Some("boom: ünïcode\nsecond")
        );
        assert_eq!(get("stream").unwrap().as_str(), Some("stderr"));
        assert_eq!(get("id").unwrap().as_u64(), Some(42));
        let opts = arr[2].as_map().unwrap();
        assert_eq!(opts[0].1.as_str(), Some("c1"));
    }
}
