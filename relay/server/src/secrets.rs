//! Secrets at rest (stream keys, SRT passphrases): XChaCha20-Poly1305 under
//! the data directory's `secrets.key`, bound to the row they belong to.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Encrypts and decrypts secrets stored in the database.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

/// A stored secret could not be decrypted: wrong key or tampered row.
#[derive(Debug, thiserror::Error)]
#[error("stored secret cannot be decrypted (secrets.key changed or the row was altered)")]
pub struct DecryptError;

impl SecretBox {
    /// A box keyed with 32 bytes.
    pub fn new(key: &[u8; 32]) -> SecretBox {
        SecretBox {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Encrypts `plain`, bound to `context` (the row id), as base64 of nonce || ciphertext.
    pub fn seal(&self, context: &str, plain: &str) -> String {
        let nonce_bytes: [u8; 24] = rand::random();
        let nonce = XNonce::from_slice(&nonce_bytes);
        let ct = self
            .cipher
            .encrypt(
                nonce,
                Payload {
                    msg: plain.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory input");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&ct);
        B64.encode(out)
    }

    /// Decrypts what [`SecretBox::seal`] produced for the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<String, DecryptError> {
        let raw = B64.decode(sealed).map_err(|_| DecryptError)?;
        if raw.len() < 24 {
            return Err(DecryptError);
        }
        let (nonce, ct) = raw.split_at(24);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| DecryptError)?;
        String::from_utf8(plain).map_err(|_| DecryptError)
    }
}

/// The masked form of a secret shown after it was entered: its last 4
/// characters when it is long enough that they give little away.
pub fn hint(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() >= 12 {
        chars[chars.len() - 4..].iter().collect()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let b = SecretBox::new(&[7; 32]);
        let s = b.seal("row-1", "live_abcdef123456");
        assert!(!s.contains("abcdef"));
        assert_eq!(b.open("row-1", &s).unwrap(), "live_abcdef123456");
        assert!(
            b.open("row-2", &s).is_err(),
            "a secret moved to another row does not open"
        );
        assert!(SecretBox::new(&[8; 32]).open("row-1", &s).is_err());
        assert!(b.open("row-1", "!!").is_err());
        assert!(b.open("row-1", "AAAA").is_err());
    }

    #[test]
    fn hints() {
        assert_eq!(hint("live_abcdef123456"), "3456");
        assert_eq!(hint("short"), "");
    }
}
