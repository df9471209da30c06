//! Hashes of API keys and SMTP passwords: what `hash-key` prints and what the server checks.
//!
//! API keys are long random tokens, so a SHA-256 digest is enough and cheap on every request. Passwords are
//! low-entropy, so they get argon2id; a verified password is remembered (as a SHA-256 of user and password) so
//! a client that logs in for every message pays the argon2 cost once, not each time.

use std::collections::HashMap;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

/// `sha256:<hex>` of a secret (the form of `http.api_keys`).
pub fn sha256_hash(secret: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

/// An argon2id PHC string of a password (the form of `smtp.users.password_hash`).
pub fn argon2_hash(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| e.to_string())?;
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Compare without an early exit, so timing does not reveal how much of a hash matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Check `secret` against a stored hash (`sha256:<hex>` or an argon2 PHC string).
pub fn verify(secret: &str, stored: &str) -> bool {
    if stored.starts_with("sha256:") {
        return constant_time_eq(sha256_hash(secret).as_bytes(), stored.as_bytes());
    }
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default().verify_password(secret.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// SMTP users with a cache of recently verified credentials.
#[derive(Debug, Default)]
pub struct UserStore {
    users: HashMap<String, String>,
    verified: Mutex<HashMap<String, [u8; 32]>>,
}

impl UserStore {
    /// Users from config: (name, password hash).
    pub fn new(users: impl IntoIterator<Item = (String, String)>) -> Self {
        UserStore { users: users.into_iter().collect(), verified: Mutex::new(HashMap::new()) }
    }

    /// True when at least one user is configured (AUTH is offered).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    fn fingerprint(user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Verify a login; argon2 only on a cache miss. Call from a blocking context (argon2 takes milliseconds).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let Some(stored) = self.users.get(user) else {
            return false;
        };
        let fp = Self::fingerprint(user, password);
        if let Some(cached) = self.verified.lock().get(user) {
            if constant_time_eq(cached, &fp) {
                return true;
            }
        }
        let ok = verify(password, stored);
        if ok {
            let mut cache = self.verified.lock();
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(user.to_string(), fp);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_and_argon2_verify() {
        let h = sha256_hash("key1");
        assert!(h.starts_with("sha256:") && h.len() == 71);
        assert!(verify("key1", &h));
        assert!(!verify("key2", &h));
        let a = argon2_hash("pw").unwrap();
        assert!(verify("pw", &a));
        assert!(!verify("px", &a));
        assert!(!verify("pw", "garbage"));
    }

    #[test]
    fn user_store_caches_successes_only() {
        let store = UserStore::new([("u".to_string(), argon2_hash("pw").unwrap())]);
        assert!(store.verify("u", "pw"));
        assert!(store.verify("u", "pw"));
        assert!(!store.verify("u", "bad"));
        assert!(!store.verify("nobody", "pw"));
    }
}
