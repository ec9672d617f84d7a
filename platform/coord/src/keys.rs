//! Key namespacing, pure.
//!
//! Every key a [`crate::Coord`] touches is `<namespace>/<key>` in etcd, so tests and
//! clusters sharing one etcd never see each other's keys. Callers only ever see the
//! part after the namespace. A prefix query for `p` reads the etcd range
//! `[ns/p, prefix_end(ns/p))`.

/// Maps caller keys to etcd keys under one namespace and back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Namespace {
    /// `<namespace>/`, or empty for no namespace.
    root: String,
}

impl Namespace {
    /// A namespace; leading and trailing slashes are ignored, empty means none.
    pub(crate) fn new(name: &str) -> Self {
        let name = name.trim_matches('/');
        let root = if name.is_empty() {
            String::new()
        } else {
            format!("{name}/")
        };
        Namespace { root }
    }

    /// The etcd key for a caller key.
    pub(crate) fn full(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.root).into_bytes()
    }

    /// The caller key for an etcd key, or `None` when it lies outside the namespace
    /// or is not UTF-8.
    pub(crate) fn strip(&self, full: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(full).ok()?;
        key.strip_prefix(&self.root).map(str::to_string)
    }
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end
/// for a prefix query); `[0]` ("to the end") when no such key exists.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_round_trip() {
        for (ns, key, full) in [
            ("t1", "apps/a", "t1/apps/a"),
            ("/t1/", "apps/a", "t1/apps/a"),
            ("", "apps/a", "apps/a"),
        ] {
            let ns = Namespace::new(ns);
            assert_eq!(ns.full(key), full.as_bytes());
            assert_eq!(ns.strip(full.as_bytes()).as_deref(), Some(key));
        }
        assert_eq!(Namespace::new("t1").strip(b"t2/apps/a"), None);
    }

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
