//! RFC 5424 message parsing, the second decoding phase after framing.
//!
//! ```text
//! SYSLOG-MSG = "<" PRIVAL ">" VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP
//!              MSGID SP STRUCTURED-DATA [SP MSG]
//! ```
//!
//! [`SyslogMessage`] borrows every field from the frame (zero copy); header fields are
//! checked to be printable US-ASCII, so they are valid `&str`. A nil field (`-`) is `None`.
//! MSG is kept as raw bytes with a leading UTF-8 BOM removed; turning it into text is the
//! caller's choice.

use thiserror::Error;

/// One parsed RFC 5424 message borrowing from its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogMessage<'a> {
    /// Facility (PRIVAL / 8).
    pub facility: u8,
    /// Severity (PRIVAL % 8).
    pub severity: u8,
    /// TIMESTAMP in nanoseconds since the Unix epoch, `None` when nil.
    pub timestamp_ns: Option<i64>,
    /// HOSTNAME.
    pub hostname: Option<&'a str>,
    /// APP-NAME.
    pub app_name: Option<&'a str>,
    /// PROCID.
    pub proc_id: Option<&'a str>,
    /// MSGID.
    pub msg_id: Option<&'a str>,
    /// STRUCTURED-DATA as written (all SD-ELEMENTs), `None` when nil.
    pub structured_data: Option<&'a str>,
    /// MSG bytes without a leading BOM; empty when absent.
    pub msg: &'a [u8],
}

/// Why a frame is not a valid RFC 5424 message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    /// The frame does not start with `<PRIVAL>` where PRIVAL is 0..=191.
    #[error("bad PRI")]
    BadPri,
    /// VERSION is missing or is not 1 (the only version RFC 5424 defines).
    #[error("bad or unsupported VERSION")]
    BadVersion,
    /// The frame ends before the named header field.
    #[error("missing {0}")]
    Missing(&'static str),
    /// The named header field contains a byte outside printable US-ASCII or is too long.
    #[error("invalid {0}")]
    BadField(&'static str),
    /// TIMESTAMP is neither `-` nor an RFC 3339 date-time.
    #[error("bad TIMESTAMP")]
    BadTimestamp,
    /// STRUCTURED-DATA is neither `-` nor well-formed SD-ELEMENTs.
    #[error("bad STRUCTURED-DATA")]
    BadStructuredData,
}

/// UTF-8 byte order mark that may start MSG.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Parses one RFC 5424 message (the bytes of one frame).
pub fn parse(frame: &[u8]) -> Result<SyslogMessage<'_>, ParseError> {
    let mut rest = frame;
    let prival = parse_pri(&mut rest)?;
    match next_token(&mut rest) {
        Some(b"1") => {}
        _ => return Err(ParseError::BadVersion),
    }
    let timestamp = next_token(&mut rest).ok_or(ParseError::Missing("TIMESTAMP"))?;
    let timestamp_ns = match timestamp {
        b"-" => None,
        t => Some(parse_timestamp(t)?),
    };
    let hostname = header_field(&mut rest, "HOSTNAME", 255)?;
    let app_name = header_field(&mut rest, "APP-NAME", 48)?;
    let proc_id = header_field(&mut rest, "PROCID", 128)?;
    let msg_id = header_field(&mut rest, "MSGID", 32)?;
    let (structured_data, after_sd) = split_structured_data(rest)?;
    let msg = match after_sd {
        [] => after_sd,
        [b' ', msg @ ..] => msg.strip_prefix(BOM).unwrap_or(msg),
        _ => return Err(ParseError::BadStructuredData),
    };
    Ok(SyslogMessage {
        facility: prival / 8,
        severity: prival % 8,
        timestamp_ns,
        hostname,
        app_name,
        proc_id,
        msg_id,
        structured_data,
        msg,
    })
}

fn parse_pri(rest: &mut &[u8]) -> Result<u8, ParseError> {
    let buf = *rest;
    if buf.first() != Some(&b'<') {
        return Err(ParseError::BadPri);
    }
    let close = buf
        .iter()
        .take(5)
        .position(|&b| b == b'>')
        .ok_or(ParseError::BadPri)?;
    let digits = &buf[1..close];
    if digits.is_empty()
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits.len() > 1 && digits[0] == b'0')
    {
        return Err(ParseError::BadPri);
    }
    let value = digits
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    if value > 191 {
        return Err(ParseError::BadPri);
    }
    *rest = &buf[close + 1..];
    Ok(value as u8)
}

/// Takes bytes up to the next SP (consuming it); `None` when nothing is left.
fn next_token<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let buf = *rest;
    if buf.is_empty() {
        return None;
    }
    match memchr::memchr(b' ', buf) {
        Some(i) => {
            *rest = &buf[i + 1..];
            Some(&buf[..i])
        }
        None => {
            *rest = &[];
            Some(buf)
        }
    }
}

