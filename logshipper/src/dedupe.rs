//! Dropping shipper replays at the aggregator: the per-sender high-water marks and the
//! pure decision over them.
//!
//! A host agent's shipper numbers the lines of its spool and sends each with
//! `[paas id="N" spool="S"]` (see [`crate::encode::syslog_frame`]): `N` is the spool id,
//! `S` a random 64-bit incarnation (16 hex digits) chosen when the spool directory was
//! created. After a reconnect the shipper replays every line it has not confirmed, so the
//! aggregator sees some lines twice. The sender is the line's HOSTNAME.
//!
//! # Assumptions and what follows from them
//!
//! - One spool per HOSTNAME, and within one spool incarnation the ids a shipper sends
//!   are strictly increasing in its stream (the journal assigns them consecutively and
//!   the shipper sends in id order, replays starting after its last confirmed id). So a
//!   line whose id is not above the highest id accepted from that sender and incarnation
//!   has been accepted before: it is dropped ([`Verdict::Drop`]).
//! - A wiped spool starts at id 1 again with a new incarnation: the aggregator sees the
//!   incarnation change, accepts the line and restarts the sender's mark from it
//!   ([`Accept::NewSpool`]), instead of dropping everything up to the old mark.
//! - A sender that sends `[paas id="N"]` without `spool` has the incarnation `None`; if
//!   such a sender's ids restart, its lines are dropped until they pass the old mark
//!   (the reason the shipper always sends `spool`).
//! - Lines without a HOSTNAME or without a `paas` id are never dropped.
//!
//! The marks are persisted with the journal (see [`crate::journal`]): every journaled line
//! carries its origin, and each segment starts with a checkpoint of the marks, so they
//! are rebuilt at open and a replay right after a restart is still dropped.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Where a line came from, as its sender numbered it (the `paas` SD-ELEMENT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The sender's spool id of the line (`id="N"`).
    pub seq: u64,
    /// The sender's spool incarnation (`spool="S"`), when it sent one.
    pub spool: Option<u64>,
}

/// The highest id accepted from one sender, in its current spool incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The incarnation the id belongs to.
    pub spool: Option<u64>,
    /// Highest id accepted.
    pub high: u64,
}

/// Why a line is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// The line has no sender (HOSTNAME) or no `paas` id: nothing to compare with.
    Untracked,
    /// First line seen from this sender.
    FirstFromSender,
    /// The id is above the sender's mark (gaps are normal: the spool dropped lines).
    Newer {
        /// The mark before this line.
        high: u64,
    },
    /// The sender's spool incarnation changed (spool wiped or replaced): its ids
    /// restarted, so the old mark no longer applies.
    NewSpool {
        /// The incarnation the old mark belonged to.
        previous: Option<u64>,
    },
}

/// Why a line is dropped as a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicate {
    /// The id is at or below the sender's mark in the same incarnation: a replay of a
    /// line already accepted.
    Replay {
        /// The line's id.
        seq: u64,
        /// The sender's mark.
        high: u64,
    },
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the line; the sender's mark moves to its id and incarnation.
    Accept(Accept),
    /// Drop it as a duplicate.
    Drop(Duplicate),
}

/// Decides about a line with `origin` from a sender whose mark is `mark`. Pure.
pub fn decide(mark: Option<&Mark>, origin: Option<&Origin>) -> Verdict {
    let Some(origin) = origin else {
        return Verdict::Accept(Accept::Untracked);
    };
    match mark {
        None => Verdict::Accept(Accept::FirstFromSender),
        Some(m) if m.spool != origin.spool => {
            Verdict::Accept(Accept::NewSpool { previous: m.spool })
        }
        Some(m) if origin.seq > m.high => Verdict::Accept(Accept::Newer { high: m.high }),
        Some(m) => Verdict::Drop(Duplicate::Replay {
            seq: origin.seq,
            high: m.high,
        }),
    }
}

/// The high-water marks of all senders, by HOSTNAME.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks {
    senders: HashMap<String, Mark>,
}

impl Marks {
    /// The mark of `sender`, if a tracked line from it was accepted.
    pub fn get(&self, sender: &str) -> Option<&Mark> {
        self.senders.get(sender)
    }

