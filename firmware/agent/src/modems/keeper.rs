//! The bearer keeper: every second, reads each modem from ModemManager and
//! its device from NetworkManager, lets [`bearer`](super::bearer) decide,
//! and does what it says (make sure the GSM connection exists with the
//! owner's APN, activate it). Each modem's [`ModemData`] goes into
//! [`DataStates`] for the inventory. The link that comes up is not handled
//! here: NetworkManager reports it as an activated device with an address,
//! and the inventory's link detection (`network.rs`, `Stream::set_interfaces`)
//! puts it into the bond and takes it out again, as for any other link.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_proto::message::ModemData;

use super::bearer::{self, Bearer, Facts, Registration, Sim};
use super::connection::{Ensured, WantedGsm};
use super::owner::OwnerChoices;
use super::{FoundModem, ModemManager};
use crate::network::{NetworkManager, NmDevice, TYPE_MODEM};

/// How often the keeper looks.
pub const EVERY: Duration = Duration::from_secs(1);

/// Each modem's data state, by modem id, as the keeper last decided it,
/// and a wake-up for whoever reads links when one changes (a bearer that
/// came up should join the bond now, not at the next 10 s inventory).
#[derive(Debug, Default)]
pub struct ModemDataStates {
    by_modem: Mutex<HashMap<String, ModemData>>,
    changed: tokio::sync::Notify,
}

/// Shared between the keeper and the device.
pub type DataStates = Arc<ModemDataStates>;

impl ModemDataStates {
    /// One modem's state, if the keeper has seen it.
    pub fn get(&self, modem: &str) -> Option<ModemData> {
        self.by_modem
            .lock()
            .expect("modem data states")
            .get(modem)
            .copied()
    }

    fn replace(&self, states: HashMap<String, ModemData>) {
        let mut by_modem = self.by_modem.lock().expect("modem data states");
        if *by_modem != states {
            *by_modem = states;
            self.changed.notify_one();
        }
    }

    /// Resolves when a modem's data state changed.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// Brings modem data connections up and keeps them up.
pub struct Keeper {
    mm_bus: Option<String>,
    nm_bus: Option<String>,
    mm: Option<ModemManager>,
    nm: Option<NetworkManager>,
    choices: Arc<Mutex<OwnerChoices>>,
    states: DataStates,
    bearers: HashMap<String, Bearer>,
    /// The settings each modem's connection was last activated with.
    applied: HashMap<String, WantedGsm>,
}

impl Keeper {
    /// A keeper for the modems on `mm_bus` and NetworkManager on `nm_bus`
    /// (absent: the system bus).
    pub fn new(
        mm_bus: Option<String>,
        nm_bus: Option<String>,
        choices: Arc<Mutex<OwnerChoices>>,
        states: DataStates,
    ) -> Keeper {
        Keeper {
            mm_bus,
            nm_bus,
            mm: None,
            nm: None,
            choices,
            states,
            bearers: HashMap::new(),
            applied: HashMap::new(),
        }
    }

    /// Runs forever (spawn it).
    pub async fn run(mut self) {
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.step(Instant::now()).await;
        }
    }

    /// One look at every modem.
    pub async fn step(&mut self, now: Instant) {
        if self.mm.is_none() {
            self.mm = ModemManager::connect(self.mm_bus.as_deref()).await.ok();
        }
        if self.nm.is_none() {
            self.nm = NetworkManager::connect(self.nm_bus.as_deref()).await.ok();
        }
        let (Some(mm), Some(nm)) = (self.mm.clone(), self.nm.clone()) else {
            return;
        };
        let modems = match mm.modems().await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "ModemManager did not answer");
                return;
            }
        };
        let devices = match nm.devices().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "NetworkManager did not answer");
                return;
            }
        };
        // Unplugged modems are forgotten: plugged in again, they start afresh.
        self.bearers
            .retain(|id, _| modems.iter().any(|m| m.modem.id == *id));
        self.applied
            .retain(|id, _| modems.iter().any(|m| m.modem.id == *id));
        let mut states = HashMap::new();
        for m in &modems {
            let data = self.keep(now, &nm, m, &devices).await;
            states.insert(m.modem.id.clone(), data);
        }
        self.states.replace(states);
    }

    async fn keep(
        &mut self,
        now: Instant,
        nm: &NetworkManager,
        m: &FoundModem,
        devices: &[NmDevice],
    ) -> ModemData {
        let id = &m.modem.id;
        let choice = self.choices.lock().expect("owner choices").get(id);
        let wanted = WantedGsm {
            device_id: m.device_identifier.clone(),
            name: format!("Strata modem {id}"),
            apn: choice.apn.clone(),
            // Roaming is not a setting yet: home networks only.
            home_only: true,
        };
        let device = modem_device(m, devices);
        let facts = Facts {
            sim: Sim::from_mm(m.sim.is_some(), m.lock, m.state, m.failed_reason),
            owner_disabled: choice.disabled,
            registration: Registration::from_mm(m.state, m.registration),
            roaming_allowed: !wanted.home_only,
            device: device.map_or(bearer::Device::Absent, |d| {
                bearer::Device::from_nm(d.state, d.state_reason, d.has_ipv4)
            }),
            settings_changed: self.applied.get(id).is_some_and(|a| *a != wanted),
        };
        let b = self.bearers.entry(id.clone()).or_default();
        let before = self.states.get(id).unwrap_or(ModemData::Unknown);
        let plan = b.step(now, &facts);
        if plan.data != before {
            match plan.data {
                ModemData::BearerFailed { nm_reason } => tracing::warn!(
                    modem = %id, nm_reason, reason = bearer::nm_reason_name(nm_reason),
                    retry_in_s = b.retry_in(now).map_or(0, |d| d.as_secs()), "modem data bearer down"
                ),
                data => tracing::info!(modem = %id, ?data, "modem data state"),
            }
        }
        if !plan.activate {
            return plan.data;
        }
        let Some(device) = device else {
            return plan.data;
        };
        if m.device_identifier.is_empty() {
            tracing::warn!(modem = %id, "ModemManager gives no DeviceIdentifier; cannot bind a connection to it");
            b.activation_refused(now, 0);
            return plan.data;
        }
        let activated = async {
            let ensured = nm.ensure_gsm(&wanted).await?;
            if !matches!(ensured, Ensured::Kept(_)) {
                tracing::info!(modem = %id, apn = ?wanted.apn, "modem GSM connection stored");
            }
            nm.activate(ensured.path(), &device.path).await
        }
        .await;
        match activated {
            Ok(_) => {
                tracing::info!(modem = %id, "modem data connection activating");
                self.applied.insert(id.clone(), wanted);
            }
            Err(e) => {
                tracing::warn!(modem = %id, error = %e, "NetworkManager refused to activate the modem's connection");
                b.activation_refused(now, device.state_reason);
            }
        }
        plan.data
    }
}

/// The modem's NetworkManager device: its `Udi` is ModemManager's object
/// path of the modem, else its `Interface` is the modem's primary port.
fn modem_device<'a>(m: &FoundModem, devices: &'a [NmDevice]) -> Option<&'a NmDevice> {
    devices
        .iter()
        .filter(|d| d.device_type == TYPE_MODEM)
        .find(|d| {
            d.udi == m.path.as_str()
                || (!m.primary_port.is_empty() && d.interface == m.primary_port)
        })
}