fn header_field<'a>(
    rest: &mut &'a [u8],
    name: &'static str,
    max_len: usize,
) -> Result<Option<&'a str>, ParseError> {
    let token = next_token(rest).ok_or(ParseError::Missing(name))?;
    if token.is_empty() || token.len() > max_len || !token.iter().all(|b| (33..=126).contains(b)) {
        return Err(ParseError::BadField(name));
    }
    if token == b"-" {
        return Ok(None);
    }
    // Printable US-ASCII is valid UTF-8.
    std::str::from_utf8(token)
        .map(Some)
        .map_err(|_| ParseError::BadField(name))
}

/// Splits STRUCTURED-DATA off the front of `buf`, returning it and what follows.
fn split_structured_data(buf: &[u8]) -> Result<(Option<&str>, &[u8]), ParseError> {
    match buf.first() {
        None => Err(ParseError::Missing("STRUCTURED-DATA")),
        Some(b'-') => Ok((None, &buf[1..])),
        Some(b'[') => {
            let mut i = 0;
            while buf.get(i) == Some(&b'[') {
                i = sd_element_end(buf, i)?;
            }
            let sd = std::str::from_utf8(&buf[..i]).map_err(|_| ParseError::BadStructuredData)?;
            Ok((Some(sd), &buf[i..]))
        }
        Some(_) => Err(ParseError::BadStructuredData),
    }
}

/// Given `buf[start] == b'['`, returns the offset just past the matching `]`.
fn sd_element_end(buf: &[u8], start: usize) -> Result<usize, ParseError> {
    let mut in_value = false;
    let mut i = start + 1;
    while i < buf.len() {
        match (buf[i], in_value) {
            (b'\\', true) => i += 1,
            (b'"', _) => in_value = !in_value,
            (b']', false) => return Ok(i + 1),
            _ => {}
        }
        i += 1;
    }
    Err(ParseError::BadStructuredData)
}

/// Parses an RFC 3339 TIMESTAMP (`2003-10-11T22:14:15.003Z`, `...+02:00`) to epoch ns.
///
/// The exact form senders use (and RFC 5424 prescribes) goes through [`fast_timestamp`];
/// anything else (lowercase separators, leap seconds, dates outside the i64 nanosecond
/// range) through chrono, so the result is chrono's in every case.
fn parse_timestamp(t: &[u8]) -> Result<i64, ParseError> {
    if let Some(ns) = fast_timestamp(t) {
        return Ok(ns);
    }
    let s = std::str::from_utf8(t).map_err(|_| ParseError::BadTimestamp)?;
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|dt| dt.timestamp_nanos_opt())
        .ok_or(ParseError::BadTimestamp)
}

