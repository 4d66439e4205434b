//! One destination: its bounded queue, its own GStreamer pipeline and its own
//! reconnect loop. A stalled or failing destination only ever fills (and then
//! drops from) its own queue; the input and the other outputs never wait on it.
//! SRT, HLS and recordings take the TS into a GStreamer pipeline; RTMP
//! destinations take FLV tags from the stream's one remux (`remux.rs`,
//! `flv.rs`) and publish them themselves (`rtmp.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use rand::Rng;
use serde::Serialize;

use crate::destination::Destination;
use crate::flv::FlvFanout;
use crate::pipeline::{self, Video};
use crate::remux::Tag;
use crate::rtmp;

/// Datagrams (7 TS packets each) an output may hold: about 3 s at 6.5 Mbit/s.
const QUEUE_DATAGRAMS: usize = 2048;
/// Most TS bytes held back waiting for the next video access unit (~2 MB).
const MAX_HELD: usize = 2 << 20;
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that stayed up this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Where an output stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputState {
    /// Waiting for the input's codec, or connecting.
    Connecting,
    /// Data is flowing out.
    Live,
    /// Failed; waiting out the backoff before trying again.
    Reconnecting,
    /// Cannot work with this stream (e.g. H.265 to RTMP); will not retry.
    Failed,
    /// Stopped and finalised.
    Stopped,
}

/// Statistics of one output.
#[derive(Debug, Clone, Serialize)]
pub struct OutputStats {
    /// The output's id.
    pub id: String,
    /// rtmp, srt, hls or record.
    pub kind: &'static str,
    /// The destination, secrets masked.
    pub destination: String,
    /// Where it stands.
    pub state: OutputState,
    /// Bytes handed to the sink.
    pub bytes: u64,
    /// Bit rate out over the last stats period, kbit/s.
    pub bitrate_kbps: f64,
    /// Times the pipeline was rebuilt after a failure.
    pub reconnects: u64,
    /// Datagrams (FLV tags for RTMP) dropped because this output's queue was full.
    pub dropped: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// An event an output raises for the control socket.
#[derive(Debug, Clone)]
pub struct OutputEvent {
    /// The output's id.
    pub id: String,
    /// What happened.
    pub message: String,
}

/// An output's state, shared by its handle and its thread.
pub(crate) struct Shared {
    state: Mutex<OutputState>,
    bytes: AtomicU64,
    reconnects: AtomicU64,
    dropped: AtomicU64,
    last_error: Mutex<Option<String>>,
    pub(crate) stop: AtomicBool,
    rate: Mutex<(Instant, u64, f64)>,
}

impl Shared {
    /// Counts bytes that went out; the first make a connecting output live.
    pub(crate) fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        let mut s = self.state.lock().expect("state lock");
        if *s == OutputState::Connecting {
            *s = OutputState::Live;
        }
    }

    fn new() -> Arc<Self> {
        Arc::new(Shared {
            state: Mutex::new(OutputState::Connecting),
            bytes: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_error: Mutex::new(None),
            stop: AtomicBool::new(false),
            rate: Mutex::new((Instant::now(), 0, 0.0)),
        })
    }
}

/// What an output's thread reads.
enum Feed {
    /// TS datagrams from the input.
    Ts(Receiver<Arc<[u8]>>),
    /// FLV tags from the shared remux.
    Flv(Receiver<Tag>),
}

impl Feed {
    /// Waits up to `t` for the next item and throws it away.
    fn discard(&self, t: Duration) {
        match self {
            Feed::Ts(rx) => _ = rx.recv_timeout(t),
            Feed::Flv(rx) => _ = rx.recv_timeout(t),
        }
    }
}

