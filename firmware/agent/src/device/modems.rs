//! The owner's modem commands, and the device's side of the bearer keeper.

use strata_proto::message::Outcome;

use super::{Device, outcome};
use crate::modems::ModemManager;
use crate::modems::keeper::{DataStates, Keeper};

fn no_modem_manager(modem: &str) -> Outcome {
    Outcome::Failed(format!(
        "no modem {modem:?} on this device (ModemManager is not reachable)"
    ))
}

impl Device {
    /// `SetModemEnabled`: ModemManager's `Enable`, remembered so the bearer
    /// keeper does not dial a modem the owner turned off.
    pub(super) async fn set_modem_enabled(&mut self, modem: &str, enabled: bool) -> Outcome {
        let Some(mm) = self.modem_manager().await else {
            return no_modem_manager(modem);
        };
        if let Err(why) = mm.set_enabled(modem, enabled).await {
            return Outcome::Failed(why);
        }
        let mut choices = self.modem_choices.lock().expect("owner choices");
        outcome(choices.update(modem, |c| c.disabled = !enabled))
    }

    /// `SetApn`: the data connection's APN (the keeper applies it and
    /// re-dials a live bearer), and the modem's LTE attach APN.
    pub(super) async fn set_apn(&mut self, modem: &str, apn: &str) -> Outcome {
        let Some(mm) = self.modem_manager().await else {
            return no_modem_manager(modem);
        };
        let choices = self.modem_choices.clone();
        let store = || {
            let mut c = choices.lock().expect("owner choices");
            c.update(modem, |c| c.apn = Some(apn.to_string()))
        };
        outcome(mm.set_apn(modem, apn, store).await)
    }

    /// `UnlockSim`: one `SendPin` per PIN (see `ModemManager::unlock_sim`).
    pub(super) async fn unlock_sim(&mut self, modem: &str, pin: &str) -> Outcome {
        match self.modem_manager().await {
            Some(mm) => outcome(mm.unlock_sim(modem, pin).await),
            None => no_modem_manager(modem),
        }
    }

    /// The keeper of the modems' data connections, where the agent manages
    /// them: modems enabled and links detected from NetworkManager (with
    /// `[links] include` or in simulation, the interfaces are someone else's).
    pub fn bearer_keeper(&self) -> Option<Keeper> {
        (self.cfg.modems.enabled && self.detects_links()).then(|| {
            Keeper::new(
                self.cfg.modems.bus.clone(),
                self.cfg.links.bus.clone(),
                self.modem_choices.clone(),
                self.modem_data.clone(),
            )
        })
    }

    /// The modems' data states, to wait for a change of.
    pub fn modem_data(&self) -> DataStates {
        self.modem_data.clone()
    }

    /// ModemManager, connected on first use (and retried while it is not there).
    pub(super) async fn modem_manager(&mut self) -> Option<ModemManager> {
        if !self.cfg.modems.enabled {
            return None;
        }
        if self.modem_manager.is_none() {
            match ModemManager::connect(self.cfg.modems.bus.as_deref()).await {
                Ok(mm) => self.modem_manager = Some(mm),
                Err(e) => tracing::debug!(error = %e, "no D-Bus for ModemManager"),
            }
        }
        self.modem_manager.clone()
    }
}
