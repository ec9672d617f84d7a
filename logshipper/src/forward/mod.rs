//! Fluent Forward v1 input: stream framing ([`frame`]), message decoding in all four
//! modes ([`message`]), entry-to-line mapping ([`mapping`]) and the server's replies
//! (HELO/PONG handshake and chunk acks, [`handshake`]).
//!
//! Connection flow (driven by `crate::ingest`): with a shared key the server sends HELO
//! and accepts nothing but a valid PING, answered with PONG; then each complete
//! MessagePack value is decoded; its entries are accepted as one batch and, when the
//! message carried a `chunk` option, `{"ack": chunk}` is written only after the batch is
//! durable.

pub mod cursor;
pub mod frame;
pub mod handshake;
pub mod mapping;
pub mod message;

pub use message::{decode, parse, DecodeError, Entries, Limits, Message, Parsed, Ping};
