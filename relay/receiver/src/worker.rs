//! The worker: bonded RIST in, fan-out to outputs, control socket, health.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strata_rist::{BondedReceiver, Psk, ReceiverConfig};

use crate::control::{Command, ControlSocket};
use crate::destination::{Destination, DestinationSpec};
use crate::flv::FlvFanout;
use crate::output::{Output, OutputEvent};
use crate::pipeline::{CodecProbe, Video, VideoCodec};
use crate::remux::TsToFlv;

/// Everything a worker needs to start.
pub struct WorkerConfig {
    /// Stream id (for logs and events).
    pub stream_id: String,
    /// Addresses to receive RIST on, one per link.
    pub listen: Vec<SocketAddr>,
    /// RIST passphrase.
    pub psk: Option<Psk>,
    /// RIST recovery buffer, ms.
    pub buffer_ms: u32,
    /// Destinations at start.
    pub outputs: Vec<DestinationSpec>,
    /// No input for this long raises `stalled`.
    pub stall_after: Duration,
    /// How often stats events go out.
    pub stats_every: Duration,
}

/// Why the worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A `stop` command.
    Command,
    /// SIGTERM or SIGINT.
    Signal,
}

struct Input {
    outputs: Mutex<Vec<Output>>,
    /// The TS to FLV remux, while there is an RTMP output (run on the input's thread).
    remux: Mutex<Option<TsToFlv>>,
    /// Its RTMP outputs.
    flv: Arc<FlvFanout>,
    video: Arc<OnceLock<Video>>,
    last_input: AtomicU64,
    epoch: Instant,
    stop: AtomicBool,
}

/// Validates every destination; the first error is returned as the event text.
pub fn validate(specs: &[DestinationSpec]) -> Result<Vec<(String, Destination)>, String> {
    let mut ids = HashSet::new();
    specs
        .iter()
        .map(|s| {
            if s.id.is_empty() || !ids.insert(s.id.clone()) {
                return Err(format!("output id {:?} is empty or used twice", s.id));
            }
            Destination::parse(&s.url, s.passphrase.as_deref())
                .map(|d| (s.id.clone(), d))
                .map_err(|e| format!("output {}: {e}", s.id))
        })
        .collect()
}

/// Runs until stopped; emits events on `socket`.
pub fn run(
    cfg: WorkerConfig,
    socket: &ControlSocket,
    commands: Receiver<Command>,
    signal: Arc<AtomicBool>,
) -> anyhow::Result<StopReason> {
    let dests = validate(&cfg.outputs).map_err(anyhow::Error::msg)?;
    let (ev_tx, ev_rx): (Sender<OutputEvent>, Receiver<OutputEvent>) = channel();
    let input = Arc::new(Input {
        outputs: Mutex::new(Vec::new()),
        remux: Mutex::new(None),
        flv: FlvFanout::new(),
        video: Arc::new(OnceLock::new()),
        last_input: AtomicU64::new(0),
        epoch: Instant::now(),
        stop: AtomicBool::new(false),
    });
    for (id, d) in dests {
        let o = input.start(id, d, &ev_tx);
        input.outputs.lock().expect("outputs lock").push(o);
    }
    // Data arrives on librist's output thread: no queue or thread of ours before the outputs'.
    let rx = {
        let input = input.clone();
        let probe = Mutex::new(CodecProbe::new());
        BondedReceiver::with_callback(
            ReceiverConfig {
                listen: cfg.listen.clone(),
                psk: cfg.psk.clone(),
                buffer_ms: cfg.buffer_ms,
            },
            Box::new(move |d| on_input(&input, &probe, d)),
        )?
    };
    socket.emit(
        json!({"event": "ready", "stream_id": cfg.stream_id, "ports": rx.ports()}),
        true,
    );
    tracing::info!(stream = %cfg.stream_id, ports = ?rx.ports(), "ready");

    let mut next_stats = Instant::now() + cfg.stats_every;
    let mut stalled = false;
    let mut psk_reported = false;
    let reason = loop {
        if signal.load(Ordering::Relaxed) {
            break StopReason::Signal;
        }
        match commands.recv_timeout(Duration::from_millis(100)) {
            Ok(Command::Stop) => break StopReason::Command,
            Ok(Command::Stats) => socket.emit(stats(&cfg, &rx, &input), false),
            Ok(c) => {
                let r = apply(c, &input, &ev_tx);
                socket.emit(
                    match r {
                        Ok(what) => json!({"event": "ok", "message": what}),
                        Err(e) => json!({"event": "error", "message": e}),
                    },
                    false,
                );
            }
            Err(_) => {}
        }
        while let Ok(e) = ev_rx.try_recv() {
            socket.emit(
                json!({"event": "error", "output": e.id, "message": e.message}),
                false,
            );
        }
        let last = input.last_input.load(Ordering::Relaxed);
        let silent_for = input
            .epoch
            .elapsed()
            .saturating_sub(Duration::from_nanos(last));
        if silent_for >= cfg.stall_after && !stalled {
            stalled = true;
            socket.emit(
                json!({"event": "stalled", "seconds": silent_for.as_secs()}),
                false,
            );
        } else if silent_for < cfg.stall_after && stalled {
            stalled = false;
            socket.emit(json!({"event": "resumed"}), false);
        }
        if Instant::now() >= next_stats {
            next_stats += cfg.stats_every;
            let st = stats(&cfg, &rx, &input);
            // A wrong PSK is reported once, as an error, besides the stats.
            if !psk_reported && let Some(p) = st["rist"]["problem"].as_str() {
                psk_reported = true;
                socket.emit(json!({"event": "error", "message": p}), false);
            }
            socket.emit(st, false);
        }
    };
    input.stop.store(true, Ordering::Relaxed);
    let outputs = std::mem::take(&mut *input.outputs.lock().expect("outputs lock"));
    for o in outputs {
        o.stop();
    }
    socket.emit(stats(&cfg, &rx, &input), false);
    Ok(reason)
}

