//! Cellular modems over ModemManager's D-Bus API
//! (`org.freedesktop.ModemManager1`, zbus): what the owner sees (model,
//! IMEI, SIM, operator, access technology, signal, RSRP/RSRQ/SINR) and the
//! owner's commands (enable, APN, SIM PIN). A PIN is only ever passed to
//! ModemManager, never logged or echoed in a reply, and a PIN the SIM
//! refused is never sent to it again (each wrong try brings a PUK lock nearer).
//!
//! The data connections: [`keeper`] brings each modem's NetworkManager GSM
//! connection ([`connection`]) up and keeps it up, as [`bearer`] decides;
//! [`owner`] keeps the owner's APN and on/off choices.

pub mod bearer;
pub mod connection;
pub mod keeper;
pub mod owner;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use strata_proto::message::{Modem, ModemData, SimState};
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

const SERVICE: &str = "org.freedesktop.ModemManager1";
const ROOT: &str = "/org/freedesktop/ModemManager1";
const MODEM: &str = "org.freedesktop.ModemManager1.Modem";
const MODEM_3GPP: &str = "org.freedesktop.ModemManager1.Modem.Modem3gpp";
const SIGNAL: &str = "org.freedesktop.ModemManager1.Modem.Signal";
const SIM: &str = "org.freedesktop.ModemManager1.Sim";

/// MMModemLock: `MM_MODEM_LOCK_NONE`.
const LOCK_NONE: u32 = 1;
/// MMModemLock: `MM_MODEM_LOCK_SIM_PUK`.
const LOCK_SIM_PUK: u32 = 4;
/// MMModemState: enabled and beyond (enabled, searching, registered, …).
const STATE_ENABLED: i32 = 6;
/// MMModemPortType: network interface.
const PORT_NET: u32 = 2;
/// Seconds between ModemManager's signal refreshes (Signal.Setup).
const SIGNAL_RATE_S: u32 = 10;

type Props = HashMap<String, OwnedValue>;

/// A connection to ModemManager.
#[derive(Debug, Clone)]
pub struct ModemManager {
    conn: zbus::Connection,
    refused: RefusedPins,
}

/// The PINs each SIM refused (in memory only; never logged, never printed).
#[derive(Clone, Default)]
struct RefusedPins(Arc<Mutex<Vec<(String, String)>>>);

impl std::fmt::Debug for RefusedPins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |r| r.len());
        write!(f, "RefusedPins({n})")
    }
}

impl RefusedPins {
    fn contains(&self, sim: &str, pin: &str) -> bool {
        self.0
            .lock()
            .expect("refused PINs")
            .iter()
            .any(|(s, p)| s == sim && p == pin)
    }

    fn add(&self, sim: &str, pin: &str) {
        self.0
            .lock()
            .expect("refused PINs")
            .push((sim.to_string(), pin.to_string()));
    }
}

/// A modem and where it lives on the bus.
#[derive(Debug, Clone)]
pub struct FoundModem {
    /// Object path.
    pub path: OwnedObjectPath,
    /// SIM object path, if a SIM is in.
    pub sim: Option<OwnedObjectPath>,
    /// What the owner sees.
    pub modem: Modem,
    /// `UnlockRequired` (MMModemLock).
    pub lock: u32,
    /// `State` (MMModemState).
    pub state: i32,
    /// `StateFailedReason` (MMModemStateFailedReason).
    pub failed_reason: u32,
    /// Modem3gpp `RegistrationState`, if it is a 3GPP modem.
    pub registration: Option<u32>,
    /// `DeviceIdentifier`: what NetworkManager's `gsm.device-id` binds to.
    pub device_identifier: String,
    /// `PrimaryPort`: NetworkManager's device `Interface` for it.
    pub primary_port: String,
}

impl ModemManager {
    /// Connects to the system bus, or to `address` (a private bus in tests).
    pub async fn connect(address: Option<&str>) -> zbus::Result<ModemManager> {
        Ok(ModemManager {
            conn: bus(address).await?,
            refused: RefusedPins::default(),
        })
    }

