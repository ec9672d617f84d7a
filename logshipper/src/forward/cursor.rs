//! Reading MessagePack one item at a time, without building a tree.
//!
//! A forward message can hold millions of tiny values; decoding it into a value tree
//! (an `rmpv::ValueRef` per value) costs about fifty times its size in memory. The
//! [`Cursor`] instead yields one [`Item`] per call: scalars with their value, strings and
//! binaries as slices of the input, containers as their element count (the elements
//! follow). [`Cursor::skip`] steps over a whole value of any depth without recursion
//! (it reuses the frame check of [`super::frame`]). Nothing here allocates.

use rmp::decode::{read_marker, RmpRead};
use rmp::Marker;

use super::frame::{self, Check};
use super::message::DecodeError;

/// One MessagePack item: a scalar, a byte string, or the header of a container.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Item<'a> {
    /// `nil`.
    Nil,
    /// `true` / `false`.
    Bool(bool),
    /// A non-negative integer.
    Uint(u64),
    /// A negative integer.
    Int(i64),
    /// A 32-bit float.
    F32(f32),
    /// A 64-bit float.
    F64(f64),
    /// A str value's bytes (not checked for UTF-8).
    Str(&'a [u8]),
    /// A bin value's bytes.
    Bin(&'a [u8]),
    /// An array header; this many values follow.
    Array(usize),
    /// A map header; this many key/value pairs follow.
    Map(usize),
    /// An ext value: its type and data.
    Ext(i8, &'a [u8]),
}

impl<'a> Item<'a> {
    /// The bytes of a str or bin item.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Item::Str(b) | Item::Bin(b) => Some(b),
            _ => None,
        }
    }
}

/// A position in a MessagePack byte string.
#[derive(Debug, Clone, Copy)]
pub struct Cursor<'a> {
    rest: &'a [u8],
}

fn truncated() -> DecodeError {
    DecodeError::Msgpack("unexpected end of data".into())
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Cursor { rest: bytes }
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(truncated());
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn ext(&mut self, len: usize) -> Result<Item<'a>, DecodeError> {
        let ty = self.rest.read_data_i8().map_err(|_| truncated())?;
        Ok(Item::Ext(ty, self.take(len)?))
    }

    /// Reads the next item; for a container, only its header.
    pub fn item(&mut self) -> Result<Item<'a>, DecodeError> {
        let rd = &mut self.rest;
        let marker = read_marker(rd).map_err(|_| truncated())?;
        let t = |_| truncated();
        let len = match marker {
            Marker::Null => return Ok(Item::Nil),
            Marker::True => return Ok(Item::Bool(true)),
            Marker::False => return Ok(Item::Bool(false)),
            Marker::FixPos(v) => return Ok(Item::Uint(u64::from(v))),
            Marker::FixNeg(v) => return Ok(Item::Int(i64::from(v))),
            Marker::U8 => return Ok(Item::Uint(u64::from(rd.read_data_u8().map_err(t)?))),
            Marker::U16 => return Ok(Item::Uint(u64::from(rd.read_data_u16().map_err(t)?))),
            Marker::U32 => return Ok(Item::Uint(u64::from(rd.read_data_u32().map_err(t)?))),
            Marker::U64 => return Ok(Item::Uint(rd.read_data_u64().map_err(t)?)),
            Marker::I8 => return Ok(Item::Int(i64::from(rd.read_data_i8().map_err(t)?))),
            Marker::I16 => return Ok(Item::Int(i64::from(rd.read_data_i16().map_err(t)?))),
            Marker::I32 => return Ok(Item::Int(i64::from(rd.read_data_i32().map_err(t)?))),
            Marker::I64 => return Ok(Item::Int(rd.read_data_i64().map_err(t)?)),
            Marker::F32 => return Ok(Item::F32(rd.read_data_f32().map_err(t)?)),
            Marker::F64 => return Ok(Item::F64(rd.read_data_f64().map_err(t)?)),
            Marker::FixStr(n) => Len::Str(usize::from(n)),
            Marker::Str8 => Len::Str(usize::from(rd.read_data_u8().map_err(t)?)),
            Marker::Str16 => Len::Str(usize::from(rd.read_data_u16().map_err(t)?)),
            Marker::Str32 => Len::Str(rd.read_data_u32().map_err(t)? as usize),
            Marker::Bin8 => Len::Bin(usize::from(rd.read_data_u8().map_err(t)?)),
            Marker::Bin16 => Len::Bin(usize::from(rd.read_data_u16().map_err(t)?)),
            Marker::Bin32 => Len::Bin(rd.read_data_u32().map_err(t)? as usize),
            Marker::FixArray(n) => return Ok(Item::Array(usize::from(n))),
            Marker::Array16 => return Ok(Item::Array(usize::from(rd.read_data_u16().map_err(t)?))),
            Marker::Array32 => return Ok(Item::Array(rd.read_data_u32().map_err(t)? as usize)),
            Marker::FixMap(n) => return Ok(Item::Map(usize::from(n))),
            Marker::Map16 => return Ok(Item::Map(usize::from(rd.read_data_u16().map_err(t)?))),
            Marker::Map32 => return Ok(Item::Map(rd.read_data_u32().map_err(t)? as usize)),
            Marker::FixExt1 => Len::Ext(1),
            Marker::FixExt2 => Len::Ext(2),
            Marker::FixExt4 => Len::Ext(4),
            Marker::FixExt8 => Len::Ext(8),
            Marker::FixExt16 => Len::Ext(16),
            Marker::Ext8 => Len::Ext(usize::from(rd.read_data_u8().map_err(t)?)),
            Marker::Ext16 => Len::Ext(usize::from(rd.read_data_u16().map_err(t)?)),
            Marker::Ext32 => Len::Ext(rd.read_data_u32().map_err(t)? as usize),
            Marker::Reserved => {
                return Err(DecodeError::Msgpack("invalid marker 0xc1".into()));
            }
        };
        match len {
            Len::Str(n) => Ok(Item::Str(self.take(n)?)),
            Len::Bin(n) => Ok(Item::Bin(self.take(n)?)),
            Len::Ext(n) => self.ext(n),
        }
    }

    /// Steps over one whole value (of any depth) and returns its bytes.
    pub fn skip(&mut self) -> Result<&'a [u8], DecodeError> {
        match frame::check(self.rest, self.rest.len()) {
            Ok(Check::Complete(len)) => self.take(len),
            Ok(Check::Incomplete) | Err(frame::FrameError::TooLarge { .. }) => Err(truncated()),
            Err(e) => Err(DecodeError::Msgpack(e.to_string())),
        }
    }
}

