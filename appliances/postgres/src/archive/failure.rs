//! Whether a member's archiving is failing, for its status: PostgreSQL retries a failed
//! `archive_command` forever and keeps the WAL it could not push, so a push that is
//! always refused (pgBackRest holds a different copy of that segment, the repository is
//! unreachable) piles WAL up silently unless someone looks. The member's status says
//! "archiving failing since T (segment S): <pgBackRest's message>" while the latest
//! attempt failed.
//!
//! What is read: `pg_stat_archiver` (a failure newer than the last success means the
//! archiver is stuck on a segment), and pgBackRest's own log of the member's pushes
//! (`<member>/pgbackrest/<stanza>-archive-push.log`) for the reason; deciding and
//! wording are pure ([`failing_since`], [`last_error`], [`sentence`]).

use std::time::SystemTime;

/// What PostgreSQL's archiver reports (`pg_stat_archiver`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiverStats {
    /// Failed attempts since the statistics were reset.
    pub failed_count: i64,
    /// The segment of the latest failed attempt.
    pub last_failed_wal: Option<String>,
    /// When the latest attempt failed.
    pub last_failed_time: Option<SystemTime>,
    /// When the latest segment was archived.
    pub last_archived_time: Option<SystemTime>,
}

/// Since when archiving has been failing, or `None` when it is not (pure): failing while
/// the latest failure is newer than the latest success. `before` is what the member
/// found at its previous look, kept while the failures go on (PostgreSQL records only
/// the latest failure); at the first look the latest failure is the start.
pub fn failing_since(stats: &ArchiverStats, before: Option<SystemTime>) -> Option<SystemTime> {
    let failed = stats.last_failed_time?;
    if stats.last_archived_time.is_some_and(|ok| ok >= failed) {
        return None;
    }
    Some(before.unwrap_or(failed))
}

/// At most this much of pgBackRest's message goes in a status line.
const MESSAGE_LIMIT: usize = 400;

/// The last error pgBackRest logged in `log` (the end of its log file), without its
/// timestamp and process columns, its continuation lines (indented: the causes, a
/// hint) joined to it, cut at [`MESSAGE_LIMIT`] bytes (pure).
pub fn last_error(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let at = lines.iter().rposition(|l| l.contains(" ERROR: "))?;
    let (_, first) = lines[at].split_once(" ERROR: ")?;
    let mut message = first.trim().to_string();
    for more in lines[at + 1..]
        .iter()
        .take_while(|l| l.starts_with(char::is_whitespace))
    {
        message.push(' ');
        message.push_str(more.trim());
    }
    if message.len() > MESSAGE_LIMIT {
        let mut end = MESSAGE_LIMIT;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    Some(message)
}

/// The status line of a member whose archiving has failed since `since` (pure).
pub fn sentence(since: SystemTime, stats: &ArchiverStats, error: Option<&str>) -> String {
    let at = chrono::DateTime::<chrono::Utc>::from(since).format("%Y-%m-%d %H:%M:%S UTC");
    let segment = stats
        .last_failed_wal
        .as_deref()
        .map(|wal| format!(" (segment {wal})"))
        .unwrap_or_default();
    let reason = error.unwrap_or("no message from pgBackRest; see the server's log");
    format!("archiving failing since {at}{segment}: {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn stats(failed: Option<u64>, archived: Option<u64>) -> ArchiverStats {
        ArchiverStats {
            failed_count: i64::from(failed.is_some()),
            last_failed_wal: failed.map(|_| "000000010000000000000007".into()),
            last_failed_time: failed.map(at),
            last_archived_time: archived.map(at),
        }
    }

    #[test]
    fn failing_while_the_latest_failure_is_newer_than_the_latest_success() {
        let check = |s: ArchiverStats, before: Option<u64>, expected: Option<u64>| {
            assert_eq!(
                failing_since(&s, before.map(at)),
                expected.map(at),
                "{s:?} {before:?}"
            );
        };
        // Never failed, or failed then archived since: fine.
        check(stats(None, None), None, None);
        check(stats(None, Some(100)), None, None);
        check(stats(Some(90), Some(100)), Some(80), None);
        // The latest attempt failed: since the first failure this member saw.
        check(stats(Some(120), Some(100)), None, Some(120));
        check(stats(Some(180), Some(100)), Some(120), Some(120));
        // Never archived anything, and failing.
        check(stats(Some(50), None), None, Some(50));
    }

    #[test]
    fn the_reason_is_pgbackrests_last_error() {
        let log = "\
-------------------PROCESS START-------------------
2026-12-02 01:35:18.841 P00   INFO: archive-push command begin 2.45: [pg_wal/000000010000000000000007]
2026-12-02 01:35:18.900 P00  ERROR: [045]: WAL file '000000010000000000000007' already exists in the repo1 archive with a different checksum
                                    HINT: this is valid in some recovery scenarios but may also indicate a problem.
2026-12-02 01:35:18.901 P00   INFO: archive-push command end: aborted with exception [045]
";
        assert_eq!(
            last_error(log).as_deref(),
            Some(
                "[045]: WAL file '000000010000000000000007' already exists in the repo1 \
                 archive with a different checksum HINT: this is valid in some recovery \
                 scenarios but may also indicate a problem."
            )
        );
        let unreachable = "\
2026-12-02 01:47:34.100 P00  ERROR: [103]: unable to find a valid repository:
                                    repo1: [ServiceError] TLS error [5:0] no details available
";
        assert_eq!(
            last_error(unreachable).as_deref(),
            Some(
                "[103]: unable to find a valid repository: repo1: [ServiceError] TLS error \
                 [5:0] no details available"
            )
        );
        let long = format!("x P00  ERROR: [1]: {}\n", "é".repeat(400));
        let cut = last_error(&long).unwrap();
        assert!(
            cut.len() <= MESSAGE_LIMIT + 3 && cut.ends_with("..."),
            "{cut}"
        );
        assert_eq!(last_error("2026-12-02 P00   INFO: all fine\n"), None);
        assert_eq!(last_error(""), None);
    }

    #[test]
    fn the_status_line_says_since_when_which_segment_and_why() {
        let s = stats(Some(1_796_200_000), Some(1_796_100_000));
        assert_eq!(
            sentence(at(1_796_199_000), &s, Some("[045]: different checksum")),
            "archiving failing since 2026-12-02 08:10:00 UTC (segment 000000010000000000000007): \
             [045]: different checksum"
        );
        assert!(sentence(at(1_796_199_000), &s, None).ends_with("see the server's log"));
    }
}
