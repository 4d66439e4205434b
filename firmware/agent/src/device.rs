//! The device as the relay drives it: inventory, settings, the live stream,
//! and every command with its reply. Commands are deduplicated by id: a
//! repeated id gets the first answer again and changes nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use strata_proto::message::{
    Command, CommandBody, DeviceMessage, Event, EventKind, Inventory, Outcome, Reply,
};

use crate::config::AgentConfig;
use crate::inventory::{self, Inputs};
use crate::modems::ModemManager;
use crate::modems::keeper::DataStates;
use crate::modems::owner::OwnerChoices;
use crate::network::NetworkManager;
use crate::settings::StoredSettings;
use crate::stream::{LinkPlan, Stream, StreamRequest};

mod modems;

/// How many answered command ids are remembered.
const REMEMBERED: usize = 256;
/// Most RIST ports a stream may name (one per link).
const MAX_PORTS: usize = 16;

/// The device's state.
pub struct Device {
    cfg: AgentConfig,
    plan: LinkPlan,
    inputs: Inputs,
    /// Stored encoder settings.
    pub settings: StoredSettings,
    /// The live stream, if any.
    pub stream: Option<Stream>,
    answered: VecDeque<(u64, Outcome)>,
    /// Messages to publish (replies, events), drained by the agent loop.
    pub outbox: Vec<DeviceMessage>,
    /// A certificate the relay issued, for the agent to install.
    pub issued_certificate: Option<String>,
    modem_manager: Option<ModemManager>,
    network_manager: Option<NetworkManager>,
    /// NetworkManager's links as last read.
    last_links: Vec<strata_proto::message::Link>,
    /// The modems as last read.
    pub modems: Vec<strata_proto::message::Modem>,
    /// The owner's per-modem choices (APN, off), shared with the bearer keeper.
    modem_choices: Arc<Mutex<OwnerChoices>>,
    /// Each modem's data state, as the bearer keeper decided it.
    modem_data: DataStates,
    /// An accepted update for the agent loop to fetch.
    pub update_job: Option<crate::update::Job>,
    /// The version being installed, from acceptance until it fails (or the restart).
    pub updating: Option<String>,
}

/// A command's name for the log (never its fields: some are secrets).
fn name(body: &CommandBody) -> &'static str {
    match body {
        CommandBody::StartStream { .. } => "start-stream",
        CommandBody::StopStream { .. } => "stop-stream",
        CommandBody::ApplySettings(_) => "apply-settings",
        CommandBody::SetModemEnabled { .. } => "set-modem-enabled",
        CommandBody::SetApn { .. } => "set-apn",
        CommandBody::UnlockSim { .. } => "unlock-sim",
        CommandBody::CertificateIssued { .. } => "certificate-issued",
        CommandBody::Update { .. } => "update",
    }
}

pub(crate) fn outcome(r: Result<(), String>) -> Outcome {
    match r {
        Ok(()) => Outcome::Ok,
        Err(why) => Outcome::Failed(why),
    }
}

