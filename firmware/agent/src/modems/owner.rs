//! What the owner chose for each modem on the dashboard (the APN of its data
//! connection, whether it is turned off), kept in `<data_dir>/modems.json`
//! so the data connections come up the same way after a reboot. No secret
//! is kept here: a SIM PIN is never stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One modem's choices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModemChoice {
    /// APN of the data connection; none means NetworkManager picks it for
    /// the SIM's operator (mobile-broadband-provider-info).
    #[serde(default)]
    pub apn: Option<String>,
    /// Turned off by the owner: no data connection is brought up.
    #[serde(default)]
    pub disabled: bool,
}

/// Every modem's choices, by modem id.
#[derive(Debug)]
pub struct OwnerChoices {
    path: PathBuf,
    modems: BTreeMap<String, ModemChoice>,
}

impl OwnerChoices {
    /// Loads the choices, or none if nothing was stored or the file is unreadable.
    pub fn load(data_dir: &Path) -> OwnerChoices {
        let path = data_dir.join("modems.json");
        let modems = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "stored modem choices unreadable; using defaults");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        OwnerChoices { path, modems }
    }

    /// One modem's choices (the defaults if the owner chose nothing).
    pub fn get(&self, modem: &str) -> ModemChoice {
        self.modems.get(modem).cloned().unwrap_or_default()
    }

    /// Changes and stores one modem's choices.
    pub fn update(
        &mut self,
        modem: &str,
        change: impl FnOnce(&mut ModemChoice),
    ) -> Result<(), String> {
        let mut next = self.modems.clone();
        change(next.entry(modem.to_string()).or_default());
        let bytes = serde_json::to_vec_pretty(&next).map_err(|e| e.to_string())?;
        crate::identity::write_private(&self.path, &bytes)
            .map_err(|e| format!("cannot store the modem settings: {e:#}"))?;
        self.modems = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = OwnerChoices::load(dir.path());
        assert_eq!(c.get("m0"), ModemChoice::default());
        c.update("m0", |m| m.apn = Some("internet".into())).unwrap();
        c.update("m0", |m| m.disabled = true).unwrap();
        let again = OwnerChoices::load(dir.path());
        assert_eq!(
            again.get("m0"),
            ModemChoice {
                apn: Some("internet".into()),
                disabled: true
            }
        );
        assert_eq!(again.get("m1"), ModemChoice::default());
    }
}