    /// Decides about a line and, when it is accepted with an origin, moves the sender's
    /// mark to it. Returns the verdict and the sender's previous mark (for undo).
    pub fn admit(
        &mut self,
        sender: Option<&str>,
        origin: Option<&Origin>,
    ) -> (Verdict, Option<Mark>) {
        let (Some(sender), Some(origin)) = (sender, origin) else {
            return (Verdict::Accept(Accept::Untracked), None);
        };
        let mark = Mark {
            spool: origin.spool,
            high: origin.seq,
        };
        // One lookup per line on the hot path: the sender is usually known.
        match self.senders.get_mut(sender) {
            Some(m) => {
                let previous = *m;
                let verdict = decide(Some(&previous), Some(origin));
                if let Verdict::Accept(_) = verdict {
                    *m = mark;
                }
                (verdict, Some(previous))
            }
            None => {
                self.senders.insert(sender.to_owned(), mark);
                (decide(None, Some(origin)), None)
            }
        }
    }

    /// Puts a sender's mark back to `previous` (undoing [`Marks::admit`] for lines that
    /// were then not written).
    pub fn restore(&mut self, sender: &str, previous: Option<Mark>) {
        match previous {
            Some(m) => {
                self.senders.insert(sender.to_owned(), m);
            }
            None => {
                self.senders.remove(sender);
            }
        }
    }

    /// Number of senders tracked.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Whether no sender is tracked.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }
}

/// Finds the `paas` SD-ELEMENT in STRUCTURED-DATA and reads its `id` and `spool`
/// parameters. `None` when there is no such element or `id` is not a positive integer;
/// a `spool` that is not 16 hex digits counts as absent.
pub fn parse_origin(structured_data: &str) -> Option<Origin> {
    const OPEN: &str = "[paas ";
    // The shipper sends the element first; anywhere else is found with memmem.
    let start = if structured_data.starts_with(OPEN) {
        0
    } else {
        memchr::memmem::find(structured_data.as_bytes(), OPEN.as_bytes())?
    };
    let element = &structured_data[start + OPEN.len()..];
    let element = &element[..memchr::memchr(b']', element.as_bytes())?];
    if let Some(origin) = shipper_params(element.as_bytes()) {
        return Some(origin);
    }
    let mut seq = None;
    let mut spool = None;
    for param in element.split(' ') {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        let Some(value) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
            continue;
        };
        match name {
            "id" => seq = value.parse::<u64>().ok().filter(|&n| n > 0),
            "spool" if value.len() == 16 => spool = u64::from_str_radix(value, 16).ok(),
            _ => {}
        }
    }
    Some(Origin { seq: seq?, spool })
}

