//! The pre-shared key of a RIST session, kept out of logs and debug output.

use std::fmt;

/// A RIST main-profile passphrase (AES-256 key derived by librist with PBKDF2).
///
/// `Debug` and `Display` never show it; it is only handed to librist.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(String);

/// Why a passphrase was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PskError {
    /// librist copies the passphrase into a 128-byte buffer.
    #[error("PSK must be 8 to 127 bytes, got {0}")]
    Length(usize),
    /// librist treats the passphrase as a C string.
    #[error("PSK must not contain NUL bytes")]
    Nul,
}

impl Psk {
    /// Wraps a passphrase; 8 to 127 bytes, no NUL.
    pub fn new(secret: impl Into<String>) -> Result<Self, PskError> {
        let s = secret.into();
        if !(8..=127).contains(&s.len()) {
            return Err(PskError::Length(s.len()));
        }
        if s.contains('\0') {
            return Err(PskError::Nul);
        }
        Ok(Self(s))
    }

    /// Reads a passphrase from a file (trailing newline removed); the file must
    /// not be readable by group or others (mode 0600 or stricter).
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        ensure_private(path)?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read PSK file {}: {e}", path.display()))?;
        Ok(Self::new(text.trim_end_matches(['\r', '\n']))?)
    }

    /// The passphrase bytes, for librist only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

/// Refuses a secrets file that group or others can read (anything looser than 0600).
pub fn ensure_private(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
        .permissions()
        .mode();
    anyhow::ensure!(
        mode & 0o077 == 0,
        "{} is readable by others (mode {:o}); make it 0600",
        path.display(),
        mode & 0o777
    );
    Ok(())
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_and_validates() {
        let p = Psk::new("correct horse battery").unwrap();
        assert_eq!(format!("{p:?}"), "Psk(<redacted>)");
        assert_eq!(Psk::new("short"), Err(PskError::Length(5)));
        assert_eq!(Psk::new("a".repeat(128)), Err(PskError::Length(128)));
        assert_eq!(Psk::new("abcdefgh\0"), Err(PskError::Nul));
    }

    #[test]
    fn file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("psk");
        std::fs::write(&f, "correct horse battery\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Psk::from_file(&f).unwrap_err().to_string();
        assert!(
            e.contains("readable by others") && !e.contains("horse"),
            "{e}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            Psk::from_file(&f).unwrap(),
            Psk::new("correct horse battery").unwrap()
        );
    }
}
