//! Encoder settings the relay pushed, kept in `<data_dir>/settings.json` and
//! reapplied at boot.

use std::path::{Path, PathBuf};

use strata_proto::message::EncoderSettings;

/// The stored settings.
#[derive(Debug)]
pub struct StoredSettings {
    path: PathBuf,
    /// Current settings.
    pub current: EncoderSettings,
}

impl StoredSettings {
    /// Loads the settings, or the defaults if none were stored or the file is unreadable.
    pub fn load(data_dir: &Path) -> StoredSettings {
        let path = data_dir.join("settings.json");
        let current = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<EncoderSettings>(&b).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "stored settings unreadable; using defaults");
                EncoderSettings::default()
            }),
            Err(_) => EncoderSettings::default(),
        };
        StoredSettings { path, current }
    }

    /// Replaces and stores the settings (already checked).
    pub fn store(&mut self, s: EncoderSettings) -> anyhow::Result<()> {
        crate::identity::write_private(&self.path, &serde_json::to_vec_pretty(&s)?)?;
        self.current = s;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::message::Codec;

    #[test]
    fn settings_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StoredSettings::load(dir.path());
        assert_eq!(s.current, EncoderSettings::default());
        let new = EncoderSettings {
            height: 1080,
            codec: Codec::H265,
            ..EncoderSettings::default()
        };
        s.store(new.clone()).unwrap();
        assert_eq!(StoredSettings::load(dir.path()).current, new);
        std::fs::write(dir.path().join("settings.json"), b"garbage").unwrap();
        assert_eq!(
            StoredSettings::load(dir.path()).current,
            EncoderSettings::default()
        );
    }
}
