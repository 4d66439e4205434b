//! What to do about one modem's data bearer, decided from what ModemManager
//! and NetworkManager say (no D-Bus here: `keeper.rs` does the I/O). The
//! answer is the modem's [`ModemData`] (why it does or does not carry data)
//! and whether to (re)activate its NetworkManager connection now.
//!
//! A bearer that fails or drops is retried after a backoff that doubles
//! from [`BACKOFF_MIN`] to [`BACKOFF_MAX`]; it goes back to the minimum
//! only once a bearer has stayed up for [`STABLE`], so a modem that
//! connects and drops at once is not re-dialled in a tight loop.

use std::time::{Duration, Instant};

use strata_proto::message::ModemData;

/// First retry delay after a failed or dropped bearer.
pub const BACKOFF_MIN: Duration = Duration::from_secs(2);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Up this long, a bearer counts as healthy again (backoff back to the minimum).
pub const STABLE: Duration = Duration::from_secs(30);
/// After asking NetworkManager to activate, how long its device may stay
/// down before the attempt counts as failed (it goes to "prepare" within
/// moments; this only catches an activation that silently did nothing).
pub const ACTIVATION_GRACE: Duration = Duration::from_secs(10);

/// The SIM as ModemManager reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sim {
    /// No SIM object, or the modem failed with "SIM missing".
    Missing,
    /// `MM_MODEM_LOCK_SIM_PIN`.
    PinRequired,
    /// `MM_MODEM_LOCK_SIM_PUK`.
    PukLocked,
    /// A network/operator personalisation lock.
    OtherLock,
    /// Unlocked (or only PIN2/PUK2, which do not block data).
    Ready,
}

impl Sim {
    /// From the Modem interface: is there a SIM, `UnlockRequired`, `State`, `StateFailedReason`.
    pub fn from_mm(present: bool, lock: u32, state: i32, failed_reason: u32) -> Sim {
        // MMModemStateFailedReason: 2 = SIM missing, 3 = SIM error.
        if !present || (state == MM_STATE_FAILED && matches!(failed_reason, 2 | 3)) {
            return Sim::Missing;
        }
        // MMModemLock: 0 unknown, 1 none, 2 SIM PIN, 3 SIM PIN2, 4 SIM PUK, 5 SIM PUK2, 6.. PH-*.
        match lock {
            2 => Sim::PinRequired,
            4 => Sim::PukLocked,
            0 | 1 | 3 | 5 => Sim::Ready,
            _ => Sim::OtherLock,
        }
    }
}

/// `MM_MODEM_STATE_FAILED`.
const MM_STATE_FAILED: i32 = -1;
/// `MM_MODEM_STATE_ENABLED`: below it the modem is not registering yet.
const MM_STATE_ENABLED: i32 = 6;
/// `MM_MODEM_STATE_REGISTERED`.
const MM_STATE_REGISTERED: i32 = 8;

/// Where the modem is on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// Not enabled yet: activating the connection enables and registers it.
    NotYet,
    /// On its home network.
    Home,
    /// On a visited network.
    Roaming,
    /// Searching, idle, no signal.
    Searching,
    /// The network refused it.
    Denied,
}

impl Registration {
    /// From the Modem `State` and the Modem3gpp `RegistrationState` (if any).
    pub fn from_mm(state: i32, registration: Option<u32>) -> Registration {
        if state < MM_STATE_ENABLED {
            return Registration::NotYet;
        }
        // MMModem3gppRegistrationState.
        match registration {
            Some(1 | 6 | 9) => Registration::Home,
            Some(5 | 7 | 10) => Registration::Roaming,
            Some(3) => Registration::Denied,
            Some(_) => Registration::Searching,
            // Not a 3GPP modem: ModemManager's own state says whether it registered.
            None if state >= MM_STATE_REGISTERED => Registration::Home,
            None => Registration::Searching,
        }
    }
}

/// The modem's NetworkManager device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// NetworkManager has no device for it (yet).
    Absent,
    /// Not connected; `reason` is its `StateReason`.
    Down {
        /// `NMDeviceStateReason`.
        reason: u32,
    },
    /// Activating (prepare … secondaries), or activated without an IPv4 address yet.
    Activating,
    /// Activated with an IPv4 address.
    Up,
}

impl Device {
    /// From the Device's `State`, `StateReason` and whether its IPv4 config has an address.
    pub fn from_nm(state: u32, reason: u32, has_ipv4: bool) -> Device {
        // NMDeviceState: 40..=90 activating, 100 activated.
        match state {
            100 if has_ipv4 => Device::Up,
            40..=100 => Device::Activating,
            _ => Device::Down { reason },
        }
    }
}

