//! Which lines a query or follower wants: by job, process type and stream.

use crate::line::{LogLine, Stream};

/// Line filter; `None` fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only lines of this job.
    pub job: Option<String>,
    /// Only lines of this process type.
    pub process_type: Option<String>,
    /// Only lines of this stream.
    pub stream: Option<Stream>,
}

impl Filter {
    /// Whether `line` passes every set field.
    pub fn matches(&self, line: &LogLine) -> bool {
        self.job
            .as_deref()
            .is_none_or(|j| line.job.as_deref() == Some(j))
            && self
                .process_type
                .as_deref()
                .is_none_or(|t| line.process_type.as_deref() == Some(t))
            && self.stream.is_none_or(|s| line.stream == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_every_set_field() {
        let line = LogLine {
            id: 1,
            app: "a".into(),
            process_type: Some("web".into()),
            job: Some("j1".into()),
            host: None,
            stream: Stream::Stderr,
            timestamp_ns: 0,
            message: "m".into(),
        };
        let f = |job: Option<&str>, t: Option<&str>, s: Option<Stream>| Filter {
            job: job.map(Into::into),
            process_type: t.map(Into::into),
            stream: s,
        };
        assert!(f(None, None, None).matches(&line));
        assert!(f(Some("j1"), Some("web"), Some(Stream::Stderr)).matches(&line));
        assert!(!f(Some("j2"), None, None).matches(&line));
        assert!(!f(None, Some("worker"), None).matches(&line));
        assert!(!f(None, None, Some(Stream::Stdout)).matches(&line));
    }
}
