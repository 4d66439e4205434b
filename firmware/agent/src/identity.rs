//! The device's identity on its data partition: a key generated on first
//! start that never leaves the device, and, once enrolled, the certificate
//! the relay's device CA signed for it.
//!
//! Layout under `<data_dir>/identity/` (directory 0700, files 0600):
//! `device.key` (PKCS#8 PEM), `credentials.json` (device id, certificate
//! chain, CA, broker address, expiry). Files are written to a temporary name
//! and renamed, so a power cut leaves the old or the new file, never half.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use strata_proto::enrollment::DeviceCredentials;

/// The device key and, once enrolled, its credentials.
pub struct Identity {
    dir: PathBuf,
    key: rcgen::KeyPair,
    /// `None` until the owner claimed the device.
    pub credentials: Option<DeviceCredentials>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("dir", &self.dir)
            .field("device_id", &self.device_id())
            .finish_non_exhaustive()
    }
}

const KEY: &str = "device.key";
const CREDENTIALS: &str = "credentials.json";

impl Identity {
    /// Loads the identity from `data_dir`, generating the key on first start.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Identity> {
        let dir = data_dir.join("identity");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        let key_path = dir.join(KEY);
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => {
                let mode = std::fs::metadata(&key_path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    anyhow::bail!(
                        "{} is readable by others (mode {:o}); the device key must be 0600",
                        key_path.display(),
                        mode & 0o777
                    );
                }
                rcgen::KeyPair::from_pem(&pem)
                    .map_err(|e| anyhow::anyhow!("{} is not a key: {e}", key_path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate()?;
                write_private(&key_path, key.serialize_pem().as_bytes())?;
                tracing::info!(path = %key_path.display(), "generated the device key");
                key
            }
            Err(e) => anyhow::bail!("reading {}: {e}", key_path.display()),
        };
        let credentials = match std::fs::read(dir.join(CREDENTIALS)) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(c) => Some(c),
                Err(e) => {
                    // Unreadable credentials mean enrolling again, not a dead device.
                    tracing::error!(error = %e, "stored credentials are unreadable; enrolling again");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => anyhow::bail!("reading credentials: {e}"),
        };
        Ok(Identity {
            dir,
            key,
            credentials,
        })
    }

    /// The device id the relay gave it, once enrolled.
    pub fn device_id(&self) -> Option<&str> {
        self.credentials.as_ref().map(|c| c.device_id.as_str())
    }

    /// A PKCS#10 request for the device key (PEM); the relay sets the subject.
    pub fn csr_pem(&self) -> anyhow::Result<String> {
        Ok(rcgen::CertificateParams::default()
            .serialize_request(&self.key)?
            .pem()?)
    }

    /// The public key as SubjectPublicKeyInfo DER (to match certificates).
    pub fn public_key_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.key)
    }

    /// The private key, PEM (for the TLS client; never logged).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Stores new credentials (enrollment or renewal).
    pub fn store(&mut self, credentials: DeviceCredentials) -> anyhow::Result<()> {
        write_private(
            &self.dir.join(CREDENTIALS),
            &serde_json::to_vec_pretty(&credentials)?,
        )?;
        self.credentials = Some(credentials);
        Ok(())
    }

    /// Replaces the certificate chain after a renewal.
    pub fn renewed(&mut self, chain_pem: String, not_after_ms: u64) -> anyhow::Result<()> {
        let mut c = self
            .credentials
            .clone()
            .ok_or_else(|| anyhow::anyhow!("not enrolled"))?;
        c.certificate_chain_pem = chain_pem;
        c.not_after_ms = not_after_ms;
        self.store(c)
    }

    /// Forgets the credentials (the relay revoked this device); the key stays.
    pub fn forget(&mut self) -> anyhow::Result<()> {
        match std::fs::remove_file(self.dir.join(CREDENTIALS)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.credentials = None;
        Ok(())
    }
}

/// Writes `bytes` to `path` with mode 0600, through a temporary file and a rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| anyhow::anyhow!("renaming to {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::enrollment::BrokerAddress;

    #[test]
    fn key_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join("identity/device.key");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.key_pem(), b.key_pem());
        assert!(a.credentials.is_none());
        assert!(a.csr_pem().unwrap().contains("CERTIFICATE REQUEST"));
        assert!(!format!("{a:?}").contains("PRIVATE"));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("0600"), "{e}");
    }

    #[test]
    fn credentials_survive_a_restart_and_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut id = Identity::load_or_create(dir.path()).unwrap();
        id.store(DeviceCredentials {
            device_id: "dev-1".into(),
            certificate_chain_pem: "chain".into(),
            ca_pem: "ca".into(),
            broker: BrokerAddress {
                host: "127.0.0.1".into(),
                port: 8883,
            },
            not_after_ms: 1,
        })
        .unwrap();
        let mut again = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(again.device_id(), Some("dev-1"));
        again.forget().unwrap();
        assert!(
            Identity::load_or_create(dir.path())
                .unwrap()
                .credentials
                .is_none()
        );

        // Garbage where the credentials were: enroll again, do not die.
        std::fs::write(dir.path().join("identity/credentials.json"), b"{").unwrap();
        assert!(
            Identity::load_or_create(dir.path())
                .unwrap()
                .credentials
                .is_none()
        );
    }
}