    /// Every modem ModemManager knows, sorted by object path.
    pub async fn modems(&self) -> zbus::Result<Vec<FoundModem>> {
        let om = zbus::fdo::ObjectManagerProxy::builder(&self.conn)
            .destination(SERVICE)?
            .path(ROOT)?
            .build()
            .await?;
        let objects = om.get_managed_objects().await?;
        let mut out = Vec::new();
        for (path, ifaces) in objects {
            let Some(m) = ifaces
                .iter()
                .find(|(n, _)| n.as_str() == MODEM)
                .map(|(_, p)| p)
            else {
                continue;
            };
            let gpp = ifaces
                .iter()
                .find(|(n, _)| n.as_str() == MODEM_3GPP)
                .map(|(_, p)| p);
            let signal = ifaces
                .iter()
                .find(|(n, _)| n.as_str() == SIGNAL)
                .map(|(_, p)| p);
            if signal.is_some() {
                // Signal values stay empty until someone asks for a refresh rate.
                let _ = self.call(&path, SIGNAL, "Setup", &(SIGNAL_RATE_S,)).await;
            }
            let sim = get::<OwnedObjectPath>(m, "Sim").filter(|p| p.as_str() != "/");
            let lock = get::<u32>(m, "UnlockRequired").unwrap_or(0);
            let sim_state = match (&sim, get::<u32>(m, "UnlockRequired")) {
                (None, _) => SimState::Missing,
                (Some(_), Some(LOCK_NONE)) => SimState::Ready,
                (Some(_), Some(0) | None) => SimState::Unknown,
                (Some(_), Some(_)) => SimState::Locked,
            };
            let lte = signal.and_then(|s| get::<Props>(s, "Lte"));
            let nr = signal.and_then(|s| get::<Props>(s, "Nr5g"));
            let radio = |k: &str| {
                nr.as_ref()
                    .and_then(|p| get::<f64>(p, k))
                    .or_else(|| lte.as_ref().and_then(|p| get::<f64>(p, k)))
                    .map(|v| v as f32)
            };
            let interface = get::<Vec<(String, u32)>>(m, "Ports")
                .unwrap_or_default()
                .into_iter()
                .find(|(_, t)| *t == PORT_NET)
                .map(|(n, _)| n);
            let equipment = get::<String>(m, "EquipmentIdentifier").unwrap_or_default();
            let imei = gpp
                .and_then(|g| get::<String>(g, "Imei"))
                .unwrap_or_else(|| equipment.clone());
            out.push(FoundModem {
                modem: Modem {
                    id: if equipment.is_empty() {
                        path.as_str()
                            .rsplit('/')
                            .next()
                            .unwrap_or_default()
                            .to_string()
                    } else {
                        equipment
                    },
                    manufacturer: get::<String>(m, "Manufacturer").unwrap_or_default(),
                    model: get::<String>(m, "Model").unwrap_or_default(),
                    imei,
                    sim: sim_state,
                    operator: gpp
                        .and_then(|g| get::<String>(g, "OperatorName"))
                        .filter(|o| !o.is_empty()),
                    access_tech: access_tech(get::<u32>(m, "AccessTechnologies").unwrap_or(0)),
                    signal_percent: get::<(u32, bool)>(m, "SignalQuality")
                        .map_or(0, |(q, _)| q.min(100) as u8),
                    rsrp_dbm: radio("rsrp"),
                    rsrq_db: radio("rsrq"),
                    sinr_db: radio("snr"),
                    enabled: get::<i32>(m, "State").is_some_and(|s| s >= STATE_ENABLED),
                    apn: None,
                    interface,
                    data: ModemData::Unknown,
                },
                lock,
                state: get::<i32>(m, "State").unwrap_or(0),
                failed_reason: get::<u32>(m, "StateFailedReason").unwrap_or(0),
                registration: gpp.and_then(|g| get::<u32>(g, "RegistrationState")),
                device_identifier: get::<String>(m, "DeviceIdentifier").unwrap_or_default(),
                primary_port: get::<String>(m, "PrimaryPort").unwrap_or_default(),
                sim,
                path,
            });
        }
        out.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
        Ok(out)
    }

    async fn find(&self, id: &str) -> Result<FoundModem, String> {
        self.modems()
            .await
            .map_err(|e| format!("ModemManager: {e}"))?
            .into_iter()
            .find(|m| m.modem.id == id)
            .ok_or_else(|| format!("no modem {id:?} on this device"))
    }

