//! `strata-agent`: the daemon on a Strata field device.
//!
//! Where data goes:
//! - first start: [`identity`] makes the device key (0600, never leaves the
//!   device); [`enrollment`] runs the RFC 8628-shaped flow and shows the QR
//!   code; the certificate lands in the data directory;
//! - [`control`]: MQTT over mutual TLS to the relay's broker, retained status
//!   with the offline status as last will, commands in, replies and
//!   telemetry out;
//! - [`device`]: executes commands (deduplicated by id, always answered),
//!   holds the settings ([`settings`]) and the live [`stream`]: GStreamer
//!   encode -> TS -> the bonded RIST sender of `strata-rist`, one link per
//!   interface ([`inventory`]), emulated by `strata-linksim` in simulation;
//! - [`modems`]: ModemManager over D-Bus (zbus) for the modems in the
//!   inventory, their signal in telemetry, and the owner's modem commands;
//!   its bearer keeper brings each modem's NetworkManager GSM connection up
//!   and keeps it up (retries with backoff).
//!
//! What we hand-write, and why: the enrollment client (a few HTTP calls of
//! our own contract; no RFC 8628 client crate fits a CSR-carrying flow) and
//! the command loop; the status page is three HTML fragments over hyper's
//! server. Capture devices are listed with GStreamer's device
//! monitor rather than the `v4l` crate, so that what is offered is exactly
//! what the pipeline can open.
//!
//! - [`network`]: NetworkManager over D-Bus for the links when
//!   `[links] auto_detect` (the default) and no `include` list.
//!
//! - [`update`]: self-update: signed releases from the relay, tried under
//!   the launcher's supervision, rolled back when they cannot reach the relay.
//!
//! Not built yet (the owner is never shown a control that does nothing):
//! hardware encoders (x264enc / x265enc are used on every board).

pub mod config;
pub mod control;
pub mod device;
pub mod enrollment;
pub mod identity;
pub mod inventory;
pub mod modems;
pub mod network;
pub mod settings;
pub mod status_page;
pub mod stream;
pub mod update;

use std::time::Duration;

use strata_proto::message::{DeviceMessage, EventKind};
use strata_proto::topic::Kind;

use config::AgentConfig;
use control::{Channel, Incoming};
use device::Device;
use identity::Identity;

/// How often the stream is checked and adapted (telemetry goes every other tick).
const TICK: Duration = Duration::from_millis(500);
/// How often the inventory is re-read.
const INVENTORY_EVERY: Duration = Duration::from_secs(10);

/// Hooks for the program embedding the agent.
pub struct Hooks {
    /// Called with each new enrollment code (tests act as the owner with it).
    pub on_pending: enrollment::OnPending,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            on_pending: std::sync::Arc::new(|_| {}),
        }
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    cfg: AgentConfig,
    hooks: Hooks,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    gstreamer::init()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| anyhow::anyhow!("data_dir {}: {e}", cfg.data_dir.display()))?;
    let mut identity = Identity::load_or_create(&cfg.data_dir)?;
    let mut device = Device::new(&cfg);
    // Before enrollment too: the modems may be the only way to the relay.
    if let Some(keeper) = device.bearer_keeper() {
        tokio::spawn(keeper.run());
    }
    let view = status_page::SharedView::default();
    if let Some(listen) = cfg.status_page.listen {
        status_page::serve(listen, view.clone()).await?;
    }
    tokio::pin!(shutdown);
    loop {
        if identity.credentials.is_none() {
            let (shown, hook) = (view.clone(), hooks.on_pending.clone());
            let on_pending = move |p: &enrollment::Pending| {
                shown.lock().expect("status view").pending =
                    Some((p.user_code.clone(), p.verification_uri_complete.clone()));
                hook(p);
            };
            tokio::select! {
                r = enrollment::enroll(&cfg, &mut identity, &on_pending) => { r?; }
                _ = &mut shutdown => return Ok(()),
            }
            view.lock().expect("status view").pending = None;
        }
        view.lock().expect("status view").device_id = identity.device_id().map(String::from);
        match serve(&mut identity, &mut device, &view, &mut shutdown).await? {
            Ended::Shutdown => {
                device.end_stream("the agent stopped");
                return Ok(());
            }
            Ended::Restart => {
                let e = update::restart();
                return Err(anyhow::anyhow!(
                    "restarting into the new release failed: {e}"
                ));
            }
            Ended::Unusable(why) => {
                tracing::error!(reason = %why, "the stored certificate is unusable; enrolling again");
                identity.forget()?;
            }
            Ended::Revoked => {
                tracing::error!(
                    "the relay revoked this device's certificate: streaming stopped; \
                     enroll it again with the new code"
                );
                device.end_stream("the device was revoked");
                identity.forget()?;
            }
        }
    }
}