/// A running output: its thread, its queue (none when the thread reads FLV
/// tags) and its shared state.
pub struct Output {
    id: String,
    dest: Destination,
    tx: Option<SyncSender<Arc<[u8]>>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Output {
    /// Starts an output; it builds its pipeline once the input's video is
    /// known. An RTMP output subscribes to `flv`, which the input feeds.
    pub fn start(
        id: String,
        dest: Destination,
        video: Arc<OnceLock<Video>>,
        events: std::sync::mpsc::Sender<OutputEvent>,
        flv: &Arc<FlvFanout>,
    ) -> Self {
        let shared = Shared::new();
        let (tx, feed) = if matches!(dest, Destination::Rtmp { .. }) {
            let sh = shared.clone();
            let on_drop = Arc::new(move || _ = sh.dropped.fetch_add(1, Ordering::Relaxed));
            (None, Feed::Flv(flv.subscribe(&id, on_drop)))
        } else {
            let (tx, rx) = sync_channel(QUEUE_DATAGRAMS);
            (Some(tx), Feed::Ts(rx))
        };
        let (i, d, fan, sh) = (id.clone(), dest.clone(), flv.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name(format!("output-{id}"))
            .spawn(move || run(&i, &d, &video, &feed, &fan, &sh, &events))
            .expect("spawn output thread");
        Self {
            id,
            dest,
            tx,
            shared,
            thread: Some(thread),
        }
    }

    /// The output's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether it takes the TS (RTMP outputs take FLV tags instead).
    pub fn takes_ts(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a datagram; never blocks (a full queue drops and counts it).
    /// RTMP outputs are fed by the remux instead.
    pub fn push(&self, d: &Arc<[u8]>) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(d.clone()).is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Statistics now.
    pub fn stats(&self) -> OutputStats {
        let sh = &self.shared;
        let bytes = sh.bytes.load(Ordering::Relaxed);
        let bitrate = {
            let mut r = sh.rate.lock().expect("rate lock");
            let dt = r.0.elapsed().as_secs_f64();
            if dt >= 0.5 {
                r.2 = (bytes - r.1) as f64 * 8.0 / dt / 1000.0;
                *r = (Instant::now(), bytes, r.2);
            }
            r.2
        };
        OutputStats {
            id: self.id.clone(),
            kind: self.dest.kind(),
            destination: self.dest.redacted(),
            state: *sh.state.lock().expect("state lock"),
            bytes,
            bitrate_kbps: bitrate,
            reconnects: sh.reconnects.load(Ordering::Relaxed),
            dropped: sh.dropped.load(Ordering::Relaxed),
            last_error: sh.last_error.lock().expect("error lock").clone(),
        }
    }

    /// Sends EOS, waits for the sink to finalise (recordings), and stops.
    pub fn stop(self) {
        // Drop does it; this names the intent at call sites.
        drop(self);
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn set_state(sh: &Shared, s: OutputState) {
    *sh.state.lock().expect("state lock") = s;
}

fn run(
    id: &str,
    dest: &Destination,
    video: &OnceLock<Video>,
    feed: &Feed,
    fan: &FlvFanout,
    sh: &Shared,
    events: &std::sync::mpsc::Sender<OutputEvent>,
) {
    let shown = dest.redacted();
    let report = |message: String| {
        tracing::warn!(output = id, destination = %shown, "{message}");
        *sh.last_error.lock().expect("error lock") = Some(message.clone());
        let _ = events.send(OutputEvent {
            id: id.to_string(),
            message,
        });
    };
    // Wait for the input to tell us what it carries; drop what comes meanwhile.
    let video = loop {
        if sh.stop.load(Ordering::Relaxed) {
            set_state(sh, OutputState::Stopped);
            return;
        }
        if let Some(v) = video.get() {
            break *v;
        }
        feed.discard(Duration::from_millis(100));
    };
    // RTMP is published by `rtmp.rs`; the other kinds are GStreamer pipelines.
    let desc = match dest {
        Destination::Rtmp { .. } => rtmp::supports(video.codec).map(|()| String::new()),
        d => pipeline::describe(d, video.codec),
    };
    let desc = match desc {
        Ok(d) => d,
        Err(e) => {
            set_state(sh, OutputState::Failed);
            report(e);
            return;
        }
    };
    if let Destination::Hls { dir, .. } | Destination::Record { dir, .. } = dest
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        set_state(sh, OutputState::Failed);
        report(format!("cannot create {}: {e}", dir.display()));
        return;
    }
    let mut backoff = BACKOFF_MIN;
    loop {
        set_state(sh, OutputState::Connecting);
        let started = Instant::now();
        let ran = match (feed, dest) {
            (Feed::Flv(rx), Destination::Rtmp { url }) => rtmp::run(url, rx, fan, sh),
            (Feed::Ts(rx), _) => run_pipeline(&desc, dest, video.pid, rx, sh),
            (Feed::Flv(_), _) => Err("FLV feeds only RTMP".into()),
        };
        match ran {
            Ok(()) => {
                set_state(sh, OutputState::Stopped);
                return;
            }
            Err(e) => report(e),
        }
        if sh.stop.load(Ordering::Relaxed) {
            set_state(sh, OutputState::Stopped);
            return;
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff = BACKOFF_MIN;
        }
        sh.reconnects.fetch_add(1, Ordering::Relaxed);
        set_state(sh, OutputState::Reconnecting);
        // Jitter so that many outputs failing together do not retry in step.
        let wait = backoff.mul_f64(rand::rng().random_range(0.8..1.2));
        let until = Instant::now() + wait;
        let mut next_probe = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until && !sh.stop.load(Ordering::Relaxed) {
            // Discard what arrives while down: after a reconnect we start live.
            feed.discard(Duration::from_millis(50));
            // A cheap TCP probe ends a long backoff as soon as the server is back.
            if Instant::now() >= next_probe {
                next_probe += Duration::from_secs(1);
                if dest.reachable() == Some(true) {
                    break;
                }
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Runs one pipeline until it fails (Err) or the output is stopped (Ok).
fn run_pipeline(
    desc: &str,
    dest: &Destination,
    video_pid: u16,
    rx: &Receiver<Arc<[u8]>>,
    sh: &Shared,
) -> Result<(), String> {
    let (pipeline, guard) = parse(desc)?;
    if let Destination::Srt {
        passphrase: Some(p),
        ..
    } = dest
    {
        let sink = pipeline.by_name("sink").expect("sink");
        sink.set_property("passphrase", p);
        // An enum (GstSRTKeyLength): 32 bytes = AES-256.
        sink.set_property_from_str("pbkeylen", "32");
    }
    // Start on a keyframe: drop video until the first keyframe, and audio
    // until then too, so the output opens with a keyframe and timestamps
    // that only go forward.
    let seen_key = Arc::new(AtomicBool::new(false));
    if let Some(vparse) = pipeline.by_name("vparse") {
        let seen = seen_key.clone();
        vparse.static_pad("src").expect("src pad").add_probe(
            gst::PadProbeType::BUFFER,
            move |_, info| {
                if seen.load(Ordering::Relaxed) {
                    return gst::PadProbeReturn::Ok;
                }
                match info.buffer() {
                    Some(b) if !b.flags().contains(gst::BufferFlags::DELTA_UNIT) => {
                        seen.store(true, Ordering::Relaxed);
                        gst::PadProbeReturn::Ok
                    }
                    _ => gst::PadProbeReturn::Drop,
                }
            },
        );
        if let Some(aparse) = pipeline.by_name("aparse") {
            let seen = seen_key.clone();
            aparse.static_pad("src").expect("src pad").add_probe(
                gst::PadProbeType::BUFFER,
                move |_, _| {
                    if seen.load(Ordering::Relaxed) {
                        gst::PadProbeReturn::Ok
                    } else {
                        gst::PadProbeReturn::Drop
                    }
                },
            );
        }
    }
    // Count what reaches the sink (for RTMP/SRT) or the muxers (HLS/record).
    let counted = ["out", "hls", "rec"]
        .iter()
        .find_map(|n| pipeline.by_name(n))
        .expect("a counted element");
    let pad = counted
        .static_pad("src")
        .or_else(|| counted.sink_pads().first().cloned());
    let bytes = Arc::new(AtomicU64::new(0));
    if let Some(pad) = pad {
        count_bytes(&pad, &bytes);
    } else {
        // HLS and record: count at the video request pad once it exists.
        let b = bytes.clone();
        counted.connect_pad_added(move |_, pad| count_bytes(pad, &b));
    }
    let (appsrc, bus) = play(&pipeline)?;
    let mut last_bytes = 0;
    let mut held: Vec<u8> = Vec::new();
    loop {
        if sh.stop.load(Ordering::Relaxed) {
            let _ = appsrc.end_of_stream();
            // Let muxers write their last segment / file.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Some(m) = bus.timed_pop_filtered(
                    gst::ClockTime::from_mseconds(100),
                    &[gst::MessageType::Eos, gst::MessageType::Error],
                ) {
                    if let gst::MessageView::Error(e) = m.view() {
                        tracing::debug!("error while finishing: {}", e.error());
                    }
                    break;
                }
            }
            drop(guard);
            sh.bytes.fetch_add(
                bytes.load(Ordering::Relaxed) - last_bytes,
                Ordering::Relaxed,
            );
            return Ok(());
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(d) => {
                // Hand downstream only whole video access units: keep back what
                // follows the last video PES start, so that a stop (EOS) never
                // flushes half a frame into a recording or segment.
                held.extend_from_slice(&d);
                if let Some(cut) = pipeline::last_video_start(&held, video_pid).filter(|c| *c > 0) {
                    let rest = held.split_off(cut);
                    let whole = std::mem::replace(&mut held, rest);
                    let _ = appsrc.push_buffer(gst::Buffer::from_mut_slice(whole));
                } else if held.len() > MAX_HELD {
                    // No video start for a long while (audio-only, or broken input): pass it on.
                    let _ =
                        appsrc.push_buffer(gst::Buffer::from_mut_slice(std::mem::take(&mut held)));
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        if let Some(why) = failure(&bus) {
            return Err(why);
        }
        progress(sh, &bytes, &mut last_bytes);
    }
}

/// Parses a pipeline description; the guard sets it to NULL when dropped.
fn parse(desc: &str) -> Result<(gst::Pipeline, PipelineGuard), String> {
    let pipeline = gst::parse::launch(desc)
        .map_err(|e| format!("pipeline: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "pipeline: not a pipeline".to_string())?;
    Ok((pipeline.clone(), PipelineGuard(pipeline)))
}

/// Sets the pipeline playing; its appsrc (named `src`) and its bus.
fn play(pipeline: &gst::Pipeline) -> Result<(gst_app::AppSrc, gst::Bus), String> {
    let appsrc = pipeline
        .by_name("src")
        .expect("src")
        .downcast::<gst_app::AppSrc>()
        .map_err(|_| "appsrc missing".to_string())?;
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("cannot start pipeline: {e}"))?;
    Ok((appsrc, pipeline.bus().expect("bus")))
}

/// Adds the size of every buffer through `pad` to `bytes`.
fn count_bytes(pad: &gst::Pad, bytes: &Arc<AtomicU64>) {
    let b = bytes.clone();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(buf) = info.buffer() {
            b.fetch_add(buf.size() as u64, Ordering::Relaxed);
        }
        gst::PadProbeReturn::Ok
    });
}

/// Why the pipeline ended, if its bus says it did (error, or EOS from the far end).
fn failure(bus: &gst::Bus) -> Option<String> {
    let m = bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos])?;
    Some(match m.view() {
        gst::MessageView::Error(e) => {
            let dbg = e.debug().map(|d| d.to_string()).unwrap_or_default();
            tracing::debug!("{}: {dbg}", e.error());
            e.error().to_string()
        }
        _ => "destination closed the stream".into(),
    })
}

/// Adds what reached the sink since the last call to the output's bytes;
/// the first bytes make a connecting output live.
fn progress(sh: &Shared, bytes: &AtomicU64, last_bytes: &mut u64) {
    let now_bytes = bytes.load(Ordering::Relaxed);
    if now_bytes > *last_bytes {
        sh.add_bytes(now_bytes - *last_bytes);
        *last_bytes = now_bytes;
    }
}

/// Sets the pipeline to NULL however the run ends.
struct PipelineGuard(gst::Pipeline);
impl Drop for PipelineGuard {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}
