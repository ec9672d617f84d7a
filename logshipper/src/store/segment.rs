//! Segment files that let an app's recent lines survive a restart.
//!
//! # On-disk format
//!
//! ```text
//! <app dir>/
//!   00000000000000000000.seg   lines with seq 0..
//!   00000000000000002500.seg   file name = seq of its first line (20 digits)
//! ```
//!
//! A segment is a sequence of records `len u32le | crc u32le | payload`; crc is CRC-32
//! (IEEE) of the payload. Line `k` of a segment has seq `first + k`. The payload is the
//! [`LogLine`] in a compact fixed layout (cheaper than a self-describing format on the
//! hot path):
//!
//! ```text
//! id u64le | timestamp_ns i64le | stream u8 (0 unknown, 1 stdout, 2 stderr)
//! | present u8 (bit 0 process_type, bit 1 job, bit 2 host)
//! | app str | [process_type str] | [job str] | [host str] | message str
//! str = len u32le | UTF-8 bytes
//! ```
//!
//! # Invariants
//!
//! - Only the newest segment (the active one) is appended to; after a restart a new
//!   active segment is started, so a torn tail of an old one is never written after.
//! - Segments are deleted oldest first, and only while the remaining ones still hold at
//!   least `capacity` lines: the disk holds the last `capacity` lines plus at most one
//!   segment (`capacity / 4` lines, or one batch) more.
//! - Reading stops at the first torn or corrupt record of a segment (a crash mid-write);
//!   the lines before it are kept.
//!
//! Appends happen at the store's periodic flush and go to the OS without fsync: the store
//! is the recent-lines view, durability of accepted lines is the journal's job (and a
//! restart replays from it what the segments lack).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::line::{LogLine, SmolStr, Stream};

/// Bytes before each payload: length and crc.
const HEADER_LEN: usize = 8;

/// Largest payload accepted when reading; a bigger length is treated as corruption.
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// Errors of segment files.
#[derive(Debug, Error)]
pub enum SegmentError {
    /// Reading, writing, creating or deleting a segment file or directory failed.
    #[error("segment I/O on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A field of a line is 4 GiB or longer and cannot be framed.
    #[error("a field of line {id} is too long to store")]
    FieldTooLong {
        /// The line's id.
        id: u64,
    },
}

/// How reading a segment's bytes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Every byte belonged to a valid record.
    Clean,
    /// The data ends inside a record (a write cut short).
    Torn,
    /// A record fails its crc or does not decode.
    Corrupt,
}

/// Appends the record for `line` to `out`.
pub fn encode_record(out: &mut Vec<u8>, line: &LogLine) -> Result<(), SegmentError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.extend_from_slice(&line.id.to_le_bytes());
    out.extend_from_slice(&line.timestamp_ns.to_le_bytes());
    out.push(match line.stream {
        Stream::Unknown => 0,
        Stream::Stdout => 1,
        Stream::Stderr => 2,
    });
    let optional = [&line.process_type, &line.job, &line.host];
    let present = optional
        .iter()
        .enumerate()
        .fold(0u8, |acc, (bit, f)| acc | (u8::from(f.is_some()) << bit));
    out.push(present);
    let too_long = || SegmentError::FieldTooLong { id: line.id };
    put_str(out, &line.app).ok_or_else(too_long)?;
    for field in optional.into_iter().flatten() {
        put_str(out, field).ok_or_else(too_long)?;
    }
    put_str(out, &line.message).ok_or_else(too_long)?;
    let payload_len = u32::try_from(out.len() - start - HEADER_LEN).map_err(|_| too_long())?;
    let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Option<()> {
    out.extend_from_slice(&u32::try_from(s.len()).ok()?.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Some(())
}

/// Decodes one payload; `None` if it is malformed.
fn decode_payload(mut p: &[u8]) -> Option<LogLine> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (p.get(..n)?, p.get(n..)?);
        *p = rest;
        Some(head)
    }
    fn string(p: &mut &[u8]) -> Option<String> {
        let len = u32::from_le_bytes(take(p, 4)?.try_into().ok()?) as usize;
        String::from_utf8(take(p, len)?.to_vec()).ok()
    }
    fn name(p: &mut &[u8]) -> Option<SmolStr> {
        let len = u32::from_le_bytes(take(p, 4)?.try_into().ok()?) as usize;
        std::str::from_utf8(take(p, len)?).ok().map(SmolStr::new)
    }
    let id = u64::from_le_bytes(take(&mut p, 8)?.try_into().ok()?);
    let timestamp_ns = i64::from_le_bytes(take(&mut p, 8)?.try_into().ok()?);
    let stream = match take(&mut p, 1)?[0] {
        0 => Stream::Unknown,
        1 => Stream::Stdout,
        2 => Stream::Stderr,
        _ => return None,
    };
    let present = take(&mut p, 1)?[0];
    let app = name(&mut p)?;
    let mut optional = |bit: u8| -> Option<Option<SmolStr>> {
        if present & (1 << bit) != 0 {
            name(&mut p).map(Some)
        } else {
            Some(None)
        }
    };
    let process_type = optional(0)?;
    let job = optional(1)?;
    let host = optional(2)?;
    let message = string(&mut p)?;
    p.is_empty().then_some(LogLine {
        id,
        app,
        process_type,
        job,
        host,
        stream,
        timestamp_ns,
        message,
    })
}

