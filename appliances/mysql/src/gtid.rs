//! MariaDB GTID positions (`domain-server-seq,...`) and the one comparison the safety
//! rules need: does a position contain every transaction of another?
//!
//! With `gtid_strict_mode` sequence numbers grow strictly within a replication domain,
//! whichever server wrote them, so a position covers another when, in every domain of
//! the other, its sequence number is at least as high. Pure: no I/O.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A GTID position: the last transaction per replication domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GtidPos {
    /// domain -> (server id, sequence number).
    domains: BTreeMap<u32, (u32, u64)>,
}

/// A position that is not `domain-server-seq[,domain-server-seq...]`.
#[derive(Debug, thiserror::Error)]
#[error("not a GTID position: {0:?}")]
pub struct BadGtid(pub String);

impl GtidPos {
    /// Parses `@@gtid_*_pos` text; the empty string is the empty position.
    pub fn parse(text: &str) -> Result<Self, BadGtid> {
        let mut domains = BTreeMap::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut fields = part.split('-');
            let (Some(d), Some(s), Some(q), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(BadGtid(text.to_string()));
            };
            let bad = |_| BadGtid(text.to_string());
            let domain: u32 = d.parse().map_err(bad)?;
            let server: u32 = s.parse().map_err(bad)?;
            let seq: u64 = q.parse().map_err(bad)?;
            domains.insert(domain, (server, seq));
        }
        Ok(GtidPos { domains })
    }

    /// Whether this position holds every transaction of `other`.
    pub fn covers(&self, other: &GtidPos) -> bool {
        other.domains.iter().all(|(domain, (_, seq))| {
            self.domains
                .get(domain)
                .is_some_and(|(_, mine)| mine >= seq)
        })
    }

    /// Transactions of `ahead` this position lacks (sum over domains): a replica's lag.
    pub fn behind(&self, ahead: &GtidPos) -> u64 {
        ahead
            .domains
            .iter()
            .map(|(domain, (_, seq))| {
                let mine = self.domains.get(domain).map_or(0, |(_, s)| *s);
                seq.saturating_sub(mine)
            })
            .sum()
    }

    /// Whether no transaction was ever recorded.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }
}

impl fmt::Display for GtidPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (domain, (server, seq)) in &self.domains {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{domain}-{server}-{seq}")?;
        }
        Ok(())
    }
}

impl TryFrom<String> for GtidPos {
    type Error = BadGtid;
    fn try_from(text: String) -> Result<Self, BadGtid> {
        GtidPos::parse(&text)
    }
}

impl From<GtidPos> for String {
    fn from(pos: GtidPos) -> String {
        pos.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(text: &str) -> GtidPos {
        GtidPos::parse(text).unwrap()
    }

    #[test]
    fn parses_and_prints_positions() {
        assert_eq!(pos("0-1-5,1-2-7").to_string(), "0-1-5,1-2-7");
        assert_eq!(pos(" 1-2-7 , 0-1-5 ").to_string(), "0-1-5,1-2-7");
        assert!(pos("").is_empty());
        for bad in ["0-1", "a-b-c", "0-1-2-3", "0--2"] {
            assert!(GtidPos::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn coverage_compares_sequence_numbers_per_domain_whoever_wrote_them() {
        let check = |a: &str, b: &str, expected: bool| {
            assert_eq!(pos(a).covers(&pos(b)), expected, "{a} covers {b}");
        };
        check("0-1-10", "0-1-10", true);
        check("0-2-11", "0-1-10", true); // a later primary's transaction
        check("0-1-9", "0-1-10", false);
        check("0-1-10", "", true);
        check("", "0-1-1", false);
        check("0-1-10,1-1-3", "0-1-10,1-1-4", false);
        check("0-1-10,1-1-4", "0-1-10", true);
        check("1-1-4", "0-1-1", false);
    }

    #[test]
    fn lag_counts_missing_transactions() {
        assert_eq!(pos("0-1-7").behind(&pos("0-1-10")), 3);
        assert_eq!(pos("0-1-12").behind(&pos("0-1-10")), 0);
        assert_eq!(pos("").behind(&pos("0-1-4,1-1-2")), 6);
    }

    #[test]
    fn serializes_as_text() {
        let json = serde_json::to_string(&pos("0-1-5")).unwrap();
        assert_eq!(json, "\"0-1-5\"");
        assert_eq!(
            serde_json::from_str::<GtidPos>(&json).unwrap(),
            pos("0-1-5")
        );
    }
}
