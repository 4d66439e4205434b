//! The relay's data directory: created on first start with everything a
//! secure service needs and nothing the operator has to make by hand.
//!
//! ```text
//! <data_dir>/            0700
//!   strata.db            SQLite database (when no database URL is configured)
//!   session.key          32 random bytes: keys the CSRF tokens
//!   secrets.key          32 random bytes: encrypts stream keys at rest
//!   tls/cert.pem         self-signed certificate (localhost, 127.0.0.1, ::1 and
//!                        the public URL's host, which devices enroll at)
//!   tls/key.pem          its private key
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The keys and paths read from (or created in) a data directory.
pub struct DataDir {
    /// The directory itself.
    pub path: PathBuf,
    /// Keys the CSRF tokens.
    pub session_key: [u8; 32],
    /// Encrypts secrets at rest.
    pub secrets_key: [u8; 32],
    /// Self-signed certificate (PEM).
    pub tls_cert: PathBuf,
    /// Its private key (PEM).
    pub tls_key: PathBuf,
}

impl DataDir {
    /// Opens the directory, creating it and any missing key or certificate;
    /// a new self-signed certificate also names `host` (the public URL's).
    pub fn open_or_create(path: &Path, host: &str) -> anyhow::Result<DataDir> {
        if !path.exists() {
            fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
            tracing::info!(dir = %path.display(), "created data directory");
        }
        let session_key = key_file(&path.join("session.key"))?;
        let secrets_key = key_file(&path.join("secrets.key"))?;
        let tls_dir = path.join("tls");
        let tls_cert = tls_dir.join("cert.pem");
        let tls_key = tls_dir.join("key.pem");
        if !tls_cert.exists() || !tls_key.exists() {
            fs::create_dir_all(&tls_dir)?;
            fs::set_permissions(&tls_dir, fs::Permissions::from_mode(0o700))?;
            let mut names = vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ];
            if !names.iter().any(|n| n == host) {
                names.push(host.to_string());
            }
            let cert =
                rcgen::generate_simple_self_signed(names).context("generating TLS certificate")?;
            write_private(&tls_key, cert.signing_key.serialize_pem().as_bytes())?;
            fs::write(&tls_cert, cert.cert.pem())?;
            tracing::info!(cert = %tls_cert.display(), "created self-signed TLS certificate");
        }
        Ok(DataDir {
            path: path.to_path_buf(),
            session_key,
            secrets_key,
            tls_cert,
            tls_key,
        })
    }
}

/// Reads a 32-byte key, or creates one with mode 0600. A key others can
/// read is refused: it would let them forge CSRF tokens or read stream keys.
fn key_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    if path.exists() {
        let mode = fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "{} is readable by others (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            );
        }
        let bytes = fs::read(path)?;
        return bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()));
    }
    let key: [u8; 32] = rand::random();
    write_private(path, &key)?;
    Ok(key)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_and_reuses() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let a = DataDir::open_or_create(&dir, "localhost").unwrap();
        let b = DataDir::open_or_create(&dir, "localhost").unwrap();
        assert_eq!(a.session_key, b.session_key);
        assert_eq!(a.secrets_key, b.secrets_key);
        assert_ne!(a.session_key, a.secrets_key);
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for f in ["session.key", "secrets.key", "tls/key.pem"] {
            assert_eq!(
                fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777,
                0o600,
                "{f}"
            );
        }
        assert!(
            fs::read_to_string(&a.tls_cert)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
    }

    #[test]
    fn the_certificate_names_the_public_host() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open_or_create(tmp.path(), "relay.example.net").unwrap();
        let pem = fs::read(&dir.tls_cert).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert!(
            names.iter().any(|n| n.contains("relay.example.net")),
            "{names:?}"
        );
        assert!(names.iter().any(|n| n.contains("localhost")), "{names:?}");
    }

    #[test]
    fn refuses_a_readable_key() {
        let tmp = tempfile::tempdir().unwrap();
        DataDir::open_or_create(tmp.path(), "localhost").unwrap();
        fs::set_permissions(
            tmp.path().join("secrets.key"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = DataDir::open_or_create(tmp.path(), "localhost")
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("readable by others"), "{err}");
    }
}
