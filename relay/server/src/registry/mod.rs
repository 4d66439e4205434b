//! The device registry: turns what devices publish into what the relay
//! knows (presence, last seen, inventory, telemetry), sends them commands
//! and waits for replies, renews their certificates and revokes them.
//!
//! Data flow: broker (embedded or external) -> [`crate::control`] ->
//! [`run`] -> one [`handle`] per message -> database and [`LiveTelemetry`].

pub mod agents;
pub mod commands;
pub mod telemetry;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use strata_proto::envelope::{self, DecodeError};
use strata_proto::message::{
    Command, CommandBody, DeviceMessage, EventKind, Outcome, RelayMessage, Status,
};
use strata_proto::topic::{self, Kind};
use tokio::sync::mpsc;

use crate::broker::DeviceBroker;
use crate::control::{ControlPlane, Inbound};
use crate::now_ms;
use crate::store::senders::{self, LinkSample};
use crate::store::{self, devices};
use crate::web::{AppState, Relay};
pub use telemetry::LiveTelemetry;

/// How long a command waits for its reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the registry holds in memory.
pub struct Registry {
    broker: OnceLock<DeviceBroker>,
    /// Devices known to exist and not be revoked (a database read per
    /// message would be thousands per second at 1 Hz telemetry).
    known: moka::sync::Cache<String, ()>,
    control: OnceLock<ControlPlane>,
    online: Mutex<HashSet<String>>,
    /// Recent telemetry per device.
    pub telemetry: LiveTelemetry,
    /// Agent versions and self-updates.
    pub agents: agents::Agents,
    pending: commands::Pending,
}

/// Why a message from a device was dropped.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Not a Strata device topic.
    #[error("not a device topic: {0}")]
    Topic(String),
    /// No such device (or revoked).
    #[error("unknown or revoked device {0}")]
    Device(String),
    /// Bad payload.
    #[error("malformed payload: {0}")]
    Decode(#[from] DecodeError),
    /// A message of one kind on another kind's topic.
    #[error("a {0} topic carried another kind of message")]
    Mismatch(&'static str),
    /// Storing it failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Why a command did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The relay has no control plane (not started with a broker).
    #[error("the device plane is not running")]
    NoControlPlane,
    /// The device is not connected.
    #[error("the device is offline")]
    Offline,
    /// No reply in time.
    #[error("the device did not answer within {0:?}")]
    Timeout(Duration),
    /// Publishing failed.
    #[error("sending the command failed: {0}")]
    Publish(anyhow::Error),
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            broker: OnceLock::new(),
            known: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            control: OnceLock::new(),
            online: Mutex::new(HashSet::new()),
            telemetry: LiveTelemetry::default(),
            agents: agents::Agents::default(),
            pending: commands::Pending::default(),
        }
    }
}

impl Registry {
    /// Connects the registry to a running broker and control plane.
    pub fn attach(&self, broker: Option<DeviceBroker>, control: ControlPlane) {
        if let Some(b) = broker {
            let _ = self.broker.set(b);
        }
        let _ = self.control.set(control);
    }

    /// The broker devices connect to, once the device plane runs.
    pub fn broker(&self) -> Option<&DeviceBroker> {
        self.broker.get()
    }

    /// Lets a newly enrolled device use its topics (only an external broker
    /// keeps a list; the embedded one trusts the certificate).
    pub async fn admit(&self, device_id: &str) {
        if let Some(DeviceBroker::External(m)) = self.broker.get() {
            m.admit(device_id).await;
        }
    }

    /// Whether a device's control channel is up (by its last status).
    pub fn is_online(&self, device_id: &str) -> bool {
        self.online.lock().expect("online").contains(device_id)
    }

    fn set_online(&self, device_id: &str, online: bool) {
        let mut set = self.online.lock().expect("online");
        if online {
            set.insert(device_id.to_string());
        } else {
            set.remove(device_id);
        }
    }

    /// Publishes a command without waiting for its reply.
    async fn send(&self, device_id: &str, id: u64, body: CommandBody) -> Result<(), CommandError> {
        let control = self.control.get().ok_or(CommandError::NoControlPlane)?;
        let payload = envelope::encode(&RelayMessage::Command(Command { id, body }));
        control
            .publish(topic::topic(device_id, Kind::Command), payload)
            .await
            .map_err(CommandError::Publish)
    }