/// The parameters exactly as the shipper writes them, `id="N" spool="S"`, read without
/// splitting; `None` for any other layout (the general loop then reads it).
fn shipper_params(element: &[u8]) -> Option<Origin> {
    let rest = element.strip_prefix(b"id=\"")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let seq = rest[..digits]
        .iter()
        .fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0'));
    let spool = rest[digits..].strip_prefix(b"\" spool=\"")?;
    let (hex, end) = (spool.get(..16)?, spool.get(16..)?);
    if end != b"\"" || seq == 0 {
        return None;
    }
    let spool = hex.iter().try_fold(0u64, |acc, &b| {
        let d = (b as char).to_digit(16)?;
        Some(acc << 4 | u64::from(d))
    })?;
    Some(Origin {
        seq,
        spool: Some(spool),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(seq: u64, spool: Option<u64>) -> Origin {
        Origin { seq, spool }
    }

    fn m(spool: Option<u64>, high: u64) -> Mark {
        Mark { spool, high }
    }

    #[test]
    fn decisions() {
        let table: &[(Option<Mark>, Option<Origin>, Verdict)] = &[
            (None, None, Verdict::Accept(Accept::Untracked)),
            (
                Some(m(Some(1), 9)),
                None,
                Verdict::Accept(Accept::Untracked),
            ),
            (
                None,
                Some(o(5, Some(1))),
                Verdict::Accept(Accept::FirstFromSender),
            ),
            (
                Some(m(Some(1), 4)),
                Some(o(5, Some(1))),
                Verdict::Accept(Accept::Newer { high: 4 }),
            ),
            (
                Some(m(Some(1), 4)),
                Some(o(90, Some(1))),
                Verdict::Accept(Accept::Newer { high: 4 }),
            ),
            (
                Some(m(Some(1), 5)),
                Some(o(5, Some(1))),
                Verdict::Drop(Duplicate::Replay { seq: 5, high: 5 }),
            ),
            (
                Some(m(Some(1), 5)),
                Some(o(1, Some(1))),
                Verdict::Drop(Duplicate::Replay { seq: 1, high: 5 }),
            ),
            (
                Some(m(Some(1), 5000)),
                Some(o(1, Some(2))),
                Verdict::Accept(Accept::NewSpool { previous: Some(1) }),
            ),
            (
                Some(m(None, 5000)),
                Some(o(1, Some(2))),
                Verdict::Accept(Accept::NewSpool { previous: None }),
            ),
            (
                Some(m(None, 50)),
                Some(o(3, None)),
                Verdict::Drop(Duplicate::Replay { seq: 3, high: 50 }),
            ),
        ];
        for (mark, origin, expected) in table {
            assert_eq!(
                decide(mark.as_ref(), origin.as_ref()),
                *expected,
                "{mark:?} {origin:?}"
            );
        }
    }

    #[test]
    fn admit_moves_marks_per_sender_and_restore_undoes() {
        let mut marks = Marks::default();
        let (v, prev) = marks.admit(Some("h1"), Some(&o(1, Some(7))));
        assert_eq!((v, prev), (Verdict::Accept(Accept::FirstFromSender), None));
        marks.admit(Some("h1"), Some(&o(2, Some(7))));
        marks.admit(Some("h2"), Some(&o(1, Some(8))));
        let (v, _) = marks.admit(Some("h1"), Some(&o(2, Some(7))));
        assert_eq!(v, Verdict::Drop(Duplicate::Replay { seq: 2, high: 2 }));
        assert_eq!(
            marks.get("h1"),
            Some(&m(Some(7), 2)),
            "a drop keeps the mark"
        );
        assert_eq!(
            marks.admit(None, Some(&o(1, None))).0,
            Verdict::Accept(Accept::Untracked)
        );
        let (_, prev) = marks.admit(Some("h2"), Some(&o(2, Some(8))));
        marks.restore("h2", prev);
        assert_eq!(marks.get("h2"), Some(&m(Some(8), 1)));
        let (_, prev) = marks.admit(Some("h3"), Some(&o(1, None)));
        marks.restore("h3", prev);
        assert_eq!(marks.get("h3"), None);
        assert_eq!(marks.len(), 2);
    }

    #[test]
    fn parses_the_paas_element() {
        let table: &[(&str, Option<Origin>)] = &[
            (r#"[paas id="42"]"#, Some(o(42, None))),
            (
                r#"[paas id="42" spool="00000000000000ff"]"#,
                Some(o(42, Some(255))),
            ),
            (
                r#"[x@1 a="b"][paas spool="00000000000000ff" id="7"]"#,
                Some(o(7, Some(255))),
            ),
            (r#"[paas id="42" spool="ff"]"#, Some(o(42, None))),
            (
                r#"[paas id="18446744073709551615" spool="FFFFFFFFFFFFFFFF"]"#,
                Some(o(u64::MAX, Some(u64::MAX))),
            ),
            (
                r#"[paas id="18446744073709551616" spool="0000000000000001"]"#,
                None,
            ),
            (r#"[paas id="0" spool="0000000000000001"]"#, None),
            (
                r#"[paas id="5" spool="000000000000000g"]"#,
                Some(o(5, None)),
            ),
            (
                r#"[paas id="5" spool="0000000000000001" x="y"]"#,
                Some(o(5, Some(1))),
            ),
            (r#"[paas id="0"]"#, None),
            (r#"[paas id="x"]"#, None),
            (r#"[paas spool="00000000000000ff"]"#, None),
            (r#"[paasx id="1"]"#, None),
            (r#"[other id="1"]"#, None),
        ];
        for (sd, expected) in table {
            assert_eq!(parse_origin(sd), *expected, "{sd}");
        }
    }
}