enum Ended {
    Shutdown,
    /// A new release is staged: restart through the launcher.
    Restart,
    Revoked,
    /// The stored credentials cannot make a TLS client (corrupted files).
    Unusable(String),
}

/// The enrolled device's life: control channel, commands, stream, telemetry.
async fn serve(
    identity: &mut Identity,
    device: &mut Device,
    view: &status_page::SharedView,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<Ended> {
    let mut channel = match Channel::open(identity) {
        Ok(c) => c,
        Err(e) => return Ok(Ended::Unusable(format!("{e:#}"))),
    };
    let mut connected = false;
    let mut tick = tokio::time::interval(TICK);
    let mut telemetry_due = false;
    let mut last_inventory = None;
    let mut inventory_at = tokio::time::Instant::now();
    let mut renew_asked: Option<tokio::time::Instant> = None;
    let mut fetching: Option<tokio::sync::mpsc::Receiver<Fetch>> = None;
    let modem_data = device.modem_data();
    // A download that a previous session of the channel started is gone with it.
    device.updating = None;
    device.update_job = None;
    loop {
        tokio::select! {
            // A modem's bearer came up or went down: re-read the links at the next tick.
            _ = modem_data.changed() => {
                inventory_at = tokio::time::Instant::now()
                    .checked_sub(INVENTORY_EVERY)
                    .unwrap_or(inventory_at);
            }
            Some(f) = next_fetch(&mut fetching) => match f {
                Fetch::Progress(percent) => if let Some(v) = device.updating.clone() {
                    channel.send(&event(EventKind::UpdateProgress { version: v, percent }));
                },
                Fetch::Done(Ok(())) => {
                    tracing::info!(version = ?device.updating, "release verified and staged; restarting into it");
                    // Cleanly: no offline will; the new version says online.
                    channel.disconnect().await;
                    return Ok(Ended::Restart);
                }
                Fetch::Done(Err(why)) => {
                    fetching = None;
                    let version = device.updating.take().unwrap_or_default();
                    tracing::error!(%version, reason = %why, "update refused; this version keeps running");
                    channel.send(&event(EventKind::UpdateFailed { version, reason: why }));
                }
            },
            ev = channel.incoming.recv() => match ev {
                Some(Incoming::Connected) => {
                    tracing::info!("control channel up");
                    connected = true;
                    view.lock().expect("status view").connected = true;
                    channel.subscribe();
                    channel.publish(Kind::Status, true, control::status(true, device.streaming()));
                    let inv = device.inventory().await;
                    channel.send(&DeviceMessage::Inventory(inv.clone()));
                    last_inventory = Some(inv);
                    renew_asked = None;
                    let data_dir = &device.config().data_dir;
                    match update::commit(data_dir) {
                        Ok(Some(v)) => tracing::info!(version = %v, "the new release reached the relay: installed"),
                        Ok(None) => {}
                        Err(e) => tracing::error!(error = %e, "cannot commit the new release"),
                    }
                    if let Some((version, reason)) = update::take_failure(data_dir) {
                        channel.send(&event(EventKind::UpdateFailed { version, reason }));
                    }
                }
                Some(Incoming::Command(payload)) => device.handle(&payload).await,
                Some(Incoming::Disconnected(why)) => {
                    if connected {
                        tracing::warn!(reason = %why, "control channel down; retrying (the stream goes on)");
                    }
                    connected = false;
                    view.lock().expect("status view").connected = false;
                }
                Some(Incoming::Revoked) | None => return Ok(Ended::Revoked),
            },
            _ = tick.tick() => {
                device.tick();
                telemetry_due = !telemetry_due;
                let telemetry = device.telemetry();
                {
                    let mut v = view.lock().expect("status view");
                    v.streaming = device.streaming();
                    v.links = telemetry
                        .iter()
                        .flat_map(|t| &t.links)
                        .map(|l| (l.name.clone(), format!("{:?}", l.state), l.kbps, l.rtt_ms))
                        .collect();
                }
                if connected && telemetry_due && let Some(t) = telemetry {
                    channel.send(&DeviceMessage::Telemetry(t));
                }
                if inventory_at.elapsed() >= INVENTORY_EVERY {
                    inventory_at = tokio::time::Instant::now();
                    let inv = device.inventory().await;
                    if connected && last_inventory.as_ref() != Some(&inv) {
                        channel.send(&DeviceMessage::Inventory(inv.clone()));
                        last_inventory = Some(inv);
                    }
                }
                if connected
                    && renew_asked.is_none_or(|t| t.elapsed() > Duration::from_secs(3600))
                    && renewal_due(identity)
                {
                    renew_asked = Some(tokio::time::Instant::now());
                    match identity.csr_pem() {
                        Ok(csr_pem) => channel.send(&DeviceMessage::Renew { csr_pem }),
                        Err(e) => tracing::warn!(error = %e, "cannot make a renewal CSR"),
                    }
                }
            }
            _ = shutdown.as_mut() => {
                device.end_stream("the agent stopped");
                for m in device.outbox.drain(..) {
                    channel.send(&m);
                }
                channel.close().await;
                return Ok(Ended::Shutdown);
            }
        }
        if let Some(job) = device.update_job.take() {
            fetching = Some(start_fetch(device.config().clone(), job));
        }
        let streaming_before = last_streaming(&device.outbox);
        for m in device.outbox.drain(..) {
            channel.send(&m);
        }
        if streaming_before {
            channel.publish(
                Kind::Status,
                true,
                control::status(true, device.streaming()),
            );
        }
        if let Some(chain) = device.issued_certificate.take() {
            match install_certificate(identity, chain) {
                Ok(()) => {
                    tracing::info!("renewed certificate installed; reconnecting with it");
                    let old = std::mem::replace(&mut channel, Channel::open(identity)?);
                    // A clean DISCONNECT, so the broker does not publish the offline will.
                    old.disconnect().await;
                    connected = false;
                }
                Err(e) => tracing::error!(error = %e, "the issued certificate is unusable"),
            }
        }
    }
}

/// What a release download reports to the agent loop.
enum Fetch {
    Progress(u8),
    Done(Result<(), String>),
}

/// Downloads and stages a release in the background (the stream and the
/// control channel go on meanwhile).
fn start_fetch(cfg: AgentConfig, job: update::Job) -> tokio::sync::mpsc::Receiver<Fetch> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let result = match enrollment::http_client(&cfg) {
            Ok(http) => {
                let progress_tx = tx.clone();
                let progress = move |p: u8| {
                    let _ = progress_tx.try_send(Fetch::Progress(p));
                };
                update::fetch(&http, &cfg, &job, &progress).await
            }
            Err(e) => Err(format!("no HTTP client: {e:#}")),
        };
        let _ = tx.send(Fetch::Done(result)).await;
    });
    rx
}

