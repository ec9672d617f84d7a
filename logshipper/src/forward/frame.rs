//! Finding where one MessagePack value ends in a byte stream, without decoding it.
//!
//! Fluent Forward has no framing of its own: a connection carries a sequence of
//! MessagePack values. [`check`] is the first decoding phase: it walks markers and
//! lengths (no allocation, no recursion, so no stack to exhaust) and reports either the
//! length of the first complete value or [`Check::Incomplete`], which is not an error.
//! A value that is, or declares itself, larger than the maximum message size is an error
//! as soon as that is known, so a client cannot make the server buffer without bound.

use thiserror::Error;

/// Why the stream is not a sequence of acceptable MessagePack values; the connection is
/// closed.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum FrameError {
    /// Byte 0xc1, which MessagePack never uses, appeared as a marker.
    #[error("invalid MessagePack marker 0x{0:02x}")]
    InvalidMarker(u8),
    /// The value is (or declares itself) larger than the maximum message size.
    #[error("message larger than the maximum of {max} bytes")]
    TooLarge {
        /// The configured maximum message size.
        max: usize,
    },
}

/// Result of looking for one MessagePack value at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// The first value is complete and is `buf[..len]`.
    Complete(usize),
    /// More bytes are needed.
    Incomplete,
}

/// Measures the first MessagePack value in `buf`, bounded by `max` bytes.
pub fn check(buf: &[u8], max: usize) -> Result<Check, FrameError> {
    let too_large = FrameError::TooLarge { max };
    let limit = buf.len().min(max);
    let mut pos = 0usize;
    // Values still to skip; each takes at least one byte, so it never exceeds `max`.
    let mut pending = 1usize;
    while pending > 0 {
        let Some(&marker) = buf[..limit].get(pos) else {
            return if buf.len() > max {
                Err(too_large)
            } else {
                Ok(Check::Incomplete)
            };
        };
        pos += 1;
        pending -= 1;
        let (header, body, children) = match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, Body::Fixed(0), 0),
            0x80..=0x8f => (0, Body::Fixed(0), 2 * usize::from(marker & 0x0f)),
            0x90..=0x9f => (0, Body::Fixed(0), usize::from(marker & 0x0f)),
            0xa0..=0xbf => (0, Body::Fixed(usize::from(marker & 0x1f)), 0),
            0xc1 => return Err(FrameError::InvalidMarker(marker)),
            0xc4 | 0xd9 => (1, Body::Len, 0),
            0xc5 | 0xda => (2, Body::Len, 0),
            0xc6 | 0xdb => (4, Body::Len, 0),
            // ext 8/16/32: length, then a type byte, then the data.
            0xc7 => (1, Body::ExtLen, 0),
            0xc8 => (2, Body::ExtLen, 0),
            0xc9 => (4, Body::ExtLen, 0),
            0xca => (0, Body::Fixed(4), 0),
            0xcb => (0, Body::Fixed(8), 0),
            0xcc | 0xd0 => (0, Body::Fixed(1), 0),
            0xcd | 0xd1 => (0, Body::Fixed(2), 0),
            0xce | 0xd2 => (0, Body::Fixed(4), 0),
            0xcf | 0xd3 => (0, Body::Fixed(8), 0),
            0xd4 => (0, Body::Fixed(2), 0),
            0xd5 => (0, Body::Fixed(3), 0),
            0xd6 => (0, Body::Fixed(5), 0),
            0xd7 => (0, Body::Fixed(9), 0),
            0xd8 => (0, Body::Fixed(17), 0),
            0xdc => (2, Body::Count(1), 0),
            0xdd => (4, Body::Count(1), 0),
            0xde => (2, Body::Count(2), 0),
            0xdf => (4, Body::Count(2), 0),
        };
        let n = if header > 0 {
            let Some(bytes) = buf.get(pos..pos + header) else {
                return Ok(Check::Incomplete);
            };
            pos += header;
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        } else {
            0
        };
        let (skip, more_children) = match body {
            Body::Fixed(len) => (len, children),
            Body::Len => (n, 0),
            Body::ExtLen => (n.checked_add(1).ok_or(too_large)?, 0),
            Body::Count(per) => (0, n.checked_mul(per).ok_or(too_large)?),
        };
        pos = pos.checked_add(skip).ok_or(too_large)?;
        pending = pending.checked_add(more_children).ok_or(too_large)?;
        if pos > max || pending > max - pos.min(max) {
            return Err(too_large);
        }
    }
    if pos > buf.len() {
        Ok(Check::Incomplete)
    } else {
        Ok(Check::Complete(pos))
    }
}

/// What follows a marker and its length header.
#[derive(Clone, Copy)]
enum Body {
    /// A fixed number of bytes.
    Fixed(usize),
    /// As many bytes as the header says (str, bin).
    Len,
    /// A type byte plus as many bytes as the header says (ext).
    ExtLen,
    /// `per` child values for each unit the header says (array 1, map 2).
    Count(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_all_prefixes(value: &rmpv::Value) {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, value).unwrap();
        for cut in 0..buf.len() {
            assert_eq!(
                check(&buf[..cut], 1 << 20),
                Ok(Check::Incomplete),
                "{value}"
            );
        }
        buf.extend_from_slice(b"\x93trailing");
        assert_eq!(
            check(&buf, 1 << 20),
            Ok(Check::Complete(buf.len() - 9)),
            "{value}"
        );
    }

    #[test]
    fn measures_every_kind_of_value() {
        use rmpv::Value;
        let big_str = "x".repeat(70_000);
        let values = [
            Value::Nil,
            Value::from(true),
            Value::from(5),
            Value::from(-3),
            Value::from(300),
            Value::from(-300),
            Value::from(70_000),
            Value::from(u64::MAX),
            Value::from(i64::MIN),
            Value::F32(1.5),
            Value::F64(2.5),
            Value::from("short"),
            Value::from("y".repeat(40)),
            Value::from(big_str.as_str()),
            Value::Binary(vec![1; 3]),
            Value::Binary(vec![1; 300]),
            Value::Ext(0, vec![0; 8]),
            Value::Ext(1, vec![0; 1]),
            Value::Ext(2, vec![0; 3]),
            Value::Ext(3, vec![0; 300]),
            Value::Array((0..20).map(Value::from).collect()),
            Value::Map(
                (0..20)
                    .map(|i| (Value::from(i), Value::Array(vec![Value::Nil])))
                    .collect(),
            ),
            Value::Array(vec![
                Value::from("tag"),
                Value::Array(vec![Value::Array(vec![
                    Value::Ext(0, vec![0; 8]),
                    Value::Map(vec![(Value::from("log"), Value::from("hi"))]),
                ])]),
            ]),
        ];
        for v in &values {
            check_all_prefixes(v);
        }
    }

    #[test]
    fn rejects_invalid_and_oversized() {
        assert_eq!(check(&[0xc1], 10), Err(FrameError::InvalidMarker(0xc1)));
        // str32 declaring 4 GiB.
        assert_eq!(
            check(&[0xdb, 0xff, 0xff, 0xff, 0xff], 1000),
            Err(FrameError::TooLarge { max: 1000 })
        );
        // array32 declaring 4 billion elements.
        assert_eq!(
            check(&[0xdd, 0xff, 0xff, 0xff, 0xff], 1000),
            Err(FrameError::TooLarge { max: 1000 })
        );
        // A long run of nested arrays with no end, beyond the maximum.
        assert_eq!(
            check(&[0x91; 2000], 1000),
            Err(FrameError::TooLarge { max: 1000 })
        );
        assert_eq!(check(&[0x91; 500], 1000), Ok(Check::Incomplete));
    }
}