/// What follows a str, bin or ext header.
enum Len {
    Str(usize),
    Bin(usize),
    Ext(usize),
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn encode(v: &Value) -> Vec<u8> {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, v).unwrap();
        buf
    }

    #[test]
    fn reads_items_and_skips_values() {
        let bytes = encode(&Value::Array(vec![
            Value::Nil,
            Value::from(true),
            Value::from(300),
            Value::from(-70_000),
            Value::from(1.5),
            Value::from("hi"),
            Value::Binary(vec![1, 2]),
            Value::Map(vec![(Value::from("k"), Value::Array(vec![Value::from(1)]))]),
            Value::Ext(0, vec![9; 8]),
            Value::from(u64::MAX),
        ]));
        let mut c = Cursor::new(&bytes);
        assert_eq!(c.item(), Ok(Item::Array(10)));
        assert_eq!(c.item(), Ok(Item::Nil));
        assert_eq!(c.item(), Ok(Item::Bool(true)));
        assert_eq!(c.item(), Ok(Item::Uint(300)));
        assert_eq!(c.item(), Ok(Item::Int(-70_000)));
        assert_eq!(c.item(), Ok(Item::F64(1.5)));
        assert_eq!(c.item(), Ok(Item::Str(b"hi")));
        assert_eq!(c.item(), Ok(Item::Bin(&[1, 2])));
        let map = c.skip().unwrap();
        assert_eq!(
            map,
            &encode(&Value::Map(vec![(
                Value::from("k"),
                Value::Array(vec![Value::from(1)])
            )]))[..]
        );
        assert_eq!(c.item(), Ok(Item::Ext(0, &[9; 8])));
        assert_eq!(c.item(), Ok(Item::Uint(u64::MAX)));
        assert!(c.is_empty());
        assert!(c.item().is_err());
    }

    #[test]
    fn truncated_and_invalid_input_are_errors() {
        for bad in [
            &[0xa5, b'a'][..],
            &[0xcd, 1],
            &[0xc1],
            &[0x92, 0x01],
            &[0xd7, 0],
        ] {
            let mut c = Cursor::new(bad);
            let whole = (|| {
                c.skip()?;
                Ok::<_, DecodeError>(())
            })();
            let mut c2 = Cursor::new(bad);
            let item = (|| {
                let first = c2.item()?;
                if let Item::Array(_) = first {
                    c2.item()?;
                    c2.item()?;
                }
                Ok::<_, DecodeError>(())
            })();
            assert!(whole.is_err() || item.is_err(), "{bad:?}");
        }
    }
}