/// One datagram of reassembled TS: note the time, learn the codec, fan out.
fn on_input(input: &Input, probe: &Mutex<CodecProbe>, d: &[u8]) {
    if input.stop.load(Ordering::Relaxed) {
        return;
    }
    input
        .last_input
        .store(input.epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
    if input.video.get().is_none()
        && let Some(v) = probe.lock().expect("probe lock").feed(d)
    {
        tracing::info!(codec = ?v.codec, pid = v.pid, "input video");
        let _ = input.video.set(v);
    }
    let outputs = input.outputs.lock().expect("outputs lock");
    if outputs.iter().any(Output::takes_ts) {
        let d: Arc<[u8]> = d.into();
        for o in outputs.iter() {
            o.push(&d);
        }
    }
    drop(outputs);
    // The FLV remux is cheap (a copy into one buffer per frame, no thread) and
    // never waits: its tags go to each RTMP output's queue with try_send.
    let mut remux = input.remux.lock().expect("remux lock");
    match input.video.get() {
        Some(v) if v.codec == VideoCodec::H264 && !input.flv.is_empty() => remux
            .get_or_insert_with(|| TsToFlv::new(v.pid, v.audio_pid))
            .feed(d, &mut |tag| input.flv.broadcast(&tag)),
        _ => *remux = None,
    }
}

impl Input {
    /// Starts an output; an RTMP one subscribes to the FLV tags.
    fn start(&self, id: String, d: Destination, events: &Sender<OutputEvent>) -> Output {
        Output::start(id, d, self.video.clone(), events.clone(), &self.flv)
    }
}

fn apply(c: Command, input: &Input, events: &Sender<OutputEvent>) -> Result<String, String> {
    let mut outs = input.outputs.lock().expect("outputs lock");
    match c {
        Command::AddOutput {
            id,
            url,
            passphrase,
        } => {
            if outs.iter().any(|o| o.id() == id) {
                return Err(format!("output {id:?} exists"));
            }
            let d = Destination::parse(&url, passphrase.as_deref()).map_err(|e| e.to_string())?;
            let shown = d.redacted();
            outs.push(input.start(id.clone(), d, events));
            Ok(format!("output {id} added: {shown}"))
        }
        Command::RemoveOutput { id } => {
            let i = outs
                .iter()
                .position(|o| o.id() == id)
                .ok_or_else(|| format!("no output {id:?}"))?;
            let o = outs.remove(i);
            drop(outs);
            o.stop();
            Ok(format!("output {id} removed"))
        }
        Command::UpdateForward {
            id,
            url,
            passphrase,
        } => {
            let i = match id {
                Some(id) => outs
                    .iter()
                    .position(|o| o.id() == id)
                    .ok_or_else(|| format!("no output {id:?}"))?,
                None if outs.len() == 1 => 0,
                None => {
                    return Err("update_forward needs an id when there are several outputs".into());
                }
            };
            let d = Destination::parse(&url, passphrase.as_deref()).map_err(|e| e.to_string())?;
            let id = outs[i].id().to_string();
            let shown = d.redacted();
            // Same id: the new output replaces the old one among the remux's
            // subscribers, and the old one sees its feed end.
            let new = input.start(id.clone(), d, events);
            let old = std::mem::replace(&mut outs[i], new);
            drop(outs);
            old.stop();
            Ok(format!("output {id} now goes to {shown}"))
        }
        Command::Stop | Command::Stats => Ok(String::new()),
    }
}

fn stats(cfg: &WorkerConfig, rx: &BondedReceiver, input: &Input) -> Value {
    let flow = rx.stats();
    let outputs: Vec<_> = input
        .outputs
        .lock()
        .expect("outputs lock")
        .iter()
        .map(|o| o.stats())
        .collect();
    json!({
        "event": "stats",
        "stream_id": cfg.stream_id,
        "bitrate_in_kbps": flow.bitrate_kbps,
        "bitrate_out_kbps": outputs.iter().map(|o| o.bitrate_kbps).sum::<f64>(),
        "buffer_ms": cfg.buffer_ms,
        "codec": input.video.get().map(|v| format!("{:?}", v.codec)),
        "rist": flow,
        "outputs": outputs,
    })
}
