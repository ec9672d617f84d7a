//! A group's one secret and the two passwords derived from it.
//!
//! The platform keeps one random secret per group (the provider makes it, the members
//! get it in their environment) and both passwords come from it: the app's (`default`
//! user, in `REDIS_URL`) and the supervisors' (admin user, replication links). Each is
//! SHA-256 over a distinct label and the secret, hex-encoded: knowing the app's password
//! does not give the admin's (a preimage of SHA-256 would be needed), and one secret is
//! all a launcher has to carry.

use sha2::{Digest, Sha256};

/// A fresh group secret: 32 random bytes from the OS-seeded CSPRNG, hex-encoded (256 bits).
pub fn generate() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn derive(secret: &str, label: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"paas-redis ");
    hasher.update(label.as_bytes());
    hasher.update([0u8]);
    hasher.update(secret.as_bytes());
    hex::encode(hasher.finalize())
}

/// The app's password (the `default` user's): 64 hex digits.
pub fn app_password(secret: &str) -> String {
    derive(secret, "app password")
}

/// The supervisors' password (admin user, replication): 64 hex digits.
pub fn admin_password(secret: &str) -> String {
    derive(secret, "admin password")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_distinct_stable_and_secret_dependent() {
        let s = generate();
        assert_eq!(s.len(), 64);
        assert_eq!(app_password(&s), app_password(&s));
        assert_ne!(app_password(&s), admin_password(&s));
        assert_ne!(app_password(&s), app_password(&generate()));
        assert_eq!(app_password(&s).len(), 64);
    }
}
