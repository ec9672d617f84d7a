//! One-off jobs attached to a client (`paas run`): the request, the frame codec of the
//! upgraded connection, and the client.
//!
//! Wire protocol: `POST /run` on the agent's API with headers `Connection: Upgrade`,
//! `Upgrade: paas-attach` and a JSON [`RunRequest`] body. The agent answers
//! `101 Switching Protocols` once the process is started (or a JSON error with a 4xx/5xx
//! status). After that the connection is a raw byte stream:
//! - client -> agent: the job's stdin, unframed; the client's write half-close is EOF;
//! - agent -> client: frames `[kind u8][len u32 BE][payload]`, kind 1 = stdout bytes,
//!   2 = stderr bytes, 3 = exit (payload: the exit code as i32 BE, 128 + signal when
//!   killed). Exit is the last frame; all output precedes it.
//!
//! Decoding is two-phase: [`decode`] returns `Ok(None)` while a frame is incomplete
//! (not an error) and an error only for an unknown kind or an oversized frame.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `Upgrade` protocol token.
pub const PROTOCOL: &str = "paas-attach";
/// Largest frame payload accepted.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Largest HTTP response head the client reads.
const MAX_HEAD: usize = 16 * 1024;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The app whose release env and artifact the command runs with.
    pub app: String,
    /// Release version; the app's current one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<u64>,
    /// Program and arguments (not run through a shell).
    pub command: Vec<String>,
    /// Extra environment, over the release's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// One frame from the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes the job wrote to stdout.
    Stdout(Vec<u8>),
    /// Bytes the job wrote to stderr.
    Stderr(Vec<u8>),
    /// The job ended with this code (128 + signal when killed).
    Exit(i32),
}

/// Why attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A frame has a kind other than 1, 2, 3.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A frame is longer than [`MAX_PAYLOAD`] or an exit frame is not 4 bytes.
    #[error("bad frame length {0}")]
    BadLength(usize),
    /// Connecting, reading or writing failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The agent's answer is not HTTP or its head is too long.
    #[error("bad answer from agent: {0}")]
    BadAnswer(String),
    /// The agent refused the request (its status and body).
    #[error("agent refused ({status}): {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Response body (an error message).
        body: String,
    },
    /// The connection ended before the exit frame.
    #[error("connection closed before the job's exit code arrived")]
    NoExit,
}

/// Appends `frame` to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let (kind, payload): (u8, &[u8]) = match frame {
        Frame::Stdout(b) => (1, b),
        Frame::Stderr(b) => (2, b),
        Frame::Exit(code) => {
            out.push(3);
            out.extend_from_slice(&4u32.to_be_bytes());
            out.extend_from_slice(&code.to_be_bytes());
            return;
        }
    };
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Decodes the first frame of `buf`: `Ok(None)` if incomplete, else the frame and the
/// bytes it used.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, AttachError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    if !(1..=3).contains(&kind) {
        return Err(AttachError::UnknownKind(kind));
    }
    let Some(len) = buf.get(1..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_PAYLOAD || (kind == 3 && len != 4) {
        return Err(AttachError::BadLength(len));
    }
    let Some(payload) = buf.get(5..5 + len) else {
        return Ok(None);
    };
    let frame = match kind {
        1 => Frame::Stdout(payload.to_vec()),
        2 => Frame::Stderr(payload.to_vec()),
        _ => Frame::Exit(i32::from_be_bytes([
            payload[0], payload[1], payload[2], payload[3],
        ])),
    };
    Ok(Some((frame, 5 + len)))
}

