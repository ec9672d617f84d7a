//! Checking a dump against its manifest: a full pass that hashes without keeping
//! anything ([`check`]), and the stream a restore reads ([`verified`]), which checks
//! again and holds back its last chunk until the whole object checked out, so the
//! engine never sees the end of a dump that does not match.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

/// How a dump differs from its manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// Fewer or more bytes than recorded (truncated, or appended to).
    #[error("size is {actual} bytes, the manifest says {expected}")]
    Size {
        /// Recorded size.
        expected: u64,
        /// Size found (so far, when too long).
        actual: u64,
    },
    /// Same size, different bytes.
    #[error("SHA-256 is {actual}, the manifest says {expected}")]
    Digest {
        /// Recorded digest.
        expected: String,
        /// Digest found.
        actual: String,
    },
}

/// The pure verdict once every byte is counted: `None` when size and digest match.
pub fn verdict(expected_size: u64, expected_sha: &str, size: u64, sha: &str) -> Option<Mismatch> {
    if size != expected_size {
        Some(Mismatch::Size {
            expected: expected_size,
            actual: size,
        })
    } else if sha != expected_sha {
        Some(Mismatch::Digest {
            expected: expected_sha.into(),
            actual: sha.into(),
        })
    } else {
        None
    }
}

/// Why [`check`] did not confirm the dump.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The dump does not match its manifest.
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
    /// Reading it failed.
    #[error("reading the dump: {0}")]
    Read(#[from] object_store::Error),
}

/// Reads the whole stream, checking size and SHA-256.
pub async fn check(
    mut stream: BoxStream<'static, object_store::Result<Bytes>>,
    expected_size: u64,
    expected_sha: &str,
) -> Result<(), CheckError> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        if size > expected_size {
            return Err(Mismatch::Size {
                expected: expected_size,
                actual: size,
            }
            .into());
        }
        hasher.update(&chunk);
    }
    match verdict(
        expected_size,
        expected_sha,
        size,
        &hex::encode(hasher.finalize()),
    ) {
        None => Ok(()),
        Some(m) => Err(m.into()),
    }
}

struct Verifying {
    inner: BoxStream<'static, object_store::Result<Bytes>>,
    held: Option<Bytes>,
    hasher: Sha256,
    size: u64,
    expected_size: u64,
    expected_sha: String,
    done: bool,
}

/// `stream`, checked on the way: every chunk is passed on one chunk late, and the last
/// one only after size and SHA-256 matched; otherwise the stream ends with an error
/// instead of its last chunk.
pub fn verified(
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    expected_size: u64,
    expected_sha: &str,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let state = Verifying {
        inner: stream,
        held: None,
        hasher: Sha256::new(),
        size: 0,
        expected_size,
        expected_sha: expected_sha.to_string(),
        done: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            match s.inner.next().await {
                Some(Ok(chunk)) => {
                    s.size += chunk.len() as u64;
                    if s.size > s.expected_size {
                        s.done = true;
                        let m = Mismatch::Size {
                            expected: s.expected_size,
                            actual: s.size,
                        };
                        return Some((Err(invalid(m)), s));
                    }
                    s.hasher.update(&chunk);
                    if let Some(previous) = s.held.replace(chunk) {
                        return Some((Ok(previous), s));
                    }
                }
                Some(Err(e)) => {
                    s.done = true;
                    return Some((Err(std::io::Error::other(e)), s));
                }
                None => {
                    s.done = true;
                    let sha = hex::encode(std::mem::take(&mut s.hasher).finalize());
                    if let Some(m) = verdict(s.expected_size, &s.expected_sha, s.size, &sha) {
                        return Some((Err(invalid(m)), s));
                    }
                    let last = s.held.take()?;
                    return Some((Ok(last), s));
                }
            }
        }
    })
}

fn invalid(m: Mismatch) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> BoxStream<'static, object_store::Result<Bytes>> {
        let owned: Vec<_> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        futures::stream::iter(owned).boxed()
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(3, "a", 3, "a"), None);
        assert!(matches!(
            verdict(3, "a", 2, "a"),
            Some(Mismatch::Size { .. })
        ));
        assert!(matches!(
            verdict(3, "a", 3, "b"),
            Some(Mismatch::Digest { .. })
        ));
    }

    #[tokio::test]
    async fn check_accepts_only_the_recorded_bytes() {
        let good = sha(b"abcdef");
        assert!(check(chunks(&[b"abc", b"def"]), 6, &good).await.is_ok());
        let short = check(chunks(&[b"abc"]), 6, &good).await.unwrap_err();
        assert!(short.to_string().contains("size is 3 bytes"), "{short}");
        let long = check(chunks(&[b"abc", b"defg"]), 6, &good)
            .await
            .unwrap_err();
        assert!(long.to_string().contains("size is 7"), "{long}");
        let flipped = check(chunks(&[b"abc", b"deF"]), 6, &good)
            .await
            .unwrap_err();
        assert!(flipped.to_string().contains("SHA-256"), "{flipped}");
    }

    #[tokio::test]
    async fn verified_withholds_the_last_chunk_of_a_bad_dump() {
        let good = sha(b"abcdef");
        let out: Vec<_> = verified(chunks(&[b"ab", b"cd", b"ef"]), 6, &good)
            .collect()
            .await;
        let bytes: Vec<u8> = out
            .iter()
            .flat_map(|c| c.as_ref().unwrap().to_vec())
            .collect();
        assert_eq!(bytes, b"abcdef");

        let out: Vec<_> = verified(chunks(&[b"ab", b"cd", b"eF"]), 6, &good)
            .collect()
            .await;
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].as_ref().unwrap().as_ref(), b"ab");
        assert_eq!(out[1].as_ref().unwrap().as_ref(), b"cd");
        let err = out[2].as_ref().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);

        let out: Vec<_> = verified(chunks(&[b"ab", b"cd"]), 6, &good).collect().await;
        assert!(out.last().unwrap().is_err(), "truncated: {out:?}");
        assert!(out.iter().filter(|c| c.is_ok()).count() == 1);
    }
}
