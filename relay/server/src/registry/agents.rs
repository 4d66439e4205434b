//! What the relay knows of each device's agent: the version its last status
//! named, and how its last self-update went (from its events). In memory:
//! a relay restart forgets progress, and the next status brings the version.

use std::collections::HashMap;
use std::sync::Mutex;

/// One device's agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentState {
    /// The agent's version (empty until a status arrives).
    pub version: String,
    /// The last update, if one was started since the relay started.
    pub update: Option<Update>,
}

/// A self-update as the device reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Asked for; no progress yet.
    Requested {
        /// Version asked for.
        version: String,
    },
    /// Downloading.
    Downloading {
        /// Version being installed.
        version: String,
        /// Percent downloaded.
        percent: u8,
    },
    /// The device came back running it.
    Installed {
        /// The new version.
        version: String,
    },
    /// Refused or rolled back; the old version runs.
    Failed {
        /// Version tried.
        version: String,
        /// The device's reason.
        reason: String,
    },
}

impl Update {
    /// One line for the sender page.
    pub fn describe(&self) -> String {
        match self {
            Update::Requested { version } => format!("Update to {version} requested"),
            Update::Downloading { version, percent } => {
                format!("Downloading {version}: {percent} %")
            }
            Update::Installed { version } => format!("Updated to {version}"),
            Update::Failed { version, reason } => {
                format!("Update to {version} failed, the previous version runs: {reason}")
            }
        }
    }

    /// Whether it ended badly.
    pub fn failed(&self) -> bool {
        matches!(self, Update::Failed { .. })
    }

    fn version(&self) -> &str {
        match self {
            Update::Requested { version }
            | Update::Downloading { version, .. }
            | Update::Installed { version }
            | Update::Failed { version, .. } => version,
        }
    }
}

/// Every device's agent.
#[derive(Default)]
pub struct Agents(Mutex<HashMap<String, AgentState>>);

impl Agents {
    /// What is known of one device's agent.
    pub fn get(&self, device: &str) -> AgentState {
        self.0
            .lock()
            .expect("agents")
            .get(device)
            .cloned()
            .unwrap_or_default()
    }

    /// A status named the running version: an update to it is done.
    pub fn running(&self, device: &str, version: &str) {
        let mut map = self.0.lock().expect("agents");
        let a = map.entry(device.to_string()).or_default();
        a.version = version.to_string();
        if let Some(u) = &a.update
            && !u.failed()
            && u.version() == version
        {
            a.update = Some(Update::Installed {
                version: version.into(),
            });
        }
    }

    /// Records the update's new state.
    pub fn update(&self, device: &str, update: Update) {
        self.0
            .lock()
            .expect("agents")
            .entry(device.to_string())
            .or_default()
            .update = Some(update);
    }

    /// Forgets a device (revoked).
    pub fn forget(&self, device: &str) {
        self.0.lock().expect("agents").remove(device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_with_the_new_version_completes_the_update() {
        let a = Agents::default();
        a.running("d", "0.1.0");
        a.update(
            "d",
            Update::Downloading {
                version: "0.2.0".into(),
                percent: 50,
            },
        );
        a.running("d", "0.1.0");
        assert!(matches!(
            a.get("d").update,
            Some(Update::Downloading { .. })
        ));
        a.running("d", "0.2.0");
        assert_eq!(
            a.get("d").update,
            Some(Update::Installed {
                version: "0.2.0".into()
            })
        );
        a.update(
            "d",
            Update::Failed {
                version: "0.3.0".into(),
                reason: "bad signature".into(),
            },
        );
        assert!(
            a.get("d")
                .update
                .unwrap()
                .describe()
                .contains("bad signature")
        );
    }
}