/// Runs `request` on the agent at `addr` (`ip:port`), authenticated with the cluster
/// `secret`, feeding `stdin` to the job and copying its output to `stdout`/`stderr`;
/// returns the job's exit code.
pub async fn run_remote(
    addr: &str,
    secret: &str,
    request: &RunRequest,
    mut stdin: impl AsyncRead + Unpin + Send + 'static,
    mut stdout: impl AsyncWrite + Unpin,
    mut stderr: impl AsyncWrite + Unpin,
) -> Result<i32, AttachError> {
    let mut conn = TcpStream::connect(addr).await?;
    let body = serde_json::to_vec(request).map_err(|e| AttachError::BadAnswer(e.to_string()))?;
    let head = format!(
        "POST /run HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: {PROTOCOL}\r\n\
         Authorization: Bearer {secret}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(&body).await?;

    let (status, length, mut buf) = read_head(&mut conn).await?;
    if status != 101 {
        // The error body: Content-Length bytes (the connection may stay open).
        let want = length.unwrap_or(MAX_HEAD).min(MAX_HEAD);
        let mut chunk = [0u8; 4096];
        while buf.len() < want {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.truncate(want);
        return Err(AttachError::Refused {
            status,
            body: String::from_utf8_lossy(&buf).trim().to_string(),
        });
    }

    let (reader, mut writer) = conn.into_split();
    let feeder = tokio::spawn(async move {
        let copied = tokio::io::copy(&mut stdin, &mut writer).await;
        // Half-close: the job sees EOF on its stdin.
        let _ = writer.shutdown().await;
        copied
    });
    let result = relay_frames(reader, buf, &mut stdout, &mut stderr).await;
    feeder.abort();
    result
}

/// Reads frames from `reader` (after the bytes already in `buf`), copies output to
/// `stdout`/`stderr` as it arrives, and returns the exit code from the last frame.
pub async fn relay_frames(
    mut reader: impl AsyncRead + Unpin,
    mut buf: Vec<u8>,
    mut stdout: impl AsyncWrite + Unpin,
    mut stderr: impl AsyncWrite + Unpin,
) -> Result<i32, AttachError> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some((frame, used)) = decode(&buf)? {
            buf.drain(..used);
            match frame {
                Frame::Stdout(b) => {
                    stdout.write_all(&b).await?;
                    stdout.flush().await?;
                }
                Frame::Stderr(b) => {
                    stderr.write_all(&b).await?;
                    stderr.flush().await?;
                }
                Frame::Exit(code) => return Ok(code),
            }
        }
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Err(AttachError::NoExit);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads an HTTP/1.1 response head; returns the status, the Content-Length if any, and
/// the bytes after the head.
async fn read_head(conn: &mut TcpStream) -> Result<(u16, Option<usize>, Vec<u8>), AttachError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok())
                .filter(|_| head.starts_with("HTTP/1."))
                .ok_or_else(|| AttachError::BadAnswer(head.clone()))?;
            let length = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            });
            return Ok((status, length, buf[end + 4..].to_vec()));
        }
        if buf.len() > MAX_HEAD {
            return Err(AttachError::BadAnswer("response head too long".into()));
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(AttachError::BadAnswer(
                "connection closed before a response".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_byte_by_byte() {
        let frames = vec![
            Frame::Stdout(b"hello\n".to_vec()),
            Frame::Stderr(vec![]),
            Frame::Stderr(vec![0, 255, 10]),
            Frame::Exit(-1),
            Frame::Exit(137),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            encode(f, &mut wire);
        }
        // Feed one byte at a time: incomplete is never an error.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for b in wire {
            buf.push(b);
            while let Some((f, used)) = decode(&buf).unwrap() {
                buf.drain(..used);
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(matches!(
            decode(&[9, 0, 0, 0, 0]),
            Err(AttachError::UnknownKind(9))
        ));
        assert!(matches!(
            decode(&[3, 0, 0, 0, 2, 0, 0]),
            Err(AttachError::BadLength(2))
        ));
        let huge = ((MAX_PAYLOAD + 1) as u32).to_be_bytes();
        assert!(matches!(
            decode(&[1, huge[0], huge[1], huge[2], huge[3]]),
            Err(AttachError::BadLength(_))
        ));
        assert!(decode(&[1, 0, 0]).unwrap().is_none());
    }
}