/// Everything the decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The SIM.
    pub sim: Sim,
    /// The owner turned the modem off.
    pub owner_disabled: bool,
    /// Registration.
    pub registration: Registration,
    /// The owner allowed roaming.
    pub roaming_allowed: bool,
    /// NetworkManager's device.
    pub device: Device,
    /// The owner changed the connection's settings (APN) since it was last activated.
    pub settings_changed: bool,
}

/// What the keeper is to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The modem's data state, as reported.
    pub data: ModemData,
    /// Make sure the connection exists with the wanted settings, and activate it.
    pub activate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing asked yet (or a blocking reason cleared): activate at once.
    Idle,
    /// Activation asked at this instant.
    Trying(Instant),
    /// Up since this instant.
    Up(Instant),
    /// Failed or dropped: retry at this instant.
    Waiting(Instant),
}

/// One modem's bearer: its phase and backoff.
#[derive(Debug, Clone)]
pub struct Bearer {
    phase: Phase,
    backoff: Duration,
    last_reason: u32,
}

impl Default for Bearer {
    fn default() -> Self {
        Bearer {
            phase: Phase::Idle,
            backoff: BACKOFF_MIN,
            last_reason: 0,
        }
    }
}

impl Bearer {
    /// Why the modem cannot carry data whatever NetworkManager does, if so.
    fn blocked(f: &Facts) -> Option<ModemData> {
        Some(match (f.sim, f.registration) {
            _ if f.owner_disabled => ModemData::Disabled,
            (Sim::Missing, _) => ModemData::NoSim,
            (Sim::PinRequired, _) => ModemData::SimPinRequired,
            (Sim::PukLocked, _) => ModemData::SimPukLocked,
            (Sim::OtherLock, _) => ModemData::SimLocked,
            (Sim::Ready, Registration::Denied) => ModemData::RegistrationDenied,
            (Sim::Ready, Registration::Roaming) if !f.roaming_allowed => {
                ModemData::RoamingNotAllowed
            }
            (Sim::Ready, Registration::Searching) => ModemData::Searching,
            (Sim::Ready, _) => return None,
        })
    }

