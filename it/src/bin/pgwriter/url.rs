//! What `pgwriter` needs from a `DATABASE_URL` that tokio-postgres does not parse: the
//! libpq options `sslmode` and `sslrootcert`. Pure.

/// A `DATABASE_URL` split into what tokio-postgres takes and the TLS it asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Url {
    /// The URL without its query (tokio-postgres parses it).
    pub base: String,
    /// How the server is checked.
    pub tls: Tls,
}

/// The TLS a URL asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Tls {
    /// No `sslmode` (or `disable`): plain TCP.
    Off,
    /// `sslmode=verify-full`: TLS, the server's certificate signed by the CA in this file
    /// and naming the host of the URL.
    VerifyFull {
        /// `sslrootcert`.
        ca_file: String,
    },
}

/// Why a URL cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// An `sslmode` this writer does not implement.
    #[error("sslmode={0} is not supported (only verify-full or none)")]
    SslMode(String),
    /// `sslmode=verify-full` without the CA to verify with.
    #[error("sslmode=verify-full needs sslrootcert")]
    NoRootCert,
    /// A query option other than `sslmode` and `sslrootcert`.
    #[error("unknown option {0:?} in the URL")]
    Option(String),
    /// A `%` not followed by two hex digits, or bytes that are not UTF-8.
    #[error("bad percent-encoding in {0:?}")]
    Encoding(String),
}

/// Splits `url` into its base and TLS options.
pub fn parse(url: &str) -> Result<Url, UrlError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut mode, mut root) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value)?;
        match key {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            other => return Err(UrlError::Option(other.to_string())),
        }
    }
    let tls = match mode.as_deref() {
        None | Some("disable") => Tls::Off,
        Some("verify-full") => Tls::VerifyFull {
            ca_file: root.ok_or(UrlError::NoRootCert)?,
        },
        Some(other) => return Err(UrlError::SslMode(other.to_string())),
    };
    Ok(Url {
        base: base.to_string(),
        tls,
    })
}

/// Percent-decodes a query value.
fn decode(value: &str) -> Result<String, UrlError> {
    let bad = || UrlError::Encoding(value.to_string());
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verify_full_url_names_its_ca() {
        let url = parse(
            "postgres://u:p@10.77.0.1:6432/db?sslmode=verify-full&sslrootcert=/tmp/my%20dir/ca.pem",
        )
        .unwrap();
        assert_eq!(url.base, "postgres://u:p@10.77.0.1:6432/db");
        assert_eq!(
            url.tls,
            Tls::VerifyFull {
                ca_file: "/tmp/my dir/ca.pem".into()
            }
        );
    }

    #[test]
    fn a_plain_url_stays_plain() {
        let url = parse("postgres://u:p@127.0.0.1:6432/db").unwrap();
        assert_eq!(url.base, "postgres://u:p@127.0.0.1:6432/db");
        assert_eq!(url.tls, Tls::Off);
        assert_eq!(
            parse("postgres://h/db?sslmode=disable").unwrap().tls,
            Tls::Off
        );
    }

    #[test]
    fn what_it_cannot_honour_is_refused() {
        assert_eq!(
            parse("postgres://h/db?sslmode=require"),
            Err(UrlError::SslMode("require".into()))
        );
        assert_eq!(
            parse("postgres://h/db?sslmode=verify-full"),
            Err(UrlError::NoRootCert)
        );
        assert_eq!(
            parse("postgres://h/db?connect_timeout=3"),
            Err(UrlError::Option("connect_timeout".into()))
        );
        assert!(matches!(
            parse("postgres://h/db?sslmode=verify-full&sslrootcert=%zz"),
            Err(UrlError::Encoding(_))
        ));
    }
}
