//! Stream lifecycle (seed 003 §2, §5, §6): "Start" in the dashboard or API
//! becomes ports from the [`ports::PortPool`], a PSK, a `strata-receiver`
//! [`worker`] that reports `ready`, and a start command to the device; a
//! supervisor task per stream then watches it every few seconds (process
//! alive, stats fresh, input arriving, outputs' health into the database)
//! and tears it down on stop from the dashboard, the API or the device, on
//! lost input, or when the device stays away. Workers outlive a relay
//! restart: [`adopt`] reconnects to live ones and closes the rest.

pub mod ports;
pub mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use strata_proto::message::{CommandBody, Outcome, Secret};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::store::senders::Codec;
use crate::store::{destinations, senders, streams};
use crate::web::{AppState, Relay};
use worker::{Launch, SecretOutput, Secrets, WorkerEvent, WorkerLink, WorkerStats};

/// A worker must be ready this soon after it is started.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// A worker that has not reported stats for this long is considered hung.
const STATS_STALE: Duration = Duration::from_secs(15);
/// How often each stream is checked.
const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// How long a stopping worker gets to finalize its outputs.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// Why a stream did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No such sender in the organization.
    #[error("no such sender")]
    NotFound,
    /// The sender was revoked.
    #[error("this device was revoked")]
    Revoked,
    /// The device's control channel is down.
    #[error("the device is offline")]
    Offline,
    /// It is already streaming.
    #[error("the device is already streaming")]
    AlreadyLive,
    /// Nothing to stream to.
    #[error("choose at least one destination")]
    NoDestinations,
    /// A destination id that is not the organization's.
    #[error("unknown destination {0}")]
    BadDestination(String),
    /// H.265 to RTMP.
    #[error("H.265 cannot go to RTMP destination {0}: choose H.264 in the encoder settings")]
    CodecUnsupported(String),
    /// No ports left.
    #[error(transparent)]
    Ports(#[from] ports::Exhausted),
    /// The worker failed to start.
    #[error("the receiver did not start: {0}")]
    Worker(String),
    /// The device refused or did not answer.
    #[error("the device did not start sending: {0}")]
    Device(String),
    /// Storage failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

struct StopRequest {
    reason: String,
    tell_device: bool,
    done: oneshot::Sender<()>,
}

struct Handle {
    org_id: String,
    sender_id: String,
    stop: mpsc::Sender<StopRequest>,
    task: tokio::task::AbortHandle,
}

/// Live streams of this relay.
pub struct Streams {
    pool: ports::PortPool,
    live: Mutex<HashMap<String, Handle>>,
}

impl Streams {
    /// Streams over a port pool.
    pub fn new(pool: ports::PortPool) -> Streams {
        Streams {
            pool,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Ports currently allocated (both halves of each pair).
    pub fn ports_in_use(&self) -> usize {
        self.pool.in_use()
    }

    /// Whether a stream is supervised here.
    pub fn is_live(&self, stream_id: &str) -> bool {
        self.live.lock().expect("streams").contains_key(stream_id)
    }

    /// Stops supervising every stream without stopping its worker (relay
    /// shutdown: a restarted relay re-adopts them).
    pub fn detach_all(&self) {
        for (_, h) in self.live.lock().expect("streams").drain() {
            h.task.abort();
        }
    }

    fn stopper(&self, org_id: Option<&str>, stream_id: &str) -> Option<mpsc::Sender<StopRequest>> {
        let live = self.live.lock().expect("streams");
        live.get(stream_id)
            .filter(|h| org_id.is_none_or(|o| o == h.org_id))
            .map(|h| h.stop.clone())
    }
}

/// The strata-receiver binary: configured, else next to this executable,
/// else on the PATH.
fn receiver_bin(state: &Relay) -> PathBuf {
    if let Some(p) = &state.config.receiver_bin {
        return p.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            // Test binaries live one level down (target/debug/deps).
            let dir = exe.parent()?;
            [
                dir.join("strata-receiver"),
                dir.parent()?.join("strata-receiver"),
            ]
            .into_iter()
            .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("strata-receiver"))
}

/// One supervised stream.
struct Supervised {
    id: String,
    org_id: String,
    sender_id: String,
    ports: Vec<u16>,
    pid: u32,
    child: Option<tokio::process::Child>,
    link: WorkerLink,
    dir: PathBuf,
    latest: Option<WorkerStats>,
}

/// Starts a stream of a sender to some of the organization's destinations.
pub async fn start(
    state: &AppState,
    org_id: &str,
    sender_id: &str,
    destination_ids: &[String],
) -> Result<String, StartError> {
    let sender = senders::get(&state.db, org_id, sender_id)
        .await?
        .ok_or(StartError::NotFound)?;
    if sender.revoked_at.is_some() {
        return Err(StartError::Revoked);
    }
    if !state.devices.is_online(sender_id) {
        return Err(StartError::Offline);
    }
    let busy = sender.current_stream_id.is_some()
        || state
            .streams
            .live
            .lock()
            .expect("streams")
            .values()
            .any(|h| h.sender_id == sender_id);
    if busy {
        return Err(StartError::AlreadyLive);
    }
    if destination_ids.is_empty() {
        return Err(StartError::NoDestinations);
    }
    let settings = sender.settings();
    let mut names = Vec::new();
    let mut secret_outputs = Vec::new();
    for id in destination_ids {
        let d = destinations::get(&state.db, org_id, id)
            .await?
            .ok_or_else(|| StartError::BadDestination(id.clone()))?;
        let secret = destinations::secret(&state.db, &state.sbox, org_id, id)
            .await
            .map_err(|e| StartError::Worker(format!("reading a destination secret: {e}")))?;
        match d.kind.as_str() {
            "rtmp" => {
                if settings.codec == Codec::H265 {
                    return Err(StartError::CodecUnsupported(d.name));
                }
                let key = secret.unwrap_or_default();
                secret_outputs.push(SecretOutput {
                    id: d.id.clone(),
                    url: format!("{}/{}", d.target.trim_end_matches('/'), key),
                    passphrase: None,
                });
            }
            "srt" => secret_outputs.push(SecretOutput {
                id: d.id.clone(),
                url: d.target.clone(),
                passphrase: secret,
            }),
            // In the secrets file too, so the worker reports them under the destination id.
            "hls" => secret_outputs.push(SecretOutput {
                id: d.id.clone(),
                url: format!(
                    "hls://{}?segment={}",
                    state.data_dir.join("hls").join(&d.id).display(),
                    d.target
                ),
                passphrase: None,
            }),
            "record" => {
                let minutes: u64 = d.target.parse().unwrap_or(10);
                secret_outputs.push(SecretOutput {
                    id: d.id.clone(),
                    url: format!(
                        "record://{}?rotate={}",
                        state.data_dir.join("recordings").join(&d.id).display(),
                        minutes * 60
                    ),
                    passphrase: None,
                })
            }
            other => return Err(StartError::BadDestination(format!("{id} ({other})"))),
        }
        names.push((d.id, d.name));
    }

    let links = sender.inventory().links.iter().filter(|l| l.up).count();
    let ports = state.streams.pool.alloc(links.clamp(1, 8))?;
    let psk = crate::hex_lower(&rand::random::<[u8; 24]>());
    let stream_id = match streams::create(&state.db, org_id, sender_id, &names).await {
        Ok(id) => id,
        Err(e) => {
            state.streams.pool.release(&ports);
            return Err(e.into());
        }
    };
    let dir = state.data_dir.join("streams").join(&stream_id);
    let launch = Launch {
        bin: &receiver_bin(state),
        stream_id: &stream_id,
        ports: &ports,
        bind: state.config.rist_bind,
        // Early enough for both rules that need "no input" (see `watch`).
        stall_after_s: state
            .config
            .stream_no_input_s
            .min(state.config.stream_offline_grace_s)
            .max(1),
        dir: &dir,
        memory_max: &state.config.worker_memory_max,
        cpu_quota: &state.config.worker_cpu_quota,
    };
    let secrets = Secrets {
        psk: psk.clone(),
        outputs: secret_outputs,
    };
    let mut child = match worker::spawn(&launch, &secrets) {
        Ok(c) => c,
        Err(e) => {
            worker::forget_secrets(&dir);
            let why = format!("starting {}: {e}", launch.bin.display());
            abandon(state, org_id, &stream_id, &ports, &dir, &why).await;
            return Err(StartError::Worker(why));
        }
    };
    let pid = child.id().unwrap_or(0);
    let ready = wait_ready(&launch.socket()).await;
    worker::forget_secrets(&dir);
    let link = match ready {
        Ok(link) => link,
        Err(why) => {
            let _ = child.start_kill();
            abandon(state, org_id, &stream_id, &ports, &dir, &why).await;
            return Err(StartError::Worker(why));
        }
    };
    streams::set_worker(
        &state.db,
        &stream_id,
        &ports,
        pid,
        &dir.display().to_string(),
    )
    .await?;
    tracing::info!(stream = %stream_id, sender = %sender_id, ?ports, pid, "receiver ready");

    let mut s = Supervised {
        id: stream_id.clone(),
        org_id: org_id.to_string(),
        sender_id: sender_id.to_string(),
        ports,
        pid,
        child: Some(child),
        link,
        dir,
        latest: None,
    };
    let body = CommandBody::StartStream {
        stream_id: stream_id.clone(),
        relay_host: state.config.rist_host(),
        ports: s.ports.clone(),
        psk: Secret(psk),
        encoder: (&settings).into(),
    };
    let refused = match state
        .devices
        .command(sender_id, body, crate::registry::REPLY_TIMEOUT)
        .await
    {
        Ok(Outcome::Ok) => None,
        Ok(Outcome::Failed(why)) => Some(why),
        Err(e) => Some(e.to_string()),
    };
    if let Some(why) = refused {
        teardown(state, &mut s, "failed", &format!("device: {why}"), false).await;
        return Err(StartError::Device(why));
    }
    streams::set_state(&state.db, &stream_id, "live").await?;
    crate::web::forget_senders(state);
    supervise(state.clone(), s);
    Ok(stream_id)
}

async fn wait_ready(socket: &Path) -> Result<WorkerLink, String> {
    let mut link = WorkerLink::connect(socket, READY_WITHIN)
        .await
        .map_err(|e| format!("no control socket: {e}"))?;
    tokio::time::timeout(READY_WITHIN, async {
        loop {
            match link.next().await {
                Ok(Some(WorkerEvent::Ready { .. })) => return Ok(()),
                Ok(Some(WorkerEvent::Error { message, .. })) => return Err(message),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Err("the worker exited".to_string()),
            }
        }
    })
    .await
    .map_err(|_| "no ready event in time".to_string())??;
    Ok(link)
}

/// Closes a stream that never got going.
async fn abandon(
    state: &Relay,
    org_id: &str,
    stream_id: &str,
    ports: &[u16],
    dir: &Path,
    why: &str,
) {
    state.streams.pool.release(ports);
    if let Err(e) = streams::finish(&state.db, org_id, stream_id, "failed", why).await {
        tracing::error!(stream = stream_id, error = %e, "closing a failed stream");
    }
    let _ = std::fs::remove_dir_all(dir);
    tracing::warn!(stream = stream_id, reason = why, "stream failed to start");
}

/// Starts the supervisor task of a stream whose worker is ready.
fn supervise(state: AppState, s: Supervised) {
    let (stop_tx, stop_rx) = mpsc::channel(4);
    let id = s.id.clone();
    let (org_id, sender_id) = (s.org_id.clone(), s.sender_id.clone());
    // Register before the task runs so a stop cannot miss it.
    let mut live = state.streams.live.lock().expect("streams");
    let task = tokio::spawn(watch(state.clone(), s, stop_rx));
    live.insert(
        id,
        Handle {
            org_id,
            sender_id,
            stop: stop_tx,
            task: task.abort_handle(),
        },
    );
}

fn alive(s: &mut Supervised) -> bool {
    match &mut s.child {
        Some(c) => matches!(c.try_wait(), Ok(None)),
        None => worker::is_worker(s.pid, &s.id),
    }
}

async fn watch(state: AppState, mut s: Supervised, mut stop_rx: mpsc::Receiver<StopRequest>) {
    let no_input = Duration::from_secs(state.config.stream_no_input_s);
    let grace = Duration::from_secs(state.config.stream_offline_grace_s);
    let every = HEALTH_EVERY
        .min(no_input / 3)
        .max(Duration::from_millis(200));
    let mut tick = tokio::time::interval(every);
    let mut last_stats = Instant::now();
    // Input is judged by the worker (librist's bitrate goes stale without
    // packets): `stalled` starts the clock, `resumed` stops it.
    let mut stalled_since: Option<Instant> = None;
    let mut offline_since: Option<Instant> = None;
    let mut done = None;
    let (end, reason, tell_device) = loop {
        tokio::select! {
            req = stop_rx.recv() => match req {
                Some(r) => {
                    done = Some(r.done);
                    break ("ended", r.reason, r.tell_device);
                }
                None => return,
            },
            ev = s.link.next() => match ev {
                Ok(Some(WorkerEvent::Stats(st))) => {
                    last_stats = Instant::now();
                    s.latest = Some(st);
                }
                Ok(Some(WorkerEvent::Error { message, output })) => {
                    tracing::warn!(stream = %s.id, output = ?output, %message, "worker error");
                }
                Ok(Some(WorkerEvent::Stopped { reason })) => {
                    break ("failed", format!("the receiver stopped: {reason}"), true);
                }
                Ok(Some(WorkerEvent::Stalled { seconds })) => {
                    let silent = Duration::from_secs(seconds);
                    stalled_since = Some(Instant::now().checked_sub(silent).unwrap_or_else(Instant::now));
                }
                Ok(Some(WorkerEvent::Resumed)) => stalled_since = None,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break ("failed", "the receiver exited".to_string(), true),
            },
            _ = tick.tick() => {
                save_outputs(&state, &s, None).await;
                if !alive(&mut s) {
                    break ("failed", "the receiver exited".to_string(), true);
                }
                if last_stats.elapsed() > STATS_STALE {
                    break ("failed", "the receiver stopped reporting".to_string(), true);
                }
                let silent = stalled_since.map(|t| t.elapsed()).unwrap_or_default();
                if state.devices.is_online(&s.sender_id) {
                    offline_since = None;
                } else {
                    let since = *offline_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= grace && silent >= grace {
                        break ("ended", "the device disconnected".to_string(), false);
                    }
                }
                if silent >= no_input {
                    break ("ended", format!("no input for {} s", no_input.as_secs()), true);
                }
            }
        }
    };
    teardown(&state, &mut s, end, &reason, tell_device).await;
    if let Some(d) = done {
        let _ = d.send(());
    }
}

async fn save_outputs(state: &Relay, s: &Supervised, final_state: Option<&str>) {
    let Some(st) = &s.latest else { return };
    for o in &st.outputs {
        let state_name = final_state.unwrap_or(&o.state);
        if let Err(e) = streams::set_output(
            &state.db,
            &s.id,
            &o.id,
            state_name,
            o.bytes as i64,
            o.reconnects as i64,
            o.last_error.as_deref(),
        )
        .await
        {
            tracing::warn!(stream = %s.id, error = %e, "saving output health failed");
        }
    }
}

/// Stops the worker (EOS, recordings finalized), tells the device, closes
/// the record, returns the ports.
async fn teardown(state: &Relay, s: &mut Supervised, end: &str, reason: &str, tell_device: bool) {
    tracing::info!(stream = %s.id, end, reason, "stream ending");
    let _ = s.link.send(json!({"cmd": "stop"})).await;
    let stopped = tokio::time::timeout(STOP_WITHIN, async {
        loop {
            match s.link.next().await {
                Ok(Some(WorkerEvent::Stats(st))) => s.latest = Some(st),
                Ok(Some(WorkerEvent::Stopped { .. })) | Ok(None) | Err(_) => break,
                Ok(Some(_)) => {}
            }
        }
    })
    .await
    .is_ok();
    if let Some(c) = &mut s.child {
        let exited = stopped
            && tokio::time::timeout(Duration::from_secs(5), c.wait())
                .await
                .is_ok();
        if !exited {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    } else if !stopped || worker::is_worker(s.pid, &s.id) {
        // An adopted worker is not our child: give it a moment to exit.
        tokio::time::sleep(Duration::from_millis(500)).await;
        if worker::is_worker(s.pid, &s.id) {
            worker::kill(s.pid);
        }
    }
    save_outputs(state, s, Some("stopped")).await;
    if let Err(e) = streams::finish(&state.db, &s.org_id, &s.id, end, reason).await {
        tracing::error!(stream = %s.id, error = %e, "closing the stream record failed");
    }
    state.streams.pool.release(&s.ports);
    let _ = std::fs::remove_dir_all(&s.dir);
    state.streams.live.lock().expect("streams").remove(&s.id);
    // The record is closed before the device hears of it, so whoever sees
    // the device stop sees the stream ended.
    if tell_device && state.devices.is_online(&s.sender_id) {
        let body = CommandBody::StopStream {
            stream_id: s.id.clone(),
        };
        if let Err(e) = state
            .devices
            .command(&s.sender_id, body, Duration::from_secs(5))
            .await
        {
            tracing::warn!(stream = %s.id, error = %e, "telling the device to stop failed");
        }
    }
    crate::web::forget_senders(state);
}

/// Stops one of the organization's streams; false if it has no such live stream.
pub async fn stop(
    state: &Relay,
    org_id: &str,
    stream_id: &str,
    reason: &str,
) -> sqlx::Result<bool> {
    request_stop(state, Some(org_id), stream_id, reason, true).await
}

async fn request_stop(
    state: &Relay,
    org_id: Option<&str>,
    stream_id: &str,
    reason: &str,
    tell_device: bool,
) -> sqlx::Result<bool> {
    let Some(stop) = state.streams.stopper(org_id, stream_id) else {
        // Not supervised here: an unfinished record left by a failure.
        if let Some(org) = org_id
            && streams::live_of(&state.db, org, stream_id).await?.is_some()
        {
            streams::finish(
                &state.db,
                org,
                stream_id,
                "failed",
                "no receiver was running",
            )
            .await?;
            return Ok(true);
        }
        return Ok(false);
    };
    let (done_tx, done_rx) = oneshot::channel();
    let req = StopRequest {
        reason: reason.to_string(),
        tell_device,
        done: done_tx,
    };
    if stop.send(req).await.is_ok() {
        let _ = tokio::time::timeout(STOP_WITHIN * 2, done_rx).await;
    }
    Ok(true)
}

/// Stops every stream of a device (it was revoked: its RIST would otherwise
/// keep flowing with a PSK it still holds).
pub async fn stop_for_device(state: &Relay, device_id: &str, reason: &str) {
    let ids: Vec<String> = state
        .streams
        .live
        .lock()
        .expect("streams")
        .iter()
        .filter(|(_, h)| h.sender_id == device_id)
        .map(|(id, _)| id.clone())
        .collect();
    for id in ids {
        if let Err(e) = request_stop(state, None, &id, reason, false).await {
            tracing::warn!(stream = %id, error = %e, "stopping a revoked device's stream failed");
        }
    }
}

/// The device says it stopped sending a stream.
pub async fn device_stopped(state: &Relay, device_id: &str, stream_id: &str, why: &str) {
    let mine = state
        .streams
        .live
        .lock()
        .expect("streams")
        .get(stream_id)
        .is_some_and(|h| h.sender_id == device_id);
    if mine {
        let reason = format!("the device stopped: {why}");
        if let Err(e) = request_stop(state, None, stream_id, &reason, false).await {
            tracing::warn!(stream = stream_id, error = %e, "stopping after the device did failed");
        }
    }
}

/// At start-up: re-adopts workers that are still running, closes the
/// records of those that are not (their ports are free again).
pub async fn adopt(state: &AppState) -> sqlx::Result<()> {
    for u in streams::unfinished(&state.db).await? {
        let ports: Vec<u16> = u
            .ports
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter_map(|p| p.parse().ok())
            .collect();
        let pid = u.worker_pid.map(|p| p as u32);
        if let (Some(pid), Some(dir)) = (pid, u.worker_dir.as_deref())
            && worker::is_worker(pid, &u.id)
        {
            let dir = PathBuf::from(dir);
            match WorkerLink::connect(&dir.join("control.sock"), Duration::from_secs(2)).await {
                Ok(link) => {
                    state.streams.pool.claim(&ports);
                    tracing::info!(stream = %u.id, pid, "re-adopted a running receiver");
                    supervise(
                        state.clone(),
                        Supervised {
                            id: u.id,
                            org_id: u.org_id,
                            sender_id: u.sender_id,
                            ports,
                            pid,
                            child: None,
                            link,
                            dir,
                            latest: None,
                        },
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!(stream = %u.id, pid, error = %e, "receiver unreachable: stopping it");
                    worker::kill(pid);
                }
            }
        }
        streams::finish(
            &state.db,
            &u.org_id,
            &u.id,
            "failed",
            "the relay restarted and the receiver was gone",
        )
        .await?;
        if let Some(dir) = u.worker_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(())
}