    /// The delay before the next retry, and the one after it.
    fn failed(&mut self, now: Instant, reason: u32) {
        self.last_reason = reason;
        self.phase = Phase::Waiting(now + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Decides for `now`.
    pub fn step(&mut self, now: Instant, f: &Facts) -> Plan {
        if let Some(data) = Self::blocked(f) {
            // Nothing to dial; when the reason clears, try at once.
            self.phase = Phase::Idle;
            return Plan {
                data,
                activate: false,
            };
        }
        let activate = |b: &mut Bearer, data| {
            b.phase = Phase::Trying(now);
            Plan {
                data,
                activate: true,
            }
        };
        match (f.device, self.phase) {
            (Device::Absent, _) => {
                // NetworkManager has not picked the modem up yet: nothing to activate.
                self.phase = Phase::Idle;
                Plan {
                    data: ModemData::Connecting,
                    activate: false,
                }
            }
            (Device::Up | Device::Activating, _) if f.settings_changed => {
                activate(self, ModemData::Connecting)
            }
            (Device::Up, phase) => {
                let since = match phase {
                    Phase::Up(t) => t,
                    _ => now,
                };
                if now.duration_since(since) >= STABLE {
                    self.backoff = BACKOFF_MIN;
                }
                self.phase = Phase::Up(since);
                Plan {
                    data: ModemData::Connected,
                    activate: false,
                }
            }
            (Device::Activating, Phase::Up(_)) => {
                // Up but lost its address: NetworkManager is renewing; not a drop yet.
                Plan {
                    data: ModemData::Connecting,
                    activate: false,
                }
            }
            (Device::Activating, _) => {
                if !matches!(self.phase, Phase::Trying(_)) {
                    self.phase = Phase::Trying(now);
                }
                Plan {
                    data: ModemData::Connecting,
                    activate: false,
                }
            }
            (Device::Down { reason }, Phase::Up(_)) => {
                self.failed(now, reason);
                self.bearer_failed()
            }
            (Device::Down { reason }, Phase::Trying(at)) => {
                if now.duration_since(at) < ACTIVATION_GRACE {
                    return Plan {
                        data: ModemData::Connecting,
                        activate: false,
                    };
                }
                self.failed(now, reason);
                self.bearer_failed()
            }
            (Device::Down { .. }, Phase::Waiting(at)) if now >= at => {
                activate(self, self.failed_data())
            }
            (Device::Down { .. }, Phase::Waiting(_)) => self.bearer_failed(),
            (Device::Down { .. }, Phase::Idle) => activate(self, ModemData::Connecting),
        }
    }

    /// The activation call itself failed (NetworkManager refused it).
    pub fn activation_refused(&mut self, now: Instant, reason: u32) {
        self.failed(now, reason);
    }

    /// The current retry delay (what the next failure will wait).
    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    /// How long until the next retry, while waiting for one.
    pub fn retry_in(&self, now: Instant) -> Option<Duration> {
        match self.phase {
            Phase::Waiting(at) => Some(at.saturating_duration_since(now)),
            _ => None,
        }
    }

    fn failed_data(&self) -> ModemData {
        ModemData::BearerFailed {
            nm_reason: self.last_reason,
        }
    }

    fn bearer_failed(&self) -> Plan {
        Plan {
            data: self.failed_data(),
            activate: false,
        }
    }
}

/// A short name for an `NMDeviceStateReason` seen with modems (for the log).
pub fn nm_reason_name(code: u32) -> &'static str {
    match code {
        0 => "none",
        5 => "ip-config-unavailable",
        6 => "ip-config-expired",
        14 => "ppp-failed",
        17 => "dhcp-failed",
        23 => "modem-busy",
        25 => "modem-no-carrier",
        26 => "modem-dial-timeout",
        27 => "modem-dial-failed",
        28 => "modem-init-failed",
        29 => "gsm-apn-failed",
        30 => "gsm-registration-not-searching",
        31 => "gsm-registration-denied",
        32 => "gsm-registration-timeout",
        33 => "gsm-registration-failed",
        34 => "gsm-pin-check-failed",
        36 => "removed",
        38 => "connection-removed",
        39 => "user-requested",
        43 => "modem-not-found",
        45 => "gsm-sim-not-inserted",
        46 => "gsm-sim-pin-required",
        47 => "gsm-sim-puk-required",
        48 => "gsm-sim-wrong",
        52 => "modem-manager-unavailable",
        57 => "modem-failed",
        59 => "sim-pin-incorrect",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(device: Device) -> Facts {
        Facts {
            sim: Sim::Ready,
            owner_disabled: false,
            registration: Registration::Home,
            roaming_allowed: false,
            device,
            settings_changed: false,
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_ready_modem_is_activated_once_and_reported_connected() {
        let t0 = Instant::now();
        let mut b = Bearer::default();
        let p = b.step(t0, &ready(Device::Down { reason: 0 }));
        assert_eq!((p.data, p.activate), (ModemData::Connecting, true));
        // Still down right after the call: no second activation.
        let p = b.step(t0 + S(1), &ready(Device::Down { reason: 0 }));
        assert!(!p.activate);
        let p = b.step(t0 + S(2), &ready(Device::Activating));
        assert_eq!((p.data, p.activate), (ModemData::Connecting, false));
        let p = b.step(t0 + S(3), &ready(Device::Up));
        assert_eq!((p.data, p.activate), (ModemData::Connected, false));
    }

    #[test]
    fn a_dropped_bearer_is_retried_with_doubling_backoff_never_in_a_tight_loop() {
        let t0 = Instant::now();
        let mut b = Bearer::default();
        let down = ready(Device::Down { reason: 29 });
        assert!(b.step(t0, &ready(Device::Down { reason: 0 })).activate);
        b.step(t0, &ready(Device::Up));
        let mut now = t0 + S(1);
        let mut waits = Vec::new();
        // The bearer drops; each retry fails at once (the network refuses the APN).
        let p = b.step(now, &down);
        assert_eq!(
            (p.data, p.activate),
            (ModemData::BearerFailed { nm_reason: 29 }, false)
        );
        for _ in 0..8 {
            let failed_at = now;
            // Stepped every 100 ms: exactly one activation, when the backoff is over.
            loop {
                now += Duration::from_millis(100);
                if b.step(now, &down).activate {
                    break;
                }
                assert!(now - failed_at < S(61), "never retried");
            }
            waits.push((now - failed_at).as_secs_f32().round() as u64);
            // The attempt fails: reported once the grace is over.
            now += ACTIVATION_GRACE;
            let p = b.step(now, &down);
            assert_eq!(p.data, ModemData::BearerFailed { nm_reason: 29 });
            assert!(!p.activate);
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn the_backoff_resets_only_after_the_bearer_stayed_up() {
        let t0 = Instant::now();
        let mut b = Bearer::default();
        b.step(t0, &ready(Device::Down { reason: 0 }));
        b.step(t0, &ready(Device::Up));
        b.step(t0 + S(1), &ready(Device::Down { reason: 25 }));
        assert_eq!(b.backoff(), S(4));
        // Back up after 2 s, drops again 5 s later: the delay keeps growing.
        assert!(
            b.step(t0 + S(3), &ready(Device::Down { reason: 25 }))
                .activate
        );
        b.step(t0 + S(4), &ready(Device::Up));
        b.step(t0 + S(9), &ready(Device::Down { reason: 25 }));
        assert_eq!(b.backoff(), S(8));
        // Up for longer than STABLE: the next drop is retried after the minimum.
        assert!(
            b.step(t0 + S(13), &ready(Device::Down { reason: 25 }))
                .activate
        );
        b.step(t0 + S(14), &ready(Device::Up));
        b.step(t0 + S(14) + STABLE, &ready(Device::Up));
        assert_eq!(b.backoff(), BACKOFF_MIN);
    }

    #[test]
    fn blocking_states_are_reported_and_never_dialled() {
        let t0 = Instant::now();
        let cases = [
            (Sim::Missing, Registration::NotYet, false, ModemData::NoSim),
            (
                Sim::PinRequired,
                Registration::NotYet,
                false,
                ModemData::SimPinRequired,
            ),
            (
                Sim::PukLocked,
                Registration::NotYet,
                false,
                ModemData::SimPukLocked,
            ),
            (
                Sim::OtherLock,
                Registration::Home,
                false,
                ModemData::SimLocked,
            ),
            (
                Sim::Ready,
                Registration::Searching,
                false,
                ModemData::Searching,
            ),
            (
                Sim::Ready,
                Registration::Denied,
                false,
                ModemData::RegistrationDenied,
            ),
            (
                Sim::Ready,
                Registration::Roaming,
                false,
                ModemData::RoamingNotAllowed,
            ),
            (Sim::Ready, Registration::Home, true, ModemData::Disabled),
        ];
        for (sim, registration, owner_disabled, want) in cases {
            let mut b = Bearer::default();
            let f = Facts {
                sim,
                registration,
                owner_disabled,
                ..ready(Device::Down { reason: 0 })
            };
            for n in 0..100 {
                let p = b.step(t0 + S(n), &f);
                assert_eq!(
                    (p.data, p.activate),
                    (want, false),
                    "{sim:?} {registration:?}"
                );
            }
        }
        // Roaming allowed: dialled.
        let mut b = Bearer::default();
        let f = Facts {
            registration: Registration::Roaming,
            roaming_allowed: true,
            ..ready(Device::Down { reason: 0 })
        };
        assert!(b.step(t0, &f).activate);
    }

    #[test]
    fn an_unplugged_modem_comes_back_at_once_when_its_device_reappears() {
        let t0 = Instant::now();
        let mut b = Bearer::default();
        b.step(t0, &ready(Device::Down { reason: 0 }));
        b.step(t0, &ready(Device::Up));
        // Unplugged: NetworkManager's device is gone.
        let p = b.step(t0 + S(1), &ready(Device::Absent));
        assert_eq!((p.data, p.activate), (ModemData::Connecting, false));
        // Re-plugged: activated straight away.
        assert!(
            b.step(t0 + S(5), &ready(Device::Down { reason: 0 }))
                .activate
        );
    }

    #[test]
    fn a_new_apn_reactivates_a_live_bearer() {
        let t0 = Instant::now();
        let mut b = Bearer::default();
        b.step(t0, &ready(Device::Down { reason: 0 }));
        b.step(t0, &ready(Device::Up));
        let f = Facts {
            settings_changed: true,
            ..ready(Device::Up)
        };
        assert!(b.step(t0 + S(1), &f).activate);
    }

    #[test]
    fn modem_manager_codes_map_to_facts() {
        assert_eq!(Sim::from_mm(false, 1, 8, 0), Sim::Missing);
        assert_eq!(Sim::from_mm(true, 1, -1, 2), Sim::Missing);
        assert_eq!(Sim::from_mm(true, 2, 2, 0), Sim::PinRequired);
        assert_eq!(Sim::from_mm(true, 4, 2, 0), Sim::PukLocked);
        assert_eq!(Sim::from_mm(true, 3, 8, 0), Sim::Ready);
        assert_eq!(Sim::from_mm(true, 7, 2, 0), Sim::OtherLock);
        assert_eq!(Registration::from_mm(3, Some(0)), Registration::NotYet);
        assert_eq!(Registration::from_mm(8, Some(1)), Registration::Home);
        assert_eq!(Registration::from_mm(8, Some(5)), Registration::Roaming);
        assert_eq!(Registration::from_mm(7, Some(2)), Registration::Searching);
        assert_eq!(Registration::from_mm(6, Some(3)), Registration::Denied);
        assert_eq!(Registration::from_mm(8, None), Registration::Home);
        assert_eq!(Device::from_nm(100, 0, true), Device::Up);
        assert_eq!(Device::from_nm(100, 0, false), Device::Activating);
        assert_eq!(Device::from_nm(70, 0, false), Device::Activating);
        assert_eq!(Device::from_nm(30, 29, false), Device::Down { reason: 29 });
    }
}
