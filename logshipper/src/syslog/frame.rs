//! RFC 6587 framing of syslog messages on a TCP stream.
//!
//! Two framings exist and a connection uses one of them throughout, chosen by its first
//! byte ([`Framing::detect`]):
//!
//! * octet counting (RFC 6587 §3.4.1): `MSG-LEN SP SYSLOG-MSG`, where `MSG-LEN` is the
//!   decimal byte count of `SYSLOG-MSG` (no leading zero). Chosen when the first byte is a
//!   digit `1`-`9`.
//! * non-transparent framing (RFC 6587 §3.4.2): each message ends with LF. Chosen when the
//!   first byte is `<` (the start of a PRI). A CR before the LF is dropped.
//!
//! [`check`] is the first of two decoding phases: it only finds where the next message is
//! in the buffer, without parsing it. Not having a whole frame yet is
//! [`Check::Incomplete`], not an error. Errors mean the stream can no longer be framed and
//! the connection must be closed.

use thiserror::Error;

/// Longest `MSG-LEN` prefix accepted (digits), enough for any message size we allow.
const MAX_LEN_DIGITS: usize = 10;

/// How messages are delimited on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `MSG-LEN SP MSG` (RFC 6587 octet counting).
    OctetCounted,
    /// One message per line (RFC 6587 non-transparent framing, LF trailer).
    NewlineDelimited,
}

/// Errors that make a syslog stream unframeable; the connection is closed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The first byte of the stream is neither a digit (octet counting) nor `<` (PRI).
    #[error("unknown framing: stream starts with byte 0x{0:02x}")]
    UnknownFraming(u8),
    /// An octet-counting prefix is not `[1-9][0-9]* SP`.
    #[error("bad frame length prefix")]
    BadLength,
    /// A frame declares, or a line grows to, more than the configured maximum.
    #[error("message of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Declared or buffered size in bytes.
        size: usize,
        /// The configured maximum message size.
        max: usize,
    },
}

/// Result of looking for one frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// A whole frame: the message is `buf[start..end]`, and `consumed` bytes (message plus
    /// framing) can be dropped from the buffer.
    Frame {
        /// Offset of the first message byte.
        start: usize,
        /// Offset one past the last message byte (trailers excluded).
        end: usize,
        /// Bytes of the buffer this frame occupies, framing included.
        consumed: usize,
    },
    /// More bytes are needed before a frame can be found.
    Incomplete,
}

impl Framing {
    /// Chooses the framing of a connection from its first byte.
    pub fn detect(first: u8) -> Result<Framing, FrameError> {
        match first {
            b'1'..=b'9' => Ok(Framing::OctetCounted),
            b'<' => Ok(Framing::NewlineDelimited),
            other => Err(FrameError::UnknownFraming(other)),
        }
    }
}

/// Finds the next frame at the start of `buf` without parsing the message.
///
/// `max` bounds the message size: a larger declared length, or a line that has grown past
/// `max` without a newline, is an error rather than [`Check::Incomplete`], so a client
/// cannot make the server buffer without limit.
pub fn check(buf: &[u8], framing: Framing, max: usize) -> Result<Check, FrameError> {
    match framing {
        Framing::OctetCounted => check_octet_counted(buf, max),
        Framing::NewlineDelimited => Ok(check_newline(buf, max)?),
    }
}

fn check_octet_counted(buf: &[u8], max: usize) -> Result<Check, FrameError> {
    let mut len: usize = 0;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'0'..=b'9' if i < MAX_LEN_DIGITS => {
                if i == 0 && b == b'0' {
                    return Err(FrameError::BadLength);
                }
                len = len * 10 + usize::from(b - b'0');
            }
            b' ' if i > 0 => {
                if len > max {
                    return Err(FrameError::TooLarge { size: len, max });
                }
                let start = i + 1;
                let end = start + len;
                return Ok(if buf.len() >= end {
                    Check::Frame {
                        start,
                        end,
                        consumed: end,
                    }
                } else {
                    Check::Incomplete
                });
            }
            _ => return Err(FrameError::BadLength),
        }
    }
    Ok(Check::Incomplete)
}

fn check_newline(buf: &[u8], max: usize) -> Result<Check, FrameError> {
    match memchr::memchr(b'\n', buf) {
        Some(nl) => {
            let end = if nl > 0 && buf[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            if end > max {
                return Err(FrameError::TooLarge { size: end, max });
            }
            Ok(Check::Frame {
                start: 0,
                end,
                consumed: nl + 1,
            })
        }
        None if buf.len() > max => Err(FrameError::TooLarge {
            size: buf.len(),
            max,
        }),
        None => Ok(Check::Incomplete),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_oc(input: &str, expected: Result<Check, FrameError>) {
        assert_eq!(
            check(input.as_bytes(), Framing::OctetCounted, 100),
            expected,
            "{input:?}"
        );
    }

    #[test]
    fn detects_framing_from_first_byte() {
        assert_eq!(Framing::detect(b'7'), Ok(Framing::OctetCounted));
        assert_eq!(Framing::detect(b'<'), Ok(Framing::NewlineDelimited));
        assert_eq!(Framing::detect(b'0'), Err(FrameError::UnknownFraming(b'0')));
        assert_eq!(Framing::detect(0x82), Err(FrameError::UnknownFraming(0x82)));
    }

    #[test]
    fn octet_counted() {
        check_oc(
            "5 hello6 world",
            Ok(Check::Frame {
                start: 2,
                end: 7,
                consumed: 7,
            }),
        );
        check_oc("5 hel", Ok(Check::Incomplete));
        check_oc("12", Ok(Check::Incomplete));
        check_oc("", Ok(Check::Incomplete));
        check_oc("05 hello", Err(FrameError::BadLength));
        check_oc(" 5 hello", Err(FrameError::BadLength));
        check_oc("5x hello", Err(FrameError::BadLength));
        check_oc("12345678901 x", Err(FrameError::BadLength));
        check_oc(
            "101 x",
            Err(FrameError::TooLarge {
                size: 101,
                max: 100,
            }),
        );
        check_oc("100 ", Ok(Check::Incomplete));
    }

    #[test]
    fn newline_delimited() {
        let nl = |s: &str| check(s.as_bytes(), Framing::NewlineDelimited, 8);
        assert_eq!(
            nl("<1>a\r\n<2>b"),
            Ok(Check::Frame {
                start: 0,
                end: 4,
                consumed: 6
            })
        );
        assert_eq!(
            nl("<1>a\n"),
            Ok(Check::Frame {
                start: 0,
                end: 4,
                consumed: 5
            })
        );
        assert_eq!(nl("<1>abcd"), Ok(Check::Incomplete));
        assert_eq!(
            nl("<1>abcdef"),
            Err(FrameError::TooLarge { size: 9, max: 8 })
        );
        assert_eq!(
            nl("<1>abcdefgh\n"),
            Err(FrameError::TooLarge { size: 11, max: 8 })
        );
    }
}
