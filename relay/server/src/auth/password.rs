//! Password hashing: argon2id with the crate's default (OWASP) parameters.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Hashes a password into a PHC string.
pub fn hash_password(password: &str) -> String {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters")
        .to_string()
}

/// Checks a password against a stored PHC string. A malformed hash is a mismatch.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// The rule new passwords follow: 10 to 1024 characters.
pub fn check_password_strength(password: &str) -> Result<(), &'static str> {
    let n = password.chars().count();
    if n < 10 {
        Err("a password needs at least 10 characters")
    } else if n > 1024 {
        Err("a password has at most 1024 characters")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse battery");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("wrong horse battery", &h));
        assert!(!verify_password("x", "not a hash"));
        assert_ne!(h, hash_password("correct horse battery"), "salted");
    }

    #[test]
    fn strength() {
        assert!(check_password_strength("short").is_err());
        assert!(check_password_strength("long enough!").is_ok());
    }
}
