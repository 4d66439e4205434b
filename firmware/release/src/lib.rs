//! Signed agent releases.
//!
//! A release is one `strata-agent` binary for one target. The vendor signs,
//! with an ed25519 key kept offline, a short statement naming the version,
//! the target triple and the binary's SHA-256 ([`statement`]); the relay
//! only stores and serves what it was given; the agent checks the signature
//! against the public key it was built with, for its *own* target, and the
//! download against the SHA-256. Binding version and target into what is
//! signed means a signed binary cannot be relabelled as another version or
//! offered to another architecture.
//!
//! Hand-written here, and why: only the statement format (ours); ed25519
//! and SHA-256 are ring's, already in the dependency tree through rustls.

use std::io::Read;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Why a release was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReleaseError {
    /// The signature is not hex of 64 bytes, or does not verify.
    #[error("the release signature does not verify with this agent's release key")]
    BadSignature,
    /// The public key is not hex of 32 bytes.
    #[error("the release public key is not 64 hex digits")]
    BadKey,
    /// The version is empty, too long, or has characters other than `[0-9A-Za-z.+-]`.
    #[error("release version {0:?} is not a version")]
    BadVersion(String),
}

/// The target triple this crate was built for, as releases name it.
pub const TARGET: &str = env!("STRATA_TARGET");

/// Whether a version string is acceptable: 1–64 of `[0-9A-Za-z.+-]`,
/// starting with a letter or digit (so never `.`, `..` or a hidden name).
pub fn valid_version(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.as_bytes()[0].is_ascii_alphanumeric()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

/// Orders versions as releases are numbered: numeric parts compared as
/// numbers (0.10.0 comes after 0.9.1), the rest as text.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |v: &str| -> Vec<(u64, String)> {
        v.split(['.', '-', '+'])
            .map(|p| (p.parse().unwrap_or(0), p.to_string()))
            .collect()
    };
    key(a).cmp(&key(b))
}

/// The bytes a release signature covers.
pub fn statement(version: &str, target: &str, sha256_hex: &str) -> Vec<u8> {
    format!("strata-agent release v1\nversion {version}\ntarget {target}\nsha256 {sha256_hex}\n")
        .into_bytes()
}

/// Checks a release signature (hex) against a public key (hex).
pub fn verify(
    public_key_hex: &str,
    version: &str,
    target: &str,
    sha256_hex: &str,
    signature_hex: &str,
) -> Result<(), ReleaseError> {
    if !valid_version(version) {
        return Err(ReleaseError::BadVersion(version.into()));
    }
    let key = unhex(public_key_hex.trim())
        .filter(|k| k.len() == 32)
        .ok_or(ReleaseError::BadKey)?;
    let sig = unhex(signature_hex.trim())
        .filter(|s| s.len() == 64)
        .ok_or(ReleaseError::BadSignature)?;
    UnparsedPublicKey::new(&ED25519, key)
        .verify(
            &statement(version, target, &sha256_hex.to_ascii_lowercase()),
            &sig,
        )
        .map_err(|_| ReleaseError::BadSignature)
}

/// A release signing key (PKCS#8, as ring makes it).
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// A new random key and its PKCS#8 bytes (to store, 0600).
    pub fn generate() -> anyhow::Result<(SigningKey, Vec<u8>)> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("generating an ed25519 key failed"))?;
        let bytes = pkcs8.as_ref().to_vec();
        Ok((SigningKey::from_pkcs8(&bytes)?, bytes))
    }

    /// Reads a key from its PKCS#8 bytes.
    pub fn from_pkcs8(bytes: &[u8]) -> anyhow::Result<SigningKey> {
        Ed25519KeyPair::from_pkcs8(bytes)
            .map(SigningKey)
            .map_err(|e| anyhow::anyhow!("not an ed25519 PKCS#8 key: {e}"))
    }

    /// The public half, hex (what the agent is built with).
    pub fn public_hex(&self) -> String {
        hex(self.0.public_key().as_ref())
    }

    /// Signs a release; the signature as hex.
    pub fn sign(&self, version: &str, target: &str, sha256_hex: &str) -> anyhow::Result<String> {
        anyhow::ensure!(valid_version(version), "{version:?} is not a version");
        Ok(hex(self
            .0
            .sign(&statement(
                version,
                target,
                &sha256_hex.to_ascii_lowercase(),
            ))
            .as_ref()))
    }
}

/// SHA-256 of everything `r` yields, hex, and its length.
pub fn sha256_hex(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut ctx = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx.finish())
}

/// An incremental SHA-256 (for downloads hashed as they arrive).
pub struct Sha256 {
    ctx: ring::digest::Context,
    len: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    /// A fresh hash.
    pub fn new() -> Sha256 {
        Sha256 {
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            len: 0,
        }
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.ctx.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was hashed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest (hex) and the number of bytes hashed.
    pub fn finish(self) -> (String, u64) {
        (hex(self.ctx.finish().as_ref()), self.len)
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_binds_version_target_and_digest() {
        let (key, pkcs8) = SigningKey::generate().unwrap();
        let pk = key.public_hex();
        let (digest, len) = sha256_hex(&b"binary"[..]).unwrap();
        assert_eq!(len, 6);
        let sig = key
            .sign("0.2.0", "aarch64-unknown-linux-gnu", &digest)
            .unwrap();
        assert_eq!(
            verify(&pk, "0.2.0", "aarch64-unknown-linux-gnu", &digest, &sig),
            Ok(())
        );
        for (v, t, d) in [
            ("0.2.1", "aarch64-unknown-linux-gnu", digest.as_str()),
            ("0.2.0", "x86_64-unknown-linux-gnu", digest.as_str()),
            ("0.2.0", "aarch64-unknown-linux-gnu", &"0".repeat(64)),
        ] {
            assert_eq!(
                verify(&pk, v, t, d, &sig),
                Err(ReleaseError::BadSignature),
                "{v} {t}"
            );
        }
        let (other, _) = SigningKey::generate().unwrap();
        assert_eq!(
            verify(
                &other.public_hex(),
                "0.2.0",
                "aarch64-unknown-linux-gnu",
                &digest,
                &sig
            ),
            Err(ReleaseError::BadSignature)
        );
        assert_eq!(
            verify(&pk, "0.2.0", "aarch64-unknown-linux-gnu", &digest, "zz"),
            Err(ReleaseError::BadSignature)
        );
        assert_eq!(
            verify("abc", "0.2.0", "t", &digest, &sig),
            Err(ReleaseError::BadKey)
        );
        for bad in ["0.2.0; rm -rf /", ".", "..", ".hidden", ""] {
            assert!(
                matches!(
                    verify(&pk, bad, "t", &digest, &sig),
                    Err(ReleaseError::BadVersion(_))
                ),
                "{bad:?}"
            );
        }
        // The stored key signs the same.
        let again = SigningKey::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(again.public_hex(), pk);
        assert!(SigningKey::from_pkcs8(b"garbage").is_err());
    }

    #[test]
    fn digest_is_sha256() {
        let (d, _) = sha256_hex(&b"abc"[..]).unwrap();
        assert_eq!(
            d,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