/// Decodes the records of one segment, stopping at the first bad one; also returns the
/// length of the valid prefix.
pub fn decode_records(bytes: &[u8]) -> (Vec<LogLine>, usize, Tail) {
    let mut lines = Vec::new();
    let mut good = 0;
    let tail = loop {
        let rest = &bytes[good..];
        if rest.is_empty() {
            break Tail::Clean;
        }
        let Some(header) = rest.get(..HEADER_LEN) else {
            break Tail::Torn;
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD {
            break Tail::Corrupt;
        }
        let Some(payload) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
            break Tail::Torn;
        };
        if crc32fast::hash(payload) != crc {
            break Tail::Corrupt;
        }
        match decode_payload(payload) {
            Some(line) => lines.push(line),
            None => break Tail::Corrupt,
        }
        good += HEADER_LEN + len;
    };
    (lines, good, tail)
}

/// One segment file: its first seq and how many lines it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegmentInfo {
    first_seq: u64,
    count: u64,
}

/// The segment files of one app.
#[derive(Debug)]
pub struct SegmentSet {
    dir: PathBuf,
    capacity: u64,
    rotate_at: u64,
    segments: VecDeque<SegmentInfo>,
    active: Option<File>,
    buf: Vec<u8>,
}

/// What [`SegmentSet::open`] recovered.
#[derive(Debug)]
pub struct Recovered {
    /// The segment set, ready for appends.
    pub set: SegmentSet,
    /// The last (up to `capacity`) lines found, oldest first.
    pub lines: Vec<LogLine>,
    /// Seq the next line gets.
    pub next_seq: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl SegmentSet {
    /// Opens an app directory (creating it), reading back its last `capacity` lines and
    /// deleting segments no longer needed.
    pub fn open(dir: &Path, capacity: usize) -> Result<Recovered, SegmentError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let capacity = capacity.max(1) as u64;
        let mut firsts = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            if let Some(first) = entry.file_name().to_str().and_then(parse_name) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut segments = VecDeque::new();
        let mut chunks: Vec<Vec<LogLine>> = Vec::new();
        let mut held = 0u64;
        let mut next_seq = 0u64;
        // Newest first, until enough lines are held; everything older is deleted.
        for &first in firsts.iter().rev() {
            let path = segment_path(dir, first);
            if held >= capacity {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            let (lines, good, tail) = decode_records(&bytes);
            if tail != Tail::Clean {
                tracing::warn!(path = %path.display(), ?tail, kept = lines.len(),
                    "segment ends in a bad record; keeping the lines before it");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(good as u64))
                    .map_err(io_err(&path))?;
            }
            let count = lines.len() as u64;
            next_seq = next_seq.max(first + count);
            if count == 0 {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            held += count;
            segments.push_front(SegmentInfo {
                first_seq: first,
                count,
            });
            chunks.push(lines);
        }
        let mut lines: Vec<LogLine> = chunks.into_iter().rev().flatten().collect();
        let excess = lines.len().saturating_sub(capacity as usize);
        lines.drain(..excess);
        let set = SegmentSet {
            dir: dir.to_path_buf(),
            capacity,
            rotate_at: (capacity / 4).max(1),
            segments,
            active: None,
            buf: Vec::new(),
        };
        Ok(Recovered {
            set,
            lines,
            next_seq,
        })
    }

    /// Writes `lines` (whose first has seq `first_seq`, the rest following on) to the
    /// active segment, starting a new segment when the active one is full or the lines
    /// do not continue it (lines evicted before they were written), and deleting ones no
    /// longer needed.
    pub fn append<'a>(
        &mut self,
        first_seq: u64,
        lines: impl IntoIterator<Item = &'a LogLine>,
    ) -> Result<(), SegmentError> {
        self.buf.clear();
        let mut count = 0u64;
        for line in lines {
            encode_record(&mut self.buf, line)?;
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        let continues = self
            .segments
            .back()
            .is_some_and(|s| s.count < self.rotate_at && s.first_seq + s.count == first_seq);
        if self.active.is_none() || !continues {
            let path = segment_path(&self.dir, first_seq);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            self.active = Some(file);
            self.segments.push_back(SegmentInfo {
                first_seq,
                count: 0,
            });
        }
        let active = self.active.as_mut().expect("active segment opened above");
        if let Err(e) = active.write_all(&self.buf) {
            // The file may now end in a torn record: never append to it again.
            self.active = None;
            let first = self.segments.back().map_or(first_seq, |s| s.first_seq);
            return Err(io_err(&segment_path(&self.dir, first))(e));
        }
        if let Some(last) = self.segments.back_mut() {
            last.count += count;
        }
        self.delete_unneeded()
    }

    fn delete_unneeded(&mut self) -> Result<(), SegmentError> {
        let mut total: u64 = self.segments.iter().map(|s| s.count).sum();
        while self.segments.len() > 1 {
            let oldest = self.segments[0];
            if total - oldest.count < self.capacity {
                break;
            }
            let path = segment_path(&self.dir, oldest.first_seq);
            fs::remove_file(&path).map_err(io_err(&path))?;
            self.segments.pop_front();
            total -= oldest.count;
        }
        Ok(())
    }

    /// Number of segment files (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: u64) -> LogLine {
        LogLine {
            id: n,
            app: "a".into(),
            process_type: Some("web".into()),
            job: None,
            host: None,
            stream: Stream::Stdout,
            timestamp_ns: n as i64,
            message: format!("line {n}"),
        }
    }