/// The SoC temperature from the first thermal zone, °C.
fn cpu_temperature() -> Option<f32> {
    let milli: f32 = std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(milli / 1000.0)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Device {
    /// The device per its configuration and stored state.
    pub fn new(cfg: &AgentConfig) -> Device {
        Device {
            plan: inventory::link_plan(cfg),
            inputs: inventory::inputs(cfg),
            settings: StoredSettings::load(&cfg.data_dir),
            cfg: cfg.clone(),
            stream: None,
            answered: VecDeque::new(),
            outbox: Vec::new(),
            issued_certificate: None,
            modem_manager: None,
            network_manager: None,
            last_links: Vec::new(),
            modems: Vec::new(),
            modem_choices: Arc::new(Mutex::new(OwnerChoices::load(&cfg.data_dir))),
            modem_data: DataStates::default(),
            update_job: None,
            updating: None,
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    /// The inventory as it is now (inputs and modems read again).
    pub async fn inventory(&mut self) -> Inventory {
        self.inputs = inventory::inputs(&self.cfg);
        self.modems = match self.modem_manager().await {
            Some(mm) => match mm.modems().await {
                Ok(found) => found.into_iter().map(|f| f.modem).collect(),
                Err(e) => {
                    tracing::debug!(error = %e, "ModemManager did not answer");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let mut inv = inventory::inventory(&self.plan, &self.inputs);
        if self.detects_links() {
            inv.links = self.detect_links().await;
        }
        {
            let choices = self.modem_choices.lock().expect("owner choices");
            for m in &mut self.modems {
                m.apn = choices.get(&m.id).apn;
                m.data = self.modem_data.get(&m.id).unwrap_or(m.data);
            }
        }
        for link in &mut inv.links {
            link.modem = self
                .modems
                .iter()
                .find(|m| m.interface.as_deref() == Some(link.name.as_str()))
                .map(|m| m.id.clone());
        }
        inv.modems = self.modems.clone();
        inv
    }

    /// Whether links come from NetworkManager (no `include`, no simulation).
    fn detects_links(&self) -> bool {
        self.cfg.links.auto_detect
            && self.cfg.links.include.is_empty()
            && self.cfg.simulation.is_none()
    }

    /// NetworkManager's interfaces (minus `exclude`) as inventory links; the
    /// activated ones become the link plan of the next stream.
    async fn detect_links(&mut self) -> Vec<strata_proto::message::Link> {
        if self.network_manager.is_none() {
            match NetworkManager::connect(self.cfg.links.bus.as_deref()).await {
                Ok(nm) => self.network_manager = Some(nm),
                Err(e) => tracing::debug!(error = %e, "no D-Bus for NetworkManager"),
            }
        }
        let found = match &self.network_manager {
            Some(nm) => match nm.links().await {
                Ok(found) => found,
                Err(e) => {
                    // Keep the links we had: a D-Bus hiccup must not empty a live bond.
                    tracing::debug!(error = %e, "NetworkManager did not answer");
                    return self.last_links.clone();
                }
            },
            None => return self.last_links.clone(),
        };
        let found: Vec<_> = found
            .into_iter()
            .filter(|l| !self.cfg.links.exclude.contains(&l.name))
            .collect();
        let up: Vec<String> = found
            .iter()
            .filter(|l| l.up)
            .map(|l| l.name.clone())
            .collect();
        if let Some(stream) = &mut self.stream {
            stream.set_interfaces(&up);
        }
        self.plan = LinkPlan::Interfaces(up);
        self.last_links = found
            .into_iter()
            .map(|l| strata_proto::message::Link {
                name: l.name,
                kind: l.kind,
                up: l.up,
                modem: None,
            })
            .collect();
        self.last_links.clone()
    }

    /// Live numbers of the stream, with each cellular link's modem signal.
    pub fn telemetry(&self) -> Option<strata_proto::message::Telemetry> {
        let mut t = self.stream.as_ref()?.telemetry(now_ms());
        for l in &mut t.links {
            l.signal_percent = self
                .modems
                .iter()
                .find(|m| m.interface.as_deref() == Some(l.name.as_str()))
                .map(|m| m.signal_percent);
        }
        t.cpu_temp_c = cpu_temperature();
        Some(t)
    }

    /// Handles one command payload; the reply goes to the outbox. A payload
    /// that does not decode has no id to answer: it is logged and dropped.
    pub async fn handle(&mut self, payload: &[u8]) {
        let cmd: Command = match strata_proto::decode::<strata_proto::RelayMessage>(payload) {
            Ok(strata_proto::RelayMessage::Command(c)) => c,
            Err(e) => {
                tracing::warn!(error = %e, "dropped a command that does not decode");
                return;
            }
        };
        tracing::info!(id = cmd.id, command = name(&cmd.body), "command received");
        let outcome = match self.answered.iter().find(|(id, _)| *id == cmd.id) {
            Some((_, o)) => o.clone(),
            None => {
                let o = self.execute(cmd.body).await;
                if self.answered.len() == REMEMBERED {
                    self.answered.pop_front();
                }
                self.answered.push_back((cmd.id, o.clone()));
                o
            }
        };
        if let Outcome::Failed(why) = &outcome {
            tracing::warn!(id = cmd.id, reason = %why, "command refused");
        }
        self.outbox.push(DeviceMessage::Reply(Reply {
            id: cmd.id,
            outcome,
        }));
    }

    async fn execute(&mut self, body: CommandBody) -> Outcome {
        match body {
            CommandBody::StartStream {
                stream_id,
                relay_host,
                ports,
                psk,
                encoder,
            } => {
                if let Some(v) = &self.updating {
                    return Outcome::Failed(format!(
                        "agent {v} is being installed; start the stream after the restart"
                    ));
                }
                let names = |id: &str| self.inputs.list.iter().any(|i| i.id == id);
                if let Err(why) = encoder.check(names) {
                    return Outcome::Failed(why);
                }
                if ports.is_empty() || ports.len() > MAX_PORTS || ports.contains(&0) {
                    return Outcome::Failed(format!(
                        "a stream needs 1 to {MAX_PORTS} RIST ports, not {ports:?}"
                    ));
                }
                if relay_host.is_empty() {
                    return Outcome::Failed("no relay host given".into());
                }
                if self.stream.as_ref().is_some_and(|s| s.id == stream_id) {
                    return Outcome::Ok;
                }
                self.end_stream("replaced by a new stream");
                let req = StreamRequest {
                    stream_id: stream_id.clone(),
                    relay_host,
                    ports,
                    encoder,
                };
                match Stream::start(&req, &psk.0, &self.plan, &self.inputs).await {
                    Ok(s) => {
                        self.stream = Some(s);
                        self.event(EventKind::StreamStarted { stream_id });
                        Outcome::Ok
                    }
                    Err(e) => Outcome::Failed(format!("cannot start the stream: {e:#}")),
                }
            }
            CommandBody::StopStream { stream_id } => {
                if self.stream.as_ref().is_some_and(|s| s.id == stream_id) {
                    self.end_stream("stopped by the relay");
                }
                Outcome::Ok
            }
            CommandBody::ApplySettings(s) => {
                let names = |id: &str| self.inputs.list.iter().any(|i| i.id == id);
                if let Err(why) = s.check(names) {
                    return Outcome::Failed(why);
                }
                let bounds = (s.min_kbps, s.max_kbps);
                if let Err(e) = self.settings.store(s) {
                    return Outcome::Failed(format!("cannot store the settings: {e:#}"));
                }
                if let Some(stream) = &mut self.stream {
                    // Bitrate bounds apply at once; input, codec, size and rate
                    // need a new pipeline, so they apply to the next stream.
                    stream.set_bounds(bounds.0, bounds.1);
                    tracing::info!(stream = %stream.id, "settings stored; bitrate bounds applied now, the rest at the next stream");
                }
                Outcome::Ok
            }
            CommandBody::SetModemEnabled { modem, enabled } => {
                self.set_modem_enabled(&modem, enabled).await
            }
            CommandBody::SetApn { modem, apn } => self.set_apn(&modem, &apn).await,
            CommandBody::UnlockSim { modem, pin } => self.unlock_sim(&modem, &pin.0).await,
            CommandBody::CertificateIssued { chain_pem } => {
                self.issued_certificate = Some(chain_pem);
                Outcome::Ok
            }
            CommandBody::Update {
                version,
                url,
                sha256,
                signature,
            } => {
                if self.stream.is_some() {
                    return Outcome::Failed(
                        "stop the stream first: installing an update restarts the agent".into(),
                    );
                }
                if let Some(v) = &self.updating {
                    return Outcome::Failed(format!("an update to {v} is already in progress"));
                }
                if let Err(why) = crate::update::trusted_key(&self.cfg) {
                    return Outcome::Failed(why);
                }
                if !strata_release::valid_version(&version) {
                    return Outcome::Failed(format!("{version:?} is not a version"));
                }
                // A signed old release may have known holes: no downgrades.
                let running = crate::update::running_version();
                if !crate::update::is_newer(&version, &running) {
                    return Outcome::Failed(format!(
                        "{version} is not newer than the running {running}"
                    ));
                }
                if !url.starts_with("https://") {
                    return Outcome::Failed("releases are fetched over HTTPS only".into());
                }
                if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Outcome::Failed("the release's SHA-256 is not 64 hex digits".into());
                }
                tracing::info!(%version, %url, "update accepted; downloading");
                self.updating = Some(version.clone());
                self.update_job = Some(crate::update::Job {
                    version,
                    url,
                    sha256,
                    signature,
                });
                Outcome::Ok
            }
        }
    }

    /// Checks and adapts the stream; a dead stream is ended with its reason.
    pub fn tick(&mut self) {
        if let Some(s) = &mut self.stream
            && let Err(why) = s.tick()
        {
            tracing::error!(stream = %s.id, reason = %why, "the stream failed");
            self.end_stream(&format!("failed: {why}"));
        }
    }

    /// Stops the live stream, if any, and says so.
    pub fn end_stream(&mut self, reason: &str) {
        if let Some(s) = self.stream.take() {
            let stream_id = s.id.clone();
            s.stop();
            self.event(EventKind::StreamStopped {
                stream_id,
                reason: reason.into(),
            });
        }
    }

    fn event(&mut self, kind: EventKind) {
        self.outbox.push(DeviceMessage::Event(Event {
            ts_ms: now_ms(),
            kind,
        }));
    }

    /// The live stream's id.
    pub fn streaming(&self) -> Option<String> {
        self.stream.as_ref().map(|s| s.id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::message::{EncoderSettings, RelayMessage, Secret};

    fn device(dir: &std::path::Path) -> Device {
        gstreamer::init().unwrap();
        let cfg: AgentConfig = toml::from_str(&format!(
            "relay_url = \"https://127.0.0.1:1\"\ndata_dir = \"{}\"\n[inputs]\nauto_detect = false",
            dir.display()
        ))
        .unwrap();
        Device::new(&cfg)
    }

    fn cmd(id: u64, body: CommandBody) -> Vec<u8> {
        strata_proto::encode(&RelayMessage::Command(Command { id, body }))
    }

    fn reply(d: &mut Device) -> Outcome {
        match d.outbox.pop() {
            Some(DeviceMessage::Reply(r)) => r.outcome,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn failed(o: Outcome) -> String {
        match o {
            Outcome::Failed(why) => why,
            Outcome::Ok => panic!("expected a refusal"),
        }
    }

    #[tokio::test]
    async fn bad_commands_are_answered_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = device(dir.path());
        let before = d.settings.current.clone();

        d.handle(b"\x01garbage").await;
        assert!(d.outbox.is_empty(), "nothing to answer without an id");

        for (bad, field) in [
            (
                EncoderSettings {
                    min_kbps: 0,
                    ..before.clone()
                },
                "bitrates",
            ),
            (
                EncoderSettings {
                    height: 1,
                    ..before.clone()
                },
                "height",
            ),
            (
                EncoderSettings {
                    fps: 1000,
                    ..before.clone()
                },
                "fps",
            ),
            (
                EncoderSettings {
                    input: "cam7".into(),
                    ..before.clone()
                },
                "input",
            ),
            (
                EncoderSettings {
                    min_kbps: 5000,
                    max_kbps: 1000,
                    ..before.clone()
                },
                "minimum",
            ),
        ] {
            d.handle(&cmd(
                1 + bad.height as u64 + bad.fps as u64 + bad.min_kbps as u64,
                CommandBody::ApplySettings(bad),
            ))
            .await;
            let why = failed(reply(&mut d));
            assert!(why.contains(field), "{why}");
        }
        assert_eq!(d.settings.current, before);
        assert!(!dir.path().join("settings.json").exists());

        let why = failed({
            d.handle(&cmd(
                50,
                CommandBody::UnlockSim {
                    modem: "m0".into(),
                    pin: Secret("4321".into()),
                },
            ))
            .await;
            reply(&mut d)
        });
        assert!(!why.contains("4321"), "{why}");

        d.handle(&cmd(
            51,
            CommandBody::StartStream {
                stream_id: "s1".into(),
                relay_host: "127.0.0.1".into(),
                ports: vec![],
                psk: Secret("0123456789abcdef".into()),
                encoder: before.clone(),
            },
        ))
        .await;
        assert!(failed(reply(&mut d)).contains("RIST ports"));
        assert!(d.stream.is_none());
    }

    #[tokio::test]
    async fn a_repeated_id_gets_the_first_answer_and_is_not_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = device(dir.path());
        let first = EncoderSettings {
            height: 1080,
            ..d.settings.current.clone()
        };
        d.handle(&cmd(7, CommandBody::ApplySettings(first.clone())))
            .await;
        assert_eq!(reply(&mut d), Outcome::Ok);
        let second = EncoderSettings {
            height: 480,
            ..first.clone()
        };
        d.handle(&cmd(7, CommandBody::ApplySettings(second))).await;
        assert_eq!(reply(&mut d), Outcome::Ok);
        assert_eq!(d.settings.current, first);
        // Stored, so a restart applies them again.
        assert_eq!(device(dir.path()).settings.current, first);
    }
}
