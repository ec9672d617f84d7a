//! Capturing a job's stdout/stderr line by line, with a timestamp per line, into the
//! host's log sink.
//!
//! [`LineSplitter`] is the pure part: bytes in, complete lines out; a line longer than
//! [`MAX_LINE`] bytes is cut into pieces of that size (nothing is dropped); a trailing
//! `\r` is removed; invalid UTF-8 is replaced. [`pump`] reads a pipe through it and hands
//! each line to the [`LogSink`]:
//! - `Shipper`: spooled by `paas_logshipper::shipper::Shipper` for the aggregator
//!   (RFC 5424, APP-NAME = app, PROCID = `<type>.<job>`, MSGID = stdout|stderr);
//! - `File`: appended to `DATA_DIR/logs/<app>/<job>.log` as
//!   `<RFC 3339 time> <stdout|stderr> <line>` when no aggregator is configured.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use paas_logshipper::shipper::Shipper;
use paas_logshipper::{LogLine, Stream};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest line kept in one piece (bytes); the aggregator's limit.
pub const MAX_LINE: usize = paas_logshipper::shipper::MAX_LINE;

/// Why capturing failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Reading the job's pipe failed.
    #[error("reading job output: {0}")]
    Read(#[source] std::io::Error),
    /// Appending to the job's log file failed.
    #[error("writing {path}: {source}")]
    File {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The shipper's spool refused the line.
    #[error("spooling: {0}")]
    Spool(#[from] paas_logshipper::shipper::ShipperError),
}

/// Splits a byte stream into lines of at most `max` bytes.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// A splitter cutting lines at `max` bytes (at least 1).
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            buf: Vec::new(),
            max: max.max(1),
        }
    }

    /// Feeds bytes; returns the lines they complete.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        while !bytes.is_empty() {
            let room = self.max - self.buf.len();
            let window = &bytes[..bytes.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.buf.extend_from_slice(&window[..i]);
                    lines.push(self.take());
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.buf.extend_from_slice(window);
                    bytes = &bytes[window.len()..];
                    if self.buf.len() == self.max {
                        lines.push(self.take());
                    }
                }
            }
        }
        lines
    }

    /// The unterminated rest at end of stream, if any.
    pub fn finish(&mut self) -> Option<String> {
        (!self.buf.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        let line = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        line
    }
}

/// Which job a captured line belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineOrigin {
    /// App name.
    pub app: String,
    /// Process type.
    pub process_type: String,
    /// Job id.
    pub job: String,
    /// This host's id.
    pub host: String,
}

/// Where captured lines go.
#[derive(Clone)]
pub enum LogSink {
    /// To the aggregator, through the host's shipper spool.
    Shipper(Arc<Shipper>),
    /// Appended to files under this directory (`<dir>/<app>/<job>.log`).
    Files(PathBuf),
}

impl LogSink {
    /// Stores one line.
    pub fn write(
        &self,
        origin: &LineOrigin,
        stream: Stream,
        at: DateTime<Utc>,
        message: String,
    ) -> Result<(), CaptureError> {
        match self {
            LogSink::Shipper(shipper) => {
                let mut line = [LogLine {
                    id: 0,
                    app: origin.app.as_str().into(),
                    process_type: Some(origin.process_type.as_str().into()),
                    job: Some(origin.job.as_str().into()),
                    host: Some(origin.host.as_str().into()),
                    stream,
                    timestamp_ns: at.timestamp_nanos_opt().unwrap_or(0),
                    message,
                }];
                shipper.ship(&mut line)?;
                Ok(())
            }
            LogSink::Files(dir) => {
                let app_dir = dir.join(&origin.app);
                let path = app_dir.join(format!("{}.log", origin.job));
                let io = |source| CaptureError::File {
                    path: path.clone(),
                    source,
                };
                std::fs::create_dir_all(&app_dir).map_err(io)?;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io)?;
                let name = match stream {
                    Stream::Stderr => "stderr",
                    _ => "stdout",
                };
                writeln!(
                    file,
                    "{} {name} {message}",
                    at.to_rfc3339_opts(SecondsFormat::Micros, true)
                )
                .map_err(io)
            }
        }
    }
}

/// Reads `output` to its end, writing each line to `sink`; returns the number of lines.
pub async fn pump(
    sink: &LogSink,
    origin: &LineOrigin,
    stream: Stream,
    mut output: impl AsyncRead + Unpin,
) -> Result<u64, CaptureError> {
    let mut splitter = LineSplitter::new(MAX_LINE);
    let mut buf = vec![0u8; 16 * 1024];
    let mut count = 0;
    loop {
        let n = output.read(&mut buf).await.map_err(CaptureError::Read)?;
        let lines = if n == 0 {
            splitter.finish().into_iter().collect()
        } else {
            splitter.push(&buf[..n])
        };
        let at = Utc::now();
        for line in lines {
            sink.write(origin, stream, at, line)?;
            count += 1;
        }
        if n == 0 {
            return Ok(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(max: usize, chunks: &[&str], expected: &[&str]) {
        let mut s = LineSplitter::new(max);
        let mut got = Vec::new();
        for c in chunks {
            got.extend(s.push(c.as_bytes()));
        }
        got.extend(s.finish());
        assert_eq!(got, expected);
    }

    #[test]
    fn splits_lines_across_chunks() {
        check(100, &["a\nb", "c\n", "\nd"], &["a", "bc", "", "d"]);
        check(100, &["crlf\r\n"], &["crlf"]);
        check(100, &[], &[]);
    }

    #[test]
    fn long_lines_are_cut_not_dropped() {
        check(3, &["abcdefg\nhi\n"], &["abc", "def", "g", "hi"]);
        check(3, &["abc\n"], &["abc", ""]);
        check(3, &["ab", "cd"], &["abc", "d"]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut s = LineSplitter::new(10);
        assert_eq!(s.push(b"a\xffb\n"), vec!["a\u{fffd}b".to_string()]);
    }

    #[tokio::test]
    async fn file_sink_writes_timestamped_lines() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::Files(dir.path().to_path_buf());
        let origin = LineOrigin {
            app: "shop".into(),
            process_type: "web".into(),
            job: "j1".into(),
            host: "h1".into(),
        };
        let n = pump(&sink, &origin, Stream::Stderr, &b"one\ntwo"[..])
            .await
            .unwrap();
        assert_eq!(n, 2);
        let text = std::fs::read_to_string(dir.path().join("shop/j1.log")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with(" stderr one"), "{text}");
        assert!(lines[1].ends_with(" stderr two"), "{text}");
        DateTime::parse_from_rfc3339(lines[0].split(' ').next().unwrap()).unwrap();
    }
}
