//! Server replies of the forward protocol: the shared-key handshake and chunk acks.
//!
//! Handshake (only when a shared key is configured), as in the Forward Protocol v1 spec:
//!
//! ```text
//! server -> ["HELO", {"nonce": bin16, "auth": bin0, "keepalive": true}]
//! client -> ["PING", client_hostname, salt, hex(sha512(salt + client_hostname + nonce + key)),
//!            username, password_digest]
//! server -> ["PONG", ok, reason, server_hostname,
//!            hex(sha512(salt + server_hostname + nonce + key))]
//! ```
//!
//! An empty `auth` means no user authentication; username and password are ignored.
//! Everything here is pure (no I/O) so it is tested on bytes.

use rmpv::Value;
use sha2::{Digest, Sha512};

use super::message::Ping;

/// The configured shared key and the hostname this server announces in PONG.
#[derive(Debug, Clone)]
pub struct SharedKey {
    /// The secret both sides know.
    pub key: String,
    /// Hostname sent in PONG (clients may check it).
    pub server_hostname: String,
}

/// Outcome of checking a PING; the rejection reason goes into PONG and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PingVerdict {
    /// The digest proves the client knows the shared key.
    Accepted,
    /// The digest does not match.
    Rejected(&'static str),
}

/// Encodes the HELO the server sends first.
pub fn helo(nonce: &[u8]) -> Vec<u8> {
    encode(&Value::Array(vec![
        Value::from("HELO"),
        Value::Map(vec![
            (Value::from("nonce"), Value::Binary(nonce.to_vec())),
            (Value::from("auth"), Value::Binary(Vec::new())),
            (Value::from("keepalive"), Value::from(true)),
        ]),
    ]))
}

/// `hex(sha512(salt + hostname + nonce + key))`, the digest both sides compute.
pub fn digest(salt: &[u8], hostname: &[u8], nonce: &[u8], key: &str) -> String {
    let mut h = Sha512::new();
    h.update(salt);
    h.update(hostname);
    h.update(nonce);
    h.update(key.as_bytes());
    hex::encode(h.finalize())
}

/// Checks the client's PING against the nonce sent in HELO.
pub fn verify_ping(key: &SharedKey, nonce: &[u8], ping: &Ping) -> PingVerdict {
    let expected = digest(&ping.salt, &ping.hostname, nonce, &key.key);
    if expected.as_bytes() == ping.digest {
        PingVerdict::Accepted
    } else {
        PingVerdict::Rejected("shared key mismatch")
    }
}

/// Encodes the PONG answering `ping` with `verdict`.
pub fn pong(key: &SharedKey, nonce: &[u8], ping: &Ping, verdict: &PingVerdict) -> Vec<u8> {
    let (ok, reason) = match verdict {
        PingVerdict::Accepted => (true, ""),
        PingVerdict::Rejected(reason) => (false, *reason),
    };
    let server_digest = digest(&ping.salt, key.server_hostname.as_bytes(), nonce, &key.key);
    encode(&Value::Array(vec![
        Value::from("PONG"),
        Value::from(ok),
        Value::from(reason),
        Value::from(key.server_hostname.as_str()),
        Value::from(server_digest),
    ]))
}

/// Encodes the ack `{"ack": chunk}` sent once a chunk's entries are durable.
pub fn ack(chunk: &str) -> Vec<u8> {
    encode(&Value::Map(vec![(Value::from("ack"), Value::from(chunk))]))
}

fn encode(v: &Value) -> Vec<u8> {
    let mut buf = Vec::new();
    rmpv::encode::write_value(&mut buf, v).expect("writing to a Vec cannot fail");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SharedKey {
        SharedKey {
            key: "secret".into(),
            server_hostname: "agg".into(),
        }
    }

    #[test]
    fn digest_matches_reference_construction() {
        // The digest is over the plain concatenation salt + hostname + nonce + key.
        let d = digest(b"salt", b"host", b"nonce", "secret");
        let mut h = Sha512::new();
        h.update(b"salthostnoncesecret");
        assert_eq!(d, hex::encode(h.finalize()));
        assert_eq!(d.len(), 128);
    }

    #[test]
    fn ping_verification_and_pong() {
        let nonce = [7u8; 16];
        let good = digest(b"s", b"client", &nonce, "secret");
        let ping = Ping {
            hostname: b"client".to_vec(),
            salt: b"s".to_vec(),
            digest: good.into_bytes(),
        };
        assert_eq!(verify_ping(&key(), &nonce, &ping), PingVerdict::Accepted);
        let bad = Ping {
            digest: b"00".to_vec(),
            ..ping.clone()
        };
        let verdict = verify_ping(&key(), &nonce, &bad);
        assert_eq!(verdict, PingVerdict::Rejected("shared key mismatch"));

        let reply = pong(&key(), &nonce, &ping, &PingVerdict::Accepted);
        let v = rmpv::decode::read_value(&mut reply.as_slice()).unwrap();
        assert_eq!(
            v,
            Value::Array(vec![
                Value::from("PONG"),
                Value::from(true),
                Value::from(""),
                Value::from("agg"),
                Value::from(digest(b"s", b"agg", &nonce, "secret")),
            ])
        );
    }

    #[test]
    fn helo_and_ack_shapes() {
        let v = rmpv::decode::read_value(&mut helo(&[1; 16]).as_slice()).unwrap();
        assert_eq!(v[0], Value::from("HELO"));
        let v = rmpv::decode::read_value(&mut ack("abc").as_slice()).unwrap();
        assert_eq!(
            v,
            Value::Map(vec![(Value::from("ack"), Value::from("abc"))])
        );
    }
}