    /// Sends a command to an online device and waits for its reply.
    pub async fn command(
        &self,
        device_id: &str,
        body: CommandBody,
        timeout: Duration,
    ) -> Result<Outcome, CommandError> {
        if self.control.get().is_none() {
            return Err(CommandError::NoControlPlane);
        }
        if !self.is_online(device_id) {
            return Err(CommandError::Offline);
        }
        let (id, reply) = self.pending.open(device_id);
        if let Err(e) = self.send(device_id, id, body).await {
            self.pending.abandon(device_id, id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(outcome)) => Ok(outcome),
            _ => {
                self.pending.abandon(device_id, id);
                Err(CommandError::Timeout(timeout))
            }
        }
    }

    /// Revokes a device: refused by the broker from now on, cut off if connected.
    pub async fn revoke(&self, ca: &crate::ca::DeviceCa, device_id: &str) {
        self.known.invalidate(device_id);
        match self.broker.get() {
            Some(DeviceBroker::Embedded(b)) => b.revoke(device_id),
            Some(DeviceBroker::External(m)) => m.revoke(ca, device_id).await,
            None => {}
        }
        self.set_online(device_id, false);
        self.telemetry.forget(device_id);
        self.agents.forget(device_id);
    }
}

/// Handles device messages until the control plane closes.
pub async fn run(state: AppState, mut inbound: mpsc::Receiver<Inbound>) {
    while let Some(msg) = inbound.recv().await {
        match handle(&state, &msg).await {
            Ok(()) => {
                state.metrics.device_messages.inc();
            }
            Err(e) => {
                tracing::warn!(topic = %msg.topic, error = %e, "device message dropped");
                state.metrics.device_messages_dropped.inc();
            }
        }
    }
    tracing::error!("control plane closed: device messages are no longer handled");
}

/// Handles one message from a device.
pub async fn handle(state: &Arc<Relay>, msg: &Inbound) -> Result<(), HandleError> {
    let (device, kind) =
        topic::parse(&msg.topic).ok_or_else(|| HandleError::Topic(msg.topic.clone()))?;
    if !state.devices.known.contains_key(device) {
        if !devices::is_active(&state.db, device).await? {
            return Err(HandleError::Device(device.to_string()));
        }
        state.devices.known.insert(device.to_string(), ());
    }
    let message: DeviceMessage = envelope::decode(&msg.payload)?;
    let now = now_ms();
    match (kind, message) {
        (Kind::Status, DeviceMessage::Status(s)) => status(state, device, s, now).await?,
        (Kind::Inventory, DeviceMessage::Inventory(inv)) => {
            devices::set_inventory(&state.db, device, &senders::Inventory::from(&inv)).await?;
        }
        (Kind::Telemetry, DeviceMessage::Telemetry(t)) => {
            let samples: Vec<LinkSample> = t
                .links
                .iter()
                .map(|l| LinkSample {
                    // The relay's clock: device clocks may be off.
                    ts: now,
                    link: l.name.clone(),
                    kbps: i64::from(l.kbps),
                    rtt_ms: i64::from(l.rtt_ms),
                    loss_permille: i64::from(l.loss_permille),
                    retransmit_permille: i64::from(l.retransmit_permille),
                })
                .collect();
            if let Some(avg) = state.devices.telemetry.add(device, &samples) {
                senders::record_telemetry(&state.db, device, &avg).await?;
                devices::seen(&state.db, device, now).await?;
            }
        }
        (Kind::Reply, DeviceMessage::Reply(r)) => {
            if !state.devices.pending.resolve(device, r.id, r.outcome) {
                tracing::debug!(device, id = r.id, "reply nobody waits for");
            }
        }
        (Kind::Event, DeviceMessage::Event(e)) => event(state, device, &e.kind).await,
        (Kind::Renew, DeviceMessage::Renew { csr_pem }) => renew(state, device, &csr_pem).await?,
        (kind, _) => return Err(HandleError::Mismatch(kind.as_str())),
    }
    Ok(())
}

