//! Fluent Forward sink: Forward-mode messages with `chunk` options, each acknowledged.
//!
//! A batch is split by tag (`<app>[.<type>]`); each part is sent as one message with a
//! chunk id `<drain>-<first id>-<last id>` and the sink waits for `{"ack": chunk}` before
//! sending the next. A missing or wrong ack fails the batch, which is sent again on a
//! new connection: delivery is at-least-once, and the `id` in each record lets the
//! receiver drop replays.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::config::ForwardConfig;
use super::retry::RetryReason;
use super::sink::SendOutcome;
use crate::encode::{forward_message, forward_tag};
use crate::line::LogLine;

/// How long to wait for an ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends batches to one Fluent Forward receiver.
pub struct ForwardSink {
    addr: String,
    drain_id: String,
    conn: Option<TcpStream>,
}

/// What an ack frame said.
#[derive(Debug, PartialEq, Eq)]
pub enum Ack {
    /// A complete `{"ack": chunk}` map; the value is the chunk id.
    Chunk(String),
    /// More bytes are needed.
    Incomplete,
    /// The bytes are not an ack map.
    Invalid(String),
}

/// Decodes an ack from the start of `buf`.
pub fn decode_ack(buf: &[u8]) -> Ack {
    let mut cur = buf;
    match rmpv::decode::read_value(&mut cur) {
        Ok(v) => {
            let chunk = v.as_map().and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.as_str() == Some("ack"))
                    .and_then(|(_, v)| v.as_str().map(str::to_owned))
            });
            match chunk {
                Some(c) => Ack::Chunk(c),
                None => Ack::Invalid(format!("not an ack: {v}")),
            }
        }
        Err(
            rmpv::decode::Error::InvalidMarkerRead(e) | rmpv::decode::Error::InvalidDataRead(e),
        ) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ack::Incomplete,
        Err(e) => Ack::Invalid(e.to_string()),
    }
}

impl ForwardSink {
    /// Builds the sink; it connects on first send.
    pub fn new(config: &ForwardConfig, drain_id: &str) -> ForwardSink {
        ForwardSink {
            addr: if config.host.contains(':') {
                format!("[{}]:{}", config.host, config.port)
            } else {
                format!("{}:{}", config.host, config.port)
            },
            drain_id: drain_id.to_string(),
            conn: None,
        }
    }

    async fn exchange(conn: &mut TcpStream, msg: &[u8], chunk: &str) -> Result<(), RetryReason> {
        let unreachable = |e: std::io::Error| RetryReason::Unreachable(e.to_string());
        conn.write_all(msg).await.map_err(unreachable)?;
        let mut buf = Vec::with_capacity(64);
        let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
        loop {
            match decode_ack(&buf) {
                Ack::Chunk(c) if c == chunk => return Ok(()),
                Ack::Chunk(c) => {
                    return Err(RetryReason::BadResponse(format!(
                        "ack for chunk {c}, expected {chunk}"
                    )))
                }
                Ack::Invalid(e) => return Err(RetryReason::BadResponse(e)),
                Ack::Incomplete => {}
            }
            let mut tmp = [0u8; 256];
            let n = tokio::time::timeout_at(deadline, conn.read(&mut tmp))
                .await
                .map_err(|_| RetryReason::Unreachable("no ack within 30s".into()))?
                .map_err(unreachable)?;
            if n == 0 {
                return Err(RetryReason::Unreachable(
                    "connection closed before ack".into(),
                ));
            }
            buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Sends the batch, one acknowledged message per tag.
    pub async fn send(&mut self, lines: &[LogLine]) -> Result<SendOutcome, RetryReason> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&self.addr))
                .await
                .map_err(|_| RetryReason::Unreachable(format!("{}: connect timeout", self.addr)))?
                .map_err(|e| RetryReason::Unreachable(format!("{}: {e}", self.addr)))?,
        };
        let mut by_tag: BTreeMap<String, Vec<&LogLine>> = BTreeMap::new();
        for line in lines {
            by_tag.entry(forward_tag(line)).or_default().push(line);
        }
        for (tag, group) in by_tag {
            let chunk = format!(
                "{}-{}-{}",
                self.drain_id,
                group[0].id,
                group[group.len() - 1].id
            );
            Self::exchange(&mut conn, &forward_message(&tag, &group, &chunk), &chunk).await?;
        }
        self.conn = Some(conn);
        Ok(SendOutcome::all_delivered(lines.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack_bytes(chunk: &str) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(
            &mut out,
            &rmpv::Value::Map(vec![("ack".into(), chunk.into())]),
        )
        .unwrap();
        out
    }

    #[test]
    fn acks() {
        let full = ack_bytes("d-1-2");
        assert_eq!(decode_ack(&full), Ack::Chunk("d-1-2".into()));
        for cut in 0..full.len() {
            assert_eq!(decode_ack(&full[..cut]), Ack::Incomplete, "cut {cut}");
        }
        let mut other = Vec::new();
        rmpv::encode::write_value(&mut other, &rmpv::Value::from(5)).unwrap();
        assert!(matches!(decode_ack(&other), Ack::Invalid(_)));
    }
}
