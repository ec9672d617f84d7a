//! Where the pgBackRest repository is: a directory every member reaches (the members of
//! one machine share it), or a path in an S3 bucket; and the `pgbackrest.conf` lines
//! and the push lock for either (pure).
//!
//! S3, as pgBackRest 2.45 speaks it: HTTPS only, the endpoint checked against the
//! names in the server's certificate (so a name such as `localhost`, not an address),
//! `repo1-s3-uri-style=path` for any server but AWS itself (the bucket in the path, not
//! in the host name), and a CA file for a private certificate authority.
//!
//! The keys never go in a configuration file or on a command line: pgBackRest reads
//! them from its environment ([`KEY_ENV`], [`SECRET_ENV`], [`TOKEN_ENV`]). A member gets
//! them in its own environment (its job's), and both `runuser` (pgBackRest's commands)
//! and PostgreSQL's archiver (the push script) inherit it; a process that has them
//! otherwise (the provider restoring to a time) sets them on each command from
//! [`S3Repo::keys`].

use std::path::{Path, PathBuf};

/// The variable pgBackRest reads the S3 access key id from.
pub const KEY_ENV: &str = "PGBACKREST_REPO1_S3_KEY";
/// The variable pgBackRest reads the S3 secret access key from.
pub const SECRET_ENV: &str = "PGBACKREST_REPO1_S3_KEY_SECRET";
/// The variable pgBackRest reads an S3 session token from.
pub const TOKEN_ENV: &str = "PGBACKREST_REPO1_S3_TOKEN";

/// The lock file every push takes (see [`Repo::push_lock`]).
const PUSH_LOCK: &str = "archive-push.lock";

/// Why a repository's description was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RepoError {
    /// The repository is not `s3://bucket[/path]`.
    #[error("{0:?} is not s3://bucket/path")]
    NotS3(String),
    /// The endpoint is plain HTTP, which pgBackRest does not speak to S3.
    #[error("S3 endpoint {0}: pgBackRest reaches S3 over HTTPS only")]
    PlainHttp(String),
    /// The endpoint is not `https://host[:port]`.
    #[error("S3 endpoint {0:?}: expected https://host[:port]")]
    BadEndpoint(String),
}

/// Where the repository is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repo {
    /// A directory, shared by the members of one machine.
    Dir(PathBuf),
    /// A path in an S3 bucket.
    S3(S3Repo),
}

impl From<PathBuf> for Repo {
    fn from(dir: PathBuf) -> Repo {
        Repo::Dir(dir)
    }
}

/// A repository in an S3 bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Repo {
    /// The bucket.
    pub bucket: String,
    /// The repository's path in the bucket, absolute (`/prefix/pgbackrest`).
    pub path: String,
    /// The endpoint's host name (what its certificate names).
    pub host: String,
    /// The endpoint's port.
    pub port: u16,
    /// The region.
    pub region: String,
    /// Whether the bucket goes in the path (any S3 server but AWS) rather than the host.
    pub path_style: bool,
    /// The CA the endpoint's certificate is checked against; `None`: the system's.
    pub ca_file: Option<PathBuf>,
    /// Keys to set on each command; `None`: pgBackRest finds them in the environment
    /// this process was given.
    pub keys: Option<S3Keys>,
}

/// S3 credentials, handed to pgBackRest through its environment.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Keys {
    /// Access key id.
    pub key: String,
    /// Secret access key.
    pub secret: String,
    /// Session token, for temporary credentials.
    pub token: Option<String>,
}

impl std::fmt::Debug for S3Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Keys")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl S3Keys {
    /// The variables pgBackRest reads these keys from, with their values.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            (KEY_ENV, self.key.clone()),
            (SECRET_ENV, self.secret.clone()),
        ];
        if let Some(token) = &self.token {
            env.push((TOKEN_ENV, token.clone()));
        }
        env
    }
}

impl S3Repo {
    /// The repository at `url` (`s3://bucket[/path]`) reached through `endpoint`
    /// (`https://host[:port]`; `None`: AWS's endpoint of `region`).
    pub fn new(url: &str, endpoint: Option<&str>, region: &str) -> Result<S3Repo, RepoError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| RepoError::NotS3(url.into()))?;
        let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(RepoError::NotS3(url.into()));
        }
        let (host, port, path_style) = match endpoint {
            None => (format!("s3.{region}.amazonaws.com"), 443, false),
            Some(e) if e.starts_with("http://") => return Err(RepoError::PlainHttp(e.into())),
            Some(e) => {
                let bad = || RepoError::BadEndpoint(e.into());
                let authority = e
                    .strip_prefix("https://")
                    .ok_or_else(bad)?
                    .trim_end_matches('/');
                let (host, port) = match authority.rsplit_once(':') {
                    Some((host, port)) => (host, port.parse().map_err(|_| bad())?),
                    None => (authority, 443),
                };
                if host.is_empty() || host.contains('/') {
                    return Err(bad());
                }
                (host.to_string(), port, true)
            }
        };
        Ok(S3Repo {
            bucket: bucket.into(),
            path: format!("/{}", path.trim_matches('/')),
            host,
            port,
            region: region.into(),
            path_style,
            ca_file: None,
            keys: None,
        })
    }

    /// `https://host:port`, the endpoint as a URL.
    pub fn endpoint(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }
}

impl Repo {
    /// The `[global]` lines of `pgbackrest.conf` that say where the repository is.
    pub fn conf_lines(&self) -> String {
        match self {
            Repo::Dir(dir) => format!("repo1-path={}\n", dir.display()),
            Repo::S3(s3) => {
                let mut lines = format!(
                    "repo1-type=s3\nrepo1-path={}\nrepo1-s3-bucket={}\nrepo1-s3-endpoint={}\n\
                     repo1-storage-port={}\nrepo1-s3-region={}\n",
                    s3.path, s3.bucket, s3.host, s3.port, s3.region
                );
                if s3.path_style {
                    lines.push_str("repo1-s3-uri-style=path\n");
                }
                if let Some(ca) = &s3.ca_file {
                    lines.push_str(&format!("repo1-storage-ca-file={}\n", ca.display()));
                }
                lines
            }
        }
    }