async fn status(state: &Arc<Relay>, device: &str, s: Status, now: i64) -> sqlx::Result<()> {
    senders::set_presence(&state.db, device, s.online, now).await?;
    let was = state.devices.is_online(device);
    state.devices.set_online(device, s.online);
    if s.online {
        state.devices.agents.running(device, &s.agent_version);
    }
    tracing::info!(device, online = s.online, agent = %s.agent_version, "device status");
    if s.online && !was {
        // The owner may have changed settings while it was away.
        push_settings_later(state.clone(), device.to_string());
    }
    Ok(())
}

async fn event(state: &Relay, device: &str, kind: &EventKind) {
    tracing::info!(device, event = ?kind, "device event");
    match kind {
        EventKind::StreamStopped { stream_id, reason } => {
            crate::streaming::device_stopped(state, device, stream_id, reason).await;
        }
        EventKind::UpdateProgress { version, percent } => state.devices.agents.update(
            device,
            agents::Update::Downloading {
                version: version.clone(),
                percent: (*percent).min(100),
            },
        ),
        EventKind::UpdateFailed { version, reason } => state.devices.agents.update(
            device,
            agents::Update::Failed {
                version: version.clone(),
                reason: reason.clone(),
            },
        ),
        _ => {}
    }
}

/// What became of settings sent to a device.
#[derive(Debug, PartialEq)]
pub enum Delivery {
    /// The device applied them.
    Applied,
    /// The device is offline; it gets them when it next connects.
    Offline,
    /// The device answered that it could not apply them.
    Refused(String),
    /// No answer (timeout, or no device plane).
    NoAnswer(String),
}

/// Sends settings to a device and waits (briefly) for its answer.
pub async fn apply_settings(
    state: &Relay,
    device: &str,
    settings: &senders::EncoderSettings,
    timeout: Duration,
) -> Delivery {
    let body = CommandBody::ApplySettings(settings.into());
    match state.devices.command(device, body, timeout).await {
        Ok(Outcome::Ok) => Delivery::Applied,
        Ok(Outcome::Failed(why)) => Delivery::Refused(why),
        Err(CommandError::Offline) => Delivery::Offline,
        Err(e) => Delivery::NoAnswer(e.to_string()),
    }
}

/// Sends the stored settings to a device in the background (it just came
/// online, or the API changed them).
pub fn push_settings_later(state: Arc<Relay>, device: String) {
    tokio::spawn(async move {
        let settings = match store::senders::settings_of(&state.db, &device).await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(device, error = %e, "reading settings to push failed");
                return;
            }
        };
        match apply_settings(&state, &device, &settings, REPLY_TIMEOUT).await {
            Delivery::Applied => tracing::info!(device, "settings applied on the device"),
            Delivery::Offline => {}
            other => tracing::warn!(device, result = ?other, "pushing settings failed"),
        }
    });
}

/// Signs a renewal CSR and sends the certificate back as a command.
async fn renew(state: &Arc<Relay>, device: &str, csr_pem: &str) -> Result<(), HandleError> {
    let issued = match state
        .ca
        .sign_device(csr_pem, device, state.config.device_cert_days)
    {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(device, error = %e, "renewal CSR refused");
            return Ok(());
        }
    };
    devices::record_certificate(&state.db, device, &issued.serial, issued.not_after_ms).await?;
    tracing::info!(device, serial = %issued.serial, "device certificate renewed");
    let state = state.clone();
    let device = device.to_string();
    tokio::spawn(async move {
        let body = CommandBody::CertificateIssued {
            chain_pem: issued.cert_pem,
        };
        // Renewal requests come from a connected device; wait for it to take it.
        match state.devices.command(&device, body, REPLY_TIMEOUT).await {
            Ok(Outcome::Ok) => tracing::info!(device, "device installed its renewed certificate"),
            other => tracing::warn!(device, result = ?other, "renewed certificate not confirmed"),
        }
    });
    Ok(())
}

/// Revokes one of the organization's devices: recorded in the database, then
/// refused by the broker and cut off, its streams stopped; false if the
/// organization has no such device.
pub async fn revoke(state: &Relay, org_id: &str, device_id: &str) -> sqlx::Result<bool> {
    if !devices::revoke(&state.db, org_id, device_id).await? {
        return Ok(false);
    }
    state.devices.revoke(&state.ca, device_id).await;
    crate::streaming::stop_for_device(state, device_id, "the device was revoked").await;
    tracing::info!(device = device_id, "device revoked");
    Ok(true)
}
