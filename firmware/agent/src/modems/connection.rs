//! A modem's NetworkManager GSM connection, over NetworkManager's D-Bus API
//! (zbus: `Settings.ListConnections`/`AddConnection`,
//! `Settings.Connection.GetSettings`/`Update`, `ActivateConnection`).
//!
//! The connection is bound to the modem by `gsm.device-id` (ModemManager's
//! `DeviceIdentifier`), carries the owner's APN or `gsm.auto-config`, and
//! is home-only. It never holds a PIN, so NetworkManager never sends one:
//! only the owner's explicit command does (see `ModemManager::unlock_sim`).
//! `autoconnect` is off: the agent's bearer keeper decides when to dial,
//! with its backoff, rather than NetworkManager's own retry counter.

use std::collections::HashMap;

use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use crate::network::{NetworkManager, ROOT, SERVICE};

const SETTINGS_PATH: &str = "/org/freedesktop/NetworkManager/Settings";
const SETTINGS: &str = "org.freedesktop.NetworkManager.Settings";
const CONNECTION: &str = "org.freedesktop.NetworkManager.Settings.Connection";

type Section = HashMap<String, OwnedValue>;
type Settings = HashMap<String, Section>;

/// The GSM connection a modem should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedGsm {
    /// ModemManager's `DeviceIdentifier` of the modem (`gsm.device-id`).
    pub device_id: String,
    /// The connection's name (`connection.id`).
    pub name: String,
    /// The owner's APN; none means `gsm.auto-config`.
    pub apn: Option<String>,
    /// `gsm.home-only`.
    pub home_only: bool,
}

impl WantedGsm {
    fn gsm_section(&self) -> HashMap<&'static str, Value<'_>> {
        let mut gsm = HashMap::from([
            ("device-id", Value::from(self.device_id.as_str())),
            ("home-only", Value::from(self.home_only)),
        ]);
        match &self.apn {
            Some(apn) => gsm.insert("apn", Value::from(apn.as_str())),
            None => gsm.insert("auto-config", Value::from(true)),
        };
        gsm
    }

    /// Whether stored settings already say what is wanted.
    fn matches(&self, s: &Settings) -> bool {
        let gsm = s.get("gsm");
        let str_of = |k: &str| {
            gsm.and_then(|g| g.get(k))
                .and_then(|v| v.try_clone().ok())
                .and_then(|v| String::try_from(v).ok())
                .filter(|a| !a.is_empty())
        };
        let bool_of = |k: &str| {
            gsm.and_then(|g| g.get(k))
                .and_then(|v| bool::try_from(v).ok())
                .unwrap_or(false)
        };
        str_of("apn") == self.apn
            && bool_of("auto-config") == self.apn.is_none()
            && bool_of("home-only") == self.home_only
    }
}

fn string_of(s: &Settings, section: &str, key: &str) -> Option<String> {
    s.get(section)?
        .get(key)?
        .try_clone()
        .ok()
        .and_then(|v| String::try_from(v).ok())
}

/// What `ensure_gsm` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// It was there as wanted.
    Kept(OwnedObjectPath),
    /// It was there and its settings were updated.
    Updated(OwnedObjectPath),
    /// It was added.
    Added(OwnedObjectPath),
}

impl Ensured {
    /// The connection's object path.
    pub fn path(&self) -> &OwnedObjectPath {
        match self {
            Ensured::Kept(p) | Ensured::Updated(p) | Ensured::Added(p) => p,
        }
    }
}

impl NetworkManager {
    async fn settings_of(&self, path: &OwnedObjectPath) -> zbus::Result<Settings> {
        let reply = self
            .conn
            .call_method(
                Some(SERVICE),
                path.as_str(),
                Some(CONNECTION),
                "GetSettings",
                &(),
            )
            .await?;
        reply.body().deserialize()
    }

    /// The stored GSM connection bound to the modem `device_id`, with its settings.
    async fn find_gsm(&self, device_id: &str) -> zbus::Result<Option<(OwnedObjectPath, Settings)>> {
        let reply = self
            .conn
            .call_method(
                Some(SERVICE),
                SETTINGS_PATH,
                Some(SETTINGS),
                "ListConnections",
                &(),
            )
            .await?;
        let paths: Vec<OwnedObjectPath> = reply.body().deserialize()?;
        for path in paths {
            let s = self.settings_of(&path).await?;
            if string_of(&s, "connection", "type").as_deref() == Some("gsm")
                && string_of(&s, "gsm", "device-id").as_deref() == Some(device_id)
            {
                return Ok(Some((path, s)));
            }
        }
        Ok(None)
    }

    /// Makes sure the modem has its GSM connection with the wanted settings.
    pub async fn ensure_gsm(&self, wanted: &WantedGsm) -> zbus::Result<Ensured> {
        let found = self.find_gsm(&wanted.device_id).await?;
        if let Some((path, s)) = &found
            && wanted.matches(s)
        {
            return Ok(Ensured::Kept(path.clone()));
        }
        let uuid = found
            .as_ref()
            .and_then(|(_, s)| string_of(s, "connection", "uuid"))
            .unwrap_or_else(new_uuid);
        let connection = HashMap::from([
            ("id", Value::from(wanted.name.as_str())),
            ("uuid", Value::from(uuid.as_str())),
            ("type", Value::from("gsm")),
            ("autoconnect", Value::from(false)),
        ]);
        let ipv4 = HashMap::from([("method", Value::from("auto"))]);
        let settings: HashMap<&str, HashMap<&str, Value<'_>>> = HashMap::from([
            ("connection", connection),
            ("gsm", wanted.gsm_section()),
            ("ipv4", ipv4),
        ]);
        match found {
            Some((path, _)) => {
                self.conn
                    .call_method(
                        Some(SERVICE),
                        path.as_str(),
                        Some(CONNECTION),
                        "Update",
                        &(settings,),
                    )
                    .await?;
                Ok(Ensured::Updated(path))
            }
            None => {
                let reply = self
                    .conn
                    .call_method(
                        Some(SERVICE),
                        SETTINGS_PATH,
                        Some(SETTINGS),
                        "AddConnection",
                        &(settings,),
                    )
                    .await?;
                Ok(Ensured::Added(reply.body().deserialize()?))
            }
        }
    }

    /// Activates `connection` on `device`; returns the active connection's path.
    pub async fn activate(
        &self,
        connection: &OwnedObjectPath,
        device: &OwnedObjectPath,
    ) -> zbus::Result<OwnedObjectPath> {
        let none = OwnedObjectPath::try_from("/").expect("root path");
        let reply = self
            .conn
            .call_method(
                Some(SERVICE),
                ROOT,
                Some(SERVICE),
                "ActivateConnection",
                &(connection, device, none),
            )
            .await?;
        reply.body().deserialize()
    }
}

/// A random (version 4) UUID for a new connection.
fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4() {
        let u = new_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        assert_ne!(u, new_uuid());
    }
}