    /// The lock file a push takes, given the member's own pgBackRest directory `work`.
    /// In a directory repository, one file in it for every member: pgBackRest writes
    /// every copy of a segment through the same temporary file name, which two members
    /// pushing at once would corrupt. In S3 an object appears whole or not at all (a PUT
    /// is atomic and pgBackRest uses no temporary object), so members need not wait for
    /// each other; the lock is the member's own and only keeps its pushes in sequence.
    pub fn push_lock(&self, work: &Path) -> PathBuf {
        match self {
            Repo::Dir(dir) => dir.join(PUSH_LOCK),
            Repo::S3(_) => work.join(PUSH_LOCK),
        }
    }

    /// The directory to create for the repository, if it is one.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Repo::Dir(dir) => Some(dir),
            Repo::S3(_) => None,
        }
    }

    /// The keys to set on each pgBackRest command (none for a directory, or when they
    /// come from the environment).
    pub fn keys(&self) -> Option<&S3Keys> {
        match self {
            Repo::S3(s3) => s3.keys.as_ref(),
            Repo::Dir(_) => None,
        }
    }
}

impl std::fmt::Display for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Repo::Dir(dir) => write!(f, "{}", dir.display()),
            Repo::S3(s3) => write!(f, "s3://{}{} at {}", s3.bucket, s3.path, s3.endpoint()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_repository_names_bucket_path_and_endpoint() {
        let check = |url: &str,
                     endpoint: Option<&str>,
                     expected: Result<(&str, &str, u16, bool), RepoError>| {
            let got = S3Repo::new(url, endpoint, "eu-west-3")
                .map(|r| (r.bucket, r.path, r.host, r.port, r.path_style));
            let expected = expected.map(|(path, host, port, style)| {
                (
                    "bk".to_string(),
                    path.to_string(),
                    host.to_string(),
                    port,
                    style,
                )
            });
            assert_eq!(got, expected, "{url} {endpoint:?}");
        };
        check(
            "s3://bk/a/b/pgbackrest",
            Some("https://localhost:9443"),
            Ok(("/a/b/pgbackrest", "localhost", 9443, true)),
        );
        check(
            "s3://bk/pgbackrest/",
            Some("https://s3.example.net/"),
            Ok(("/pgbackrest", "s3.example.net", 443, true)),
        );
        check(
            "s3://bk",
            None,
            Ok(("/", "s3.eu-west-3.amazonaws.com", 443, false)),
        );
        check(
            "s3://bk/p",
            Some("http://localhost:9000"),
            Err(RepoError::PlainHttp("http://localhost:9000".into())),
        );
        check(
            "s3://bk/p",
            Some("localhost:9000"),
            Err(RepoError::BadEndpoint("localhost:9000".into())),
        );
        check(
            "s3://bk/p",
            Some("https://localhost:x"),
            Err(RepoError::BadEndpoint("https://localhost:x".into())),
        );
        check(
            "/var/lib/repo",
            None,
            Err(RepoError::NotS3("/var/lib/repo".into())),
        );
        check("s3:///p", None, Err(RepoError::NotS3("s3:///p".into())));
    }

    #[test]
    fn the_configuration_says_where_the_repository_is_and_never_holds_keys() {
        let dir = Repo::Dir("/data/postgres/pgbackrest".into());
        assert_eq!(dir.conf_lines(), "repo1-path=/data/postgres/pgbackrest\n");
        let mut s3 = S3Repo::new(
            "s3://bk/c/pgbackrest",
            Some("https://localhost:9443"),
            "us-east-1",
        )
        .unwrap();
        s3.ca_file = Some("/etc/paas/s3-ca.pem".into());
        s3.keys = Some(S3Keys {
            key: "AKID".into(),
            secret: "shh".into(),
            token: None,
        });
        let repo = Repo::S3(s3);
        assert_eq!(
            repo.conf_lines(),
            "repo1-type=s3\nrepo1-path=/c/pgbackrest\nrepo1-s3-bucket=bk\n\
             repo1-s3-endpoint=localhost\nrepo1-storage-port=9443\nrepo1-s3-region=us-east-1\n\
             repo1-s3-uri-style=path\nrepo1-storage-ca-file=/etc/paas/s3-ca.pem\n"
        );
        assert!(!format!("{repo:?}").contains("shh"), "{repo:?}");
        assert_eq!(
            repo.keys().unwrap().env(),
            vec![
                (KEY_ENV, "AKID".to_string()),
                (SECRET_ENV, "shh".to_string())
            ]
        );
        assert_eq!(
            repo.to_string(),
            "s3://bk/c/pgbackrest at https://localhost:9443"
        );
    }

    #[test]
    fn members_share_the_push_lock_of_a_directory_but_not_of_a_bucket() {
        let work = Path::new("/d/pg0/pgbackrest");
        let dir = Repo::Dir("/data/repo".into());
        assert_eq!(
            dir.push_lock(work),
            Path::new("/data/repo/archive-push.lock")
        );
        assert_eq!(dir.dir(), Some(Path::new("/data/repo")));
        let s3 = Repo::S3(S3Repo::new("s3://bk/p", None, "us-east-1").unwrap());
        assert_eq!(
            s3.push_lock(work),
            Path::new("/d/pg0/pgbackrest/archive-push.lock")
        );
        assert_eq!(s3.dir(), None);
    }
}
