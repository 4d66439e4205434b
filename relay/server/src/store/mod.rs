//! Every database query. Each function that reads or writes tenant data
//! takes the organization id and puts it in the `WHERE` clause, so a handler
//! cannot reach another organization's rows by guessing an id.

pub mod accounts;
pub mod destinations;
pub mod devices;
pub mod enrollments;
pub mod senders;
pub mod sessions;
pub mod streams;
pub mod tokens;

use sha2::{Digest, Sha256};

/// SHA-256 of a high-entropy bearer secret (session or API token), hex.
/// A plain hash is enough: the secret is 32 random bytes, not a password.
pub fn token_hash(secret: &str) -> String {
    crate::hex_lower(&Sha256::digest(secret.as_bytes()))
}

/// A new bearer secret: 32 random bytes, base64url without padding, with a prefix
/// that says what it is (secret scanners key on such prefixes).
pub fn new_secret(prefix: &str) -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}