    async fn call<B>(
        &self,
        path: &OwnedObjectPath,
        iface: &str,
        method: &str,
        body: &B,
    ) -> zbus::Result<()>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.conn
            .call_method(Some(SERVICE), path.as_str(), Some(iface), method, body)
            .await
            .map(|_| ())
    }

    /// Enables or disables a modem.
    pub async fn set_enabled(&self, id: &str, enabled: bool) -> Result<(), String> {
        let m = self.find(id).await?;
        self.call(&m.path, MODEM, "Enable", &(enabled,))
            .await
            .map_err(|e| format!("ModemManager refused: {}", mm_error(&e)))
    }

    /// Sets a modem's APN: `store` keeps it for the data connection (the one
    /// that carries the stream), then the LTE attach profile gets it too. A
    /// modem without an attach profile (ModemManager refuses) still gets it
    /// for its data connection, so that refusal is only logged.
    pub async fn set_apn(
        &self,
        id: &str,
        apn: &str,
        store: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), String> {
        strata_proto::message::check_apn(apn)?;
        let m = self.find(id).await?;
        store()?;
        let settings: HashMap<&str, Value<'_>> = HashMap::from([("apn", Value::from(apn))]);
        if let Err(e) = self
            .call(
                &m.path,
                MODEM_3GPP,
                "SetInitialEpsBearerSettings",
                &(settings,),
            )
            .await
        {
            tracing::warn!(modem = %id, reason = %mm_error(&e),
                "the modem keeps its LTE attach APN; its data connection uses the new one");
        }
        Ok(())
    }

    /// Unlocks the modem's SIM with a PIN: one try per PIN the owner enters.
    /// A PIN this SIM already refused is not sent again, and nothing is sent
    /// to a PUK-locked SIM, so the agent never uses up the SIM's tries.
    pub async fn unlock_sim(&self, id: &str, pin: &str) -> Result<(), String> {
        strata_proto::message::check_pin(pin)?;
        let m = self.find(id).await?;
        let sim = m.sim.ok_or_else(|| format!("modem {id:?} has no SIM"))?;
        if m.lock == LOCK_SIM_PUK {
            return Err(format!(
                "the SIM in modem {id:?} is PUK-locked: unlock it with its PUK in a phone"
            ));
        }
        if self.refused.contains(sim.as_str(), pin) {
            return Err("the SIM already refused this PIN; not sending it again".into());
        }
        // The error text is ModemManager's own ("wrong PIN"); it never holds the PIN.
        self.call(&sim, SIM, "SendPin", &(pin,)).await.map_err(|e| {
            // Any failure may have cost a try (a timeout too): remember it.
            self.refused.add(sim.as_str(), pin);
            format!("the SIM refused the PIN: {}", mm_error(&e))
        })
    }
}

/// The system bus, or the bus at `address` (a private one in tests).
pub(crate) async fn bus(address: Option<&str>) -> zbus::Result<zbus::Connection> {
    match address {
        Some(a) => zbus::connection::Builder::address(a)?.build().await,
        None => zbus::Connection::system().await,
    }
}

fn get<T>(props: &Props, key: &str) -> Option<T>
where
    T: TryFrom<OwnedValue>,
{
    props
        .get(key)?
        .try_clone()
        .ok()
        .and_then(|v| T::try_from(v).ok())
}

fn mm_error(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, msg, _) => match msg {
            Some(m) => format!("{m} ({})", name.as_str()),
            None => name.as_str().to_string(),
        },
        other => other.to_string(),
    }
}

/// The most capable technology in an MMModemAccessTechnology mask.
fn access_tech(mask: u32) -> String {
    // MMModemAccessTechnology bits, best first.
    const NAMES: [(u32, &str); 7] = [
        (1 << 15, "5gnr"),
        (1 << 14, "lte"),
        (1 << 6 | 1 << 7 | 1 << 8 | 1 << 9, "hspa"),
        (1 << 5, "umts"),
        (1 << 4, "edge"),
        (1 << 3, "gprs"),
        (1 << 1 | 1 << 2, "gsm"),
    ];
    NAMES
        .iter()
        .find(|(bits, _)| mask & bits != 0)
        .map_or("unknown", |(_, n)| n)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_technology_names_the_best() {
        assert_eq!(access_tech(1 << 14 | 1 << 5), "lte");
        assert_eq!(access_tech(1 << 15 | 1 << 14), "5gnr");
        assert_eq!(access_tech(1 << 5), "umts");
        assert_eq!(access_tech(1 << 6), "hspa");
        assert_eq!(access_tech(1 << 10), "unknown"); // 1xRTT is not a 3GPP technology
        assert_eq!(access_tech(0), "unknown");
    }
}