/// Parses the `n` ASCII digits at `t[at..]`.
fn digits(t: &[u8], at: usize, n: usize) -> Option<i64> {
    t.get(at..at + n)?.iter().try_fold(0i64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
    })
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.F{1,9}](Z|+HH:MM|-HH:MM)` to epoch ns without allocating;
/// `None` for any other form or value (the caller then asks chrono).
fn fast_timestamp(t: &[u8]) -> Option<i64> {
    let sep = |at: usize, c: u8| (t.get(at) == Some(&c)).then_some(());
    let year = digits(t, 0, 4)?;
    sep(4, b'-')?;
    let month = digits(t, 5, 2)?;
    sep(7, b'-')?;
    let day = digits(t, 8, 2)?;
    sep(10, b'T')?;
    let hour = digits(t, 11, 2)?;
    sep(13, b':')?;
    let minute = digits(t, 14, 2)?;
    sep(16, b':')?;
    let second = digits(t, 17, 2)?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut pos = 19;
    let mut nanos = 0i64;
    if t.get(pos) == Some(&b'.') {
        let frac = t[pos + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if !(1..=9).contains(&frac) {
            return None;
        }
        nanos = digits(t, pos + 1, frac)? * 10i64.pow(9 - frac as u32);
        pos += 1 + frac;
    }
    let offset_secs = match t.get(pos..)? {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (digits(t, pos + 1, 2)?, digits(t, pos + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Datelike;

    fn check(input: &str, expected: Result<SyslogMessage<'_>, ParseError>) {
        assert_eq!(parse(input.as_bytes()), expected, "{input:?}");
    }

    #[test]
    fn full_message_with_structured_data() {
        check(
            r#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog web.4f1a ID47 [exampleSDID@32473 iut="3" eventSource="App\"lic]ation"][x@1 a="b"] An application event"#,
            Ok(SyslogMessage {
                facility: 20,
                severity: 5,
                timestamp_ns: Some(1_065_910_455_003_000_000),
                hostname: Some("mymachine.example.com"),
                app_name: Some("evntslog"),
                proc_id: Some("web.4f1a"),
                msg_id: Some("ID47"),
                structured_data: Some(
                    r#"[exampleSDID@32473 iut="3" eventSource="App\"lic]ation"][x@1 a="b"]"#,
                ),
                msg: b"An application event",
            }),
        );
    }

    #[test]
    fn nil_fields_bom_and_offsets() {
        check(
            "<0>1 - - - - - -",
            Ok(SyslogMessage {
                facility: 0,
                severity: 0,
                timestamp_ns: None,
                hostname: None,
                app_name: None,
                proc_id: None,
                msg_id: None,
                structured_data: None,
                msg: b"",
            }),
        );
        let m = parse("<14>1 1970-01-01T01:00:01+01:00 h app 1 stdout - \u{feff}héllo".as_bytes())
            .unwrap();
        assert_eq!(m.timestamp_ns, Some(1_000_000_000));
        assert_eq!(m.msg, "héllo".as_bytes());
        let m = parse(b"<14>1 - h app 1 stdout - ").unwrap();
        assert_eq!(m.msg, b"");
    }

    /// What chrono makes of a TIMESTAMP, the reference for the fast path.
    fn chrono_ns(t: &str) -> Option<i64> {
        chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .and_then(|dt| dt.timestamp_nanos_opt())
    }

    #[test]
    fn fast_timestamps_agree_with_chrono() {
        let table = [
            "2003-10-11T22:14:15.003Z",
            "2003-08-24T05:14:15.000003-07:00",
            "2026-01-01T00:00:00.000000Z",
            "1970-01-01T01:00:01+01:00",
            "2000-02-29T23:59:59.999999999Z",
            "2100-02-29T00:00:00Z",
            "2001-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-00-01T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T23:60:00Z",
            "2016-12-31T23:59:60Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00.1234567890Z",
            "2024-01-01T00:00:00+24:00",
            "2024-01-01T00:00:00+01:60",
            "2024-01-01T00:00:00+0100",
            "2024-01-01t00:00:00z",
            "2024-01-01 00:00:00Z",
            "1600-01-01T00:00:00Z",
            "2300-01-01T00:00:00Z",
            "1969-12-31T23:59:59.5Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00ZZ",
            "24-01-01T00:00:00Z",
        ];
        for t in table {
            assert_eq!(parse_timestamp(t.as_bytes()).ok(), chrono_ns(t), "{t}");
        }
        // Every day of a few years, at varying times and offsets.
        let mut day = chrono::NaiveDate::from_ymd_opt(1999, 1, 1).unwrap();
        let mut i = 0u32;
        while day.year() < 2030 {
            let t = format!(
                "{}T{:02}:{:02}:{:02}.{:06}{}",
                day,
                i % 24,
                (i * 7) % 60,
                (i * 13) % 60,
                i * 37 % 1_000_000,
                ["Z", "+05:30", "-11:45", "+00:00"][i as usize % 4]
            );
            assert_eq!(fast_timestamp(t.as_bytes()), chrono_ns(&t), "{t}");
            day = day.succ_opt().unwrap();
            i += 1;
        }
    }

    #[test]
    fn rejects_malformed_headers() {
        check("14>1 - - - - - -", Err(ParseError::BadPri));
        check("<192>1 - - - - - -", Err(ParseError::BadPri));
        check("<01>1 - - - - - -", Err(ParseError::BadPri));
        check("<>1 - - - - - -", Err(ParseError::BadPri));
        check("<14>2 - - - - - -", Err(ParseError::BadVersion));
        check("<14>", Err(ParseError::BadVersion));
        check("<14>1 ", Err(ParseError::Missing("TIMESTAMP")));
        check("<14>1 yesterday - - - - -", Err(ParseError::BadTimestamp));
        check("<14>1 - host", Err(ParseError::Missing("APP-NAME")));
        check(
            "<14>1 - host app 1 id",
            Err(ParseError::Missing("STRUCTURED-DATA")),
        );
        check(
            "<14>1 - h  app 1 id -",
            Err(ParseError::BadField("APP-NAME")),
        );
        check(
            "<14>1 - h \u{e9}pp 1 id - x",
            Err(ParseError::BadField("APP-NAME")),
        );
        check(
            "<14>1 - h a 1 id [x a=\"]",
            Err(ParseError::BadStructuredData),
        );
        check("<14>1 - h a 1 id [x]y", Err(ParseError::BadStructuredData));
        check("<14>1 - h a 1 id x", Err(ParseError::BadStructuredData));
        check("<14>1 - h a 1 id -x", Err(ParseError::BadStructuredData));
    }
}