async fn next_fetch(rx: &mut Option<tokio::sync::mpsc::Receiver<Fetch>>) -> Option<Fetch> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

fn event(kind: EventKind) -> DeviceMessage {
    DeviceMessage::Event(strata_proto::message::Event {
        ts_ms: device::now_ms(),
        kind,
    })
}

/// Whether the outbox says the stream started or stopped (status changes).
fn last_streaming(outbox: &[DeviceMessage]) -> bool {
    outbox.iter().any(|m| {
        matches!(
            m,
            DeviceMessage::Event(strata_proto::message::Event {
                kind: strata_proto::message::EventKind::StreamStarted { .. }
                    | strata_proto::message::EventKind::StreamStopped { .. },
                ..
            })
        )
    })
}

/// Validity of the first certificate in a PEM chain, ms since the epoch,
/// and whether it is for `key`.
fn validity(chain_pem: &str, key_der: &[u8]) -> anyhow::Result<(u64, u64)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not a certificate: {e}"))?;
    if cert.public_key().raw != key_der {
        anyhow::bail!("the certificate is not for this device's key");
    }
    let ms = |t: x509_parser::time::ASN1Time| (t.timestamp().max(0) as u64) * 1000;
    Ok((
        ms(cert.validity().not_before),
        ms(cert.validity().not_after),
    ))
}

/// Past two thirds of the certificate's lifetime.
fn renewal_due(identity: &Identity) -> bool {
    let Some(c) = &identity.credentials else {
        return false;
    };
    match validity(&c.certificate_chain_pem, &identity.public_key_der()) {
        Ok((from, until)) => device::now_ms() > from + (until.saturating_sub(from)) * 2 / 3,
        Err(_) => false,
    }
}

fn install_certificate(identity: &mut Identity, chain: String) -> anyhow::Result<()> {
    let (_, not_after) = validity(&chain, &identity.public_key_der())?;
    if not_after <= device::now_ms() {
        anyhow::bail!("the certificate has already expired");
    }
    identity.renewed(chain, not_after)
}
