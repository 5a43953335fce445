//! API key material: generating a key, the hash that is stored, recognising the format.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every key starts with this, so secret scanners (and people) recognise a leaked one.
pub const KEY_PREFIX: &str = "cah_";

/// Random bytes in a key.
const KEY_BYTES: usize = 32;

/// Characters of a key kept in the clear to recognise it by (`cah_` and 8 more).
const SHOWN_CHARS: usize = KEY_PREFIX.len() + 8;

/// A freshly generated key: the secret (shown once) and what is stored about it.
pub struct NewKey {
    /// The whole key, to hand to the client once; never stored.
    pub secret: String,
    /// Its hash, as stored.
    pub hash: String,
    /// Its first characters, as stored.
    pub prefix: String,
}

/// Generates a key from the operating system's random source.
pub fn generate() -> NewKey {
    let mut bytes = [0u8; KEY_BYTES];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    let secret = format!("{KEY_PREFIX}{}", hex::encode(bytes));
    NewKey {
        hash: hash(&secret),
        prefix: secret[..SHOWN_CHARS].to_string(),
        secret,
    }
}

/// A new key id: public, unguessable enough to name a key, unrelated to the secret.
pub fn new_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    format!("key_{}", hex::encode(bytes))
}

/// The stored form of a presented key: SHA-256, lowercase hex. A key carries 256 random bits, so a
/// fast hash is enough (nothing to brute-force), and it lets a key be found by its hash.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether two hashes are equal, in time independent of where they differ.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Whether `text` has the shape of one of our keys (checked before any lookup).
pub fn looks_like_key(text: &str) -> bool {
    text.strip_prefix(KEY_PREFIX)
        .is_some_and(|rest| rest.len() == KEY_BYTES * 2 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_only_their_hash_is_kept() {
        let a = generate();
        let b = generate();
        assert_ne!(a.secret, b.secret);
        assert!(looks_like_key(&a.secret), "{}", a.secret);
        assert!(a.secret.starts_with(&a.prefix) && a.prefix.starts_with(KEY_PREFIX));
        assert_eq!(a.hash, hash(&a.secret));
        assert!(!a.hash.contains(&a.secret[KEY_PREFIX.len()..]));
        assert!(same_hash(&a.hash, &hash(&a.secret)));
        assert!(!same_hash(&a.hash, &b.hash));
        assert!(!looks_like_key("cah_short"));
        assert!(!looks_like_key(&a.secret.replace("cah_", "xyz_")));
        assert_ne!(new_id(), new_id());
    }
}