    #[test]
    fn every_field_combination_round_trips() {
        let mut buf = Vec::new();
        let mut expected = Vec::new();
        for mask in 0..8u8 {
            for stream in [Stream::Unknown, Stream::Stdout, Stream::Stderr] {
                let opt = |bit: u8, v: &str| (mask & (1 << bit) != 0).then(|| v.into());
                let line = LogLine {
                    id: u64::MAX - u64::from(mask),
                    app: "äpp".into(),
                    process_type: opt(0, "web"),
                    job: opt(1, ""),
                    host: opt(2, "h.example"),
                    stream,
                    timestamp_ns: -5,
                    message: "ünïcode\n".into(),
                };
                encode_record(&mut buf, &line).unwrap();
                expected.push(line);
            }
        }
        assert_eq!(decode_records(&buf), (expected, buf.len(), Tail::Clean));
        // A payload with trailing bytes or a bad stream byte is corrupt, not misread.
        assert_eq!(decode_payload(&[0; 17]), None);
        let mut one = Vec::new();
        encode_record(&mut one, &line(1)).unwrap();
        let mut payload = one[HEADER_LEN..].to_vec();
        assert!(decode_payload(&payload).is_some());
        payload.push(0);
        assert_eq!(decode_payload(&payload), None);
    }

    #[test]
    fn records_round_trip_and_stop_at_damage() {
        let mut buf = Vec::new();
        for n in 1..=3 {
            encode_record(&mut buf, &line(n)).unwrap();
        }
        assert_eq!(
            decode_records(&buf),
            ((1..=3).map(line).collect(), buf.len(), Tail::Clean)
        );
        let mut two = Vec::new();
        encode_record(&mut two, &line(1)).unwrap();
        encode_record(&mut two, &line(2)).unwrap();
        let (lines, good, tail) = decode_records(&buf[..buf.len() - 1]);
        assert_eq!((lines.len(), good, tail), (2, two.len(), Tail::Torn));
        let mut bad = buf.clone();
        let last = bad.len() - 2;
        bad[last] ^= 0xff;
        let (lines, good, tail) = decode_records(&bad);
        assert_eq!((lines.len(), good, tail), (2, two.len(), Tail::Corrupt));
        let (lines, good, tail) = decode_records(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!((lines.len(), good, tail), (0, 0, Tail::Corrupt));
    }

    #[test]
    fn keeps_last_capacity_lines_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let rec = SegmentSet::open(dir.path(), 8).unwrap();
        assert_eq!((rec.lines.len(), rec.next_seq), (0, 0));
        let mut set = rec.set;
        for n in 1..=30u64 {
            set.append(n - 1, &[line(n)]).unwrap();
        }
        // 8 lines in segments of 2: at most 5 segments on disk.
        assert!(set.segment_count() <= 5, "{}", set.segment_count());
        drop(set);
        let rec = SegmentSet::open(dir.path(), 8).unwrap();
        assert_eq!(rec.next_seq, 30);
        assert_eq!(rec.lines, (23..=30).map(line).collect::<Vec<_>>());
        let mut set = rec.set;
        set.append(30, &[line(31), line(32)]).unwrap();
        drop(set);
        // Damage the newest segment's tail: its earlier lines survive.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let newest = names.last().unwrap();
        let bytes = fs::read(newest).unwrap();
        fs::write(newest, &bytes[..bytes.len() - 3]).unwrap();
        let rec = SegmentSet::open(dir.path(), 8).unwrap();
        // The torn line is lost; what the older segments held is still there.
        assert_eq!(rec.lines.last(), Some(&line(31)));
        assert_eq!(rec.lines.len(), 7);
        assert_eq!(rec.next_seq, 31);
        // The damaged segment was cut back to its valid prefix, so appending works.
        let mut set = rec.set;
        set.append(31, &[line(99)]).unwrap();
        drop(set);
        let rec = SegmentSet::open(dir.path(), 8).unwrap();
        assert_eq!(rec.lines.last(), Some(&line(99)));
        assert_eq!(rec.next_seq, 32);
    }
}
