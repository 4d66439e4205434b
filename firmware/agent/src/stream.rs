//! One live stream: a GStreamer pipeline (source, encoder, AAC, mpegtsmux)
//! whose TS goes from an appsink straight into the bonded RIST sender, one
//! link per usable interface. The encoder's bitrate follows the bond's usable
//! capacity within the owner's bounds.
//!
//! The stream never waits on the control channel: it is driven by
//! [`Stream::tick`] from the agent's loop and by GStreamer's own threads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use strata_proto::message::{Codec, EncoderSettings, LinkTelemetry, TEST_PATTERN, Telemetry};
use strata_rist::{BondedSender, LinkBind, LinkSpec, LinkState, Psk, SenderConfig, controller};

use crate::config::SimulatedLink;
use crate::inventory::Inputs;

/// Audio bitrate, bit/s (AAC-LC stereo).
const AUDIO_BPS: u32 = 128_000;

/// Where the stream's links leave the device.
#[derive(Debug, Clone)]
pub enum LinkPlan {
    /// Real interfaces, each bound with `SO_BINDTODEVICE`.
    Interfaces(Vec<String>),
    /// Emulated links on loopback (`strata-linksim`) in front of the relay.
    Simulated {
        /// Seed of the emulator.
        seed: u64,
        /// The links.
        links: Vec<SimulatedLink>,
    },
}

impl LinkPlan {
    /// The interface names, in order.
    pub fn names(&self) -> Vec<String> {
        match self {
            LinkPlan::Interfaces(n) => n.clone(),
            LinkPlan::Simulated { links, .. } => links.iter().map(|l| l.name.clone()).collect(),
        }
    }
}

/// What the relay asked to send.
#[derive(Debug, Clone)]
pub struct StreamRequest {
    /// Stream id.
    pub stream_id: String,
    /// Relay host the links send to.
    pub relay_host: String,
    /// RIST ports, one per link (link i uses port i modulo their number).
    pub ports: Vec<u16>,
    /// Encoder settings.
    pub encoder: EncoderSettings,
}

/// A running stream.
pub struct Stream {
    /// Stream id.
    pub id: String,
    pipeline: gst::Pipeline,
    encoder: gst::Element,
    codec: Codec,
    bond: Arc<Mutex<BondedSender>>,
    /// Keeps the emulated links alive.
    _sim: Option<strata_linksim::LinkSim>,
    /// The relay's address for each RIST port, in order.
    remotes: Vec<SocketAddr>,
    /// The interfaces in the bond and the relay port each sends to, when
    /// bound to real interfaces.
    interfaces: Option<Vec<(String, SocketAddr)>>,
    bounds: (u32, u32),
    kbps: u32,
    frames: Arc<AtomicU64>,
    last_tick: (Instant, u64),
    fps: f32,
    started: Instant,
    logged: Instant,
    /// For a looped file, the bus has one reader (the loop thread), which
    /// leaves here why the pipeline ended.
    ended: Option<Ended>,
}

/// Why a pipeline ended, as its bus said.
type Ended = Arc<Mutex<Option<String>>>;

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("kbps", &self.kbps)
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// Builds the links and the pipeline and starts sending.
    pub async fn start(
        req: &StreamRequest,
        psk: &str,
        plan: &LinkPlan,
        inputs: &Inputs,
    ) -> anyhow::Result<Stream> {
        if req.ports.is_empty() {
            anyhow::bail!("the relay gave no RIST port");
        }
        let names = plan.names();
        if names.is_empty() {
            anyhow::bail!("this device has no usable link");
        }
        let psk = Psk::new(psk).map_err(|e| anyhow::anyhow!("unusable PSK: {e}"))?;
        let mut by_port = Vec::new();
        for port in &req.ports {
            by_port.push(resolve(&req.relay_host, *port).await?);
        }
        let remotes: Vec<SocketAddr> = (0..names.len())
            .map(|i| by_port[i % by_port.len()])
            .collect();
        let (specs, sim) = match plan {
            LinkPlan::Interfaces(names) => (
                names
                    .iter()
                    .zip(&remotes)
                    .map(|(n, r)| LinkSpec {
                        bind: LinkBind::Interface(n.clone()),
                        ..LinkSpec::new(n.clone(), *r)
                    })
                    .collect::<Vec<_>>(),
                None,
            ),
            LinkPlan::Simulated { seed, links } => {
                let cfg = strata_linksim::SimConfig {
                    seed: *seed,
                    links: links
                        .iter()
                        .zip(&remotes)
                        .map(|(l, r)| strata_linksim::LinkConfig {
                            name: l.name.clone(),
                            listen: "127.0.0.1:0".parse().expect("address"),
                            target: *r,
                            impairment: l.impairment.clone(),
                            events: l.events.clone(),
                        })
                        .collect(),
                };
                let sim = strata_linksim::LinkSim::start(cfg).await?;
                let specs = links
                    .iter()
                    .map(|l| {
                        let at = sim.listen_addr(&l.name).expect("link just started");
                        // No initial rate: as on a real link, the controller learns it.
                        LinkSpec::new(l.name.clone(), at)
                    })
                    .collect();
                (specs, Some(sim))
            }
        };
        let cfg = SenderConfig {
            psk: Some(psk),
            cname: format!("strata-{}", req.stream_id),
            ..SenderConfig::default()
        };
        let bond = tokio::task::block_in_place(|| BondedSender::new(cfg, specs))?;
        let bond = Arc::new(Mutex::new(bond));

        let enc = &req.encoder;
        let start_kbps = enc.max_kbps.min(enc.min_kbps.max(2500));
        // Describing a file input probes it (up to 5 s).
        let description = tokio::task::block_in_place(|| describe(enc, inputs, start_kbps))?;
        let pipeline = gst::parse::launch(&description)?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
        let encoder = pipeline.by_name("venc").expect("venc in description");
        let sink = pipeline
            .by_name("sink")
            .expect("sink in description")
            .downcast::<gst_app::AppSink>()
            .map_err(|_| anyhow::anyhow!("sink is not an appsink"))?;
        let to_bond = bond.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let buf = sample.buffer().ok_or(gst::FlowError::Error)?;
                    let map = buf.map_readable().map_err(|_| gst::FlowError::Error)?;
                    if let Err(e) = to_bond.lock().expect("bond lock").send(&map) {
                        tracing::warn!(error = %e, "bond refused TS");
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        let frames = Arc::new(AtomicU64::new(0));
        let counter = frames.clone();
        pipeline
            .by_name("vparse")
            .expect("vparse in description")
            .static_pad("src")
            .expect("parser src pad")
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                counter.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
        // A file is prerolled and set looping before anything is sent, so
        // the stream's timestamps start once, at the file's start.
        let mut ended = None;
        if inputs.file(&enc.input).is_some() {
            let looped = pipeline
                .set_state(gst::State::Paused)
                .map_err(|_| anyhow::anyhow!("the file did not open: {}", first_error(&pipeline)))
                .and_then(|_| tokio::task::block_in_place(|| loop_file(&pipeline)));
            match looped {
                Ok(slot) => ended = Some(slot),
                Err(e) => {
                    let _ = pipeline.set_state(gst::State::Null);
                    return Err(e);
                }
            }
        }
        if pipeline.set_state(gst::State::Playing).is_err() {
            let why = first_error(&pipeline);
            let _ = pipeline.set_state(gst::State::Null);
            anyhow::bail!("the pipeline did not start: {why}");
        }
        tracing::info!(stream = %req.stream_id, links = ?names, kbps = start_kbps, "streaming");
        Ok(Stream {
            id: req.stream_id.clone(),
            pipeline,
            encoder,
            codec: enc.codec,
            bond,
            _sim: sim,
            remotes: by_port,
            interfaces: match plan {
                LinkPlan::Interfaces(n) => {
                    Some(n.iter().cloned().zip(remotes.iter().copied()).collect())
                }
                LinkPlan::Simulated { .. } => None,
            },
            bounds: (enc.min_kbps, enc.max_kbps),
            kbps: start_kbps,
            frames,
            last_tick: (Instant::now(), 0),
            fps: 0.0,
            started: Instant::now(),
            logged: Instant::now(),
            ended,
        })
    }

    /// Follows the device's interfaces while live: a link that came up joins
    /// the bond, one that went away leaves it. Emulated links do not change.
    pub fn set_interfaces(&mut self, now: &[String]) {
        let Some(current) = &mut self.interfaces else {
            return;
        };
        let bond = self.bond.lock().expect("bond lock");
        current.retain(|(name, _)| {
            if now.contains(name) {
                return true;
            }
            match bond.remove_link(name) {
                Ok(()) => tracing::info!(stream = %self.id, link = %name, "link left the bond"),
                Err(e) => tracing::warn!(stream = %self.id, link = %name, error = %e, "removing a link failed"),
            }
            false
        });
        for name in now {
            if current.iter().any(|(n, _)| n == name) {
                continue;
            }
            // The relay port the fewest links use now.
            let remote = *self
                .remotes
                .iter()
                .min_by_key(|r| current.iter().filter(|(_, used)| used == *r).count())
                .expect("a stream has at least one port");
            let spec = LinkSpec {
                bind: LinkBind::Interface(name.clone()),
                ..LinkSpec::new(name.clone(), remote)
            };
            match bond.add_link(spec) {
                Ok(()) => {
                    tracing::info!(stream = %self.id, link = %name, "link joined the bond");
                    current.push((name.clone(), remote));
                }
                Err(e) => {
                    tracing::warn!(stream = %self.id, link = %name, error = %e, "adding a link failed")
                }
            }
        }
    }

    /// The links in the bond now, with their state.
    pub fn links(&self) -> Vec<(String, LinkState)> {
        self.bond
            .lock()
            .expect("bond lock")
            .stats()
            .links
            .into_iter()
            .map(|l| (l.name, l.state))
            .collect()
    }

    /// New bitrate bounds, applied at once.
    pub fn set_bounds(&mut self, min_kbps: u32, max_kbps: u32) {
        self.bounds = (min_kbps, max_kbps);
    }

    /// Follows the bond's capacity and checks the pipeline; `Err` says why
    /// the stream died (device unplugged, encoder error).
    pub fn tick(&mut self) -> Result<(), String> {
        let ended = match &self.ended {
            Some(slot) => slot.lock().expect("ended slot").take(),
            None => self
                .pipeline
                .bus()
                .and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos]))
                .and_then(|m| why_ended(&m)),
        };
        if let Some(why) = ended {
            return Err(why);
        }
        let now = Instant::now();
        let frames = self.frames.load(Ordering::Relaxed);
        let dt = now.duration_since(self.last_tick.0).as_secs_f32();
        if dt > 0.2 {
            self.fps = (frames - self.last_tick.1) as f32 / dt;
            self.last_tick = (now, frames);
        }
        let stats = self.bond.lock().expect("bond lock").stats();
        let usable = stats.usable_kbps;
        if self.logged.elapsed().as_secs() >= 5 {
            self.logged = Instant::now();
            let links: Vec<String> = stats
                .links
                .iter()
                .map(|l| {
                    format!(
                        "{} {:?} {:.0} kbit/s rtt {} ms share {:.0}%",
                        l.name,
                        l.state,
                        l.sent_kbps,
                        l.rtt_ms.unwrap_or(0),
                        l.share * 100.0
                    )
                })
                .collect();
            tracing::info!(
                stream = %self.id,
                encoder_kbps = self.kbps,
                usable_kbps = usable.round(),
                fps = self.fps.round(),
                "links: {}",
                links.join(" | ")
            );
        }
        // The controller needs a moment to learn the links.
        if usable > 0.0 && self.started.elapsed().as_secs_f32() > 1.0 {
            let target = target_kbps(usable, self.bounds);
            let change = (target as f64 - self.kbps as f64).abs() / self.kbps.max(1) as f64;
            // Down at once; up only in steps worth an encoder reconfiguration.
            if target < self.kbps || change > 0.10 {
                self.set_kbps(target);
            }
        }
        Ok(())
    }

    fn set_kbps(&mut self, kbps: u32) {
        // x264enc and x265enc both take kbit/s and reconfigure while playing.
        match self.codec {
            Codec::H264 | Codec::H265 => self.encoder.set_property("bitrate", kbps),
        }
        tracing::debug!(stream = %self.id, kbps, "encoder bitrate");
        self.kbps = kbps;
    }

    /// This stream's live numbers.
    pub fn telemetry(&self, ts_ms: u64) -> Telemetry {
        let stats = self.bond.lock().expect("bond lock").stats();
        Telemetry {
            ts_ms,
            links: stats
                .links
                .iter()
                .filter(|l| l.state != LinkState::Removed)
                .map(|l| LinkTelemetry {
                    name: l.name.clone(),
                    state: match l.state {
                        LinkState::Up => strata_proto::message::LinkState::Up,
                        LinkState::Dark | LinkState::Removed => {
                            strata_proto::message::LinkState::Dark
                        }
                        LinkState::Probing => strata_proto::message::LinkState::Probing,
                    },
                    rtt_ms: l.rtt_ms.unwrap_or(0),
                    loss_permille: permille(l.loss_percent),
                    retransmit_permille: permille(l.retransmit_percent),
                    kbps: l.sent_kbps.round().max(0.0) as u32,
                    share_permille: (l.share * 1000.0).round().clamp(0.0, 1000.0) as u16,
                    signal_percent: None,
                })
                .collect(),
            usable_kbps: stats.usable_kbps.round().max(0.0) as u32,
            encoder_kbps: self.kbps,
            fps: self.fps,
            cpu_temp_c: None,
        }
    }

    /// Stops the pipeline, then the bond.
    pub fn stop(self) {
        let _ = self.pipeline.set_state(gst::State::Null);
        if let Ok(mut b) = self.bond.lock() {
            let _ = b.flush();
        }
        tracing::info!(stream = %self.id, "stream stopped");
    }
}

/// The video bitrate for a bond that can carry `usable` kbit/s.
/// The video bitrate for the bond's usable capacity, within the owner's bounds.
fn target_kbps(usable: f64, (min, max): (u32, u32)) -> u32 {
    let video = controller::video_kbps(usable, f64::from(AUDIO_BPS / 1000));
    (video as u32).clamp(min, max)
}

fn permille(percent: f64) -> u16 {
    (percent * 10.0).round().clamp(0.0, 1000.0) as u16
}

async fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot resolve relay host {host:?}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("relay host {host:?} has no address"))
}

fn first_error(p: &gst::Pipeline) -> String {
    p.bus()
        .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]))
        .and_then(|m| match m.view() {
            gst::MessageView::Error(e) => Some(e.error().to_string()),
            _ => None,
        })
        .unwrap_or_else(|| "no reason given".into())
}

/// Whether a media file has a sound track (and can be decoded at all).
fn has_audio(path: &std::path::Path) -> anyhow::Result<bool> {
    let discoverer = gstreamer_pbutils::Discoverer::new(gst::ClockTime::from_seconds(5))?;
    let uri = gst::glib::filename_to_uri(path, None)?;
    let info = discoverer
        .discover_uri(&uri)
        .map_err(|e| anyhow::anyhow!("{} cannot be played: {e}", path.display()))?;
    if info.video_streams().is_empty() {
        anyhow::bail!("{} has no video", path.display());
    }
    Ok(!info.audio_streams().is_empty())
}

/// An Error or EOS message as a reason; `None` for anything else.
fn why_ended(msg: &gst::Message) -> Option<String> {
    match msg.view() {
        gst::MessageView::Error(e) => Some(format!(
            "{}: {}",
            e.src().map(|s| s.name().to_string()).unwrap_or_default(),
            e.error()
        )),
        gst::MessageView::Eos(_) => Some("the input ended".into()),
        _ => None,
    }
}

/// Plays a file input in a loop: segment seeks, so running time (and the
/// stream's timestamps) go on across the loop point. A thread of its own
/// reads the bus (a bus read discards what it does not ask for, so it is
/// the only reader): it answers each segment's end and leaves an error or
/// EOS in the returned slot for [`Stream::tick`]. It ends with the pipeline.
fn loop_file(pipeline: &gst::Pipeline) -> anyhow::Result<Ended> {
    let flags = gst::SeekFlags::FLUSH | gst::SeekFlags::SEGMENT;
    let (ok, _, _) = pipeline.state(gst::ClockTime::from_seconds(10));
    ok.map_err(|_| anyhow::anyhow!("the file did not start: {}", first_error(pipeline)))?;
    pipeline.seek(
        1.0,
        flags,
        gst::SeekType::Set,
        gst::ClockTime::ZERO,
        gst::SeekType::None,
        gst::ClockTime::NONE,
    )?;
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let weak = pipeline.downgrade();
    let slot: Ended = Arc::new(Mutex::new(None));
    let report = slot.clone();
    std::thread::Builder::new()
        .name("file-loop".into())
        .spawn(move || {
            let kinds = [
                gst::MessageType::SegmentDone,
                gst::MessageType::Error,
                gst::MessageType::Eos,
            ];
            loop {
                match weak.upgrade() {
                    Some(p) if p.current_state() != gst::State::Null => {}
                    _ => break,
                }
                let Some(msg) = bus.timed_pop_filtered(gst::ClockTime::from_mseconds(200), &kinds)
                else {
                    continue;
                };
                if let Some(why) = why_ended(&msg) {
                    *report.lock().expect("ended slot") = Some(why);
                    break;
                }
                let Some(p) = weak.upgrade() else { break };
                if let Err(e) = p.seek(
                    1.0,
                    gst::SeekFlags::SEGMENT,
                    gst::SeekType::Set,
                    gst::ClockTime::ZERO,
                    gst::SeekType::None,
                    gst::ClockTime::NONE,
                ) {
                    *report.lock().expect("ended slot") =
                        Some(format!("looping the file failed: {e}"));
                    break;
                }
            }
        })?;
    Ok(slot)
}

/// The pipeline description. Only validated numbers and paths from the
/// inventory are put into it.
fn describe(enc: &EncoderSettings, inputs: &Inputs, kbps: u32) -> anyhow::Result<String> {
    let height = enc.height;
    let width = (height * 16 / 9 + 1) & !1;
    let fps = enc.fps;
    let raw = format!("video/x-raw,width={width},height={height},framerate={fps}/1");
    // A file decodes as fast as it can: the sink paces it (sync) and the
    // queue before the encoder must hold frames back, not drop them.
    let mut file_audio = None;
    let mut sync = false;
    let mut leaky = "leaky=downstream";
    let source = if enc.input == TEST_PATTERN {
        // The running clock is a help, not a need: images without the pango
        // plugin (fonts are heavy on a small root) send the bare pattern.
        let clock = if gst::ElementFactory::find("timeoverlay").is_some() {
            " ! timeoverlay"
        } else {
            ""
        };
        format!("videotestsrc is-live=true pattern=smpte ! {raw}{clock}")
    } else if let Some(path) = inputs.file(&enc.input) {
        file_audio = Some(has_audio(path)?);
        sync = true;
        leaky = "";
        format!(
            "filesrc location=\"{}\" ! decodebin name=dec dec. ! queue ! videoconvert ! \
             videoscale ! videorate ! {raw}",
            path.display()
        )
    } else {
        let dev = inputs
            .v4l2_device(&enc.input)
            .ok_or_else(|| anyhow::anyhow!("input '{}' is gone", enc.input))?;
        format!(
            "v4l2src device=\"{}\" ! videoconvert ! videoscale ! videorate ! {raw}",
            dev.display()
        )
    };
    let gop = fps * 2;
    let (encoder, parser) = match enc.codec {
        Codec::H264 => (
            format!(
                "x264enc name=venc tune=zerolatency speed-preset=ultrafast bitrate={kbps} \
                 key-int-max={gop} ! video/x-h264,profile=high"
            ),
            "h264parse",
        ),
        Codec::H265 => (
            format!(
                "x265enc name=venc tune=zerolatency speed-preset=ultrafast bitrate={kbps} \
                 key-int-max={gop}"
            ),
            "h265parse",
        ),
    };
    let mut d = format!(
        "{source} ! videoconvert ! queue max-size-buffers=4 {leaky} ! {encoder} ! \
         {parser} name=vparse config-interval=-1 ! queue ! \
         mpegtsmux name=mux alignment=7 ! appsink name=sink sync={sync} max-buffers=256"
    );
    let aac = format!(
        "audio/x-raw,rate=48000,channels=2 ! audioconvert ! avenc_aac bitrate={AUDIO_BPS} ! \
         aacparse ! queue ! mux."
    );
    match (enc.audio, file_audio) {
        (true, None) => d.push_str(&format!(
            " audiotestsrc is-live=true wave=sine freq=440 volume=0.2 ! {aac}"
        )),
        (true, Some(true)) => d.push_str(&format!(
            " dec. ! queue ! audioconvert ! audioresample ! {aac}"
        )),
        // A file without sound is sent without an audio track: a generated
        // one would never end its segment, and the loop would stop.
        (true, Some(false)) => {}
        // Its sound is not sent: drained, so decoding never waits on it.
        (false, Some(true)) => d.push_str(" dec. ! queue ! fakesink sync=false async=false"),
        (false, _) => {}
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrate_follows_capacity_within_bounds() {
        // One headroom (the controller's), then mux overhead and audio.
        assert_eq!(target_kbps(5000.0, (500, 6000)), 4622);
        assert_eq!(target_kbps(100.0, (500, 6000)), 500);
        assert_eq!(target_kbps(50_000.0, (500, 6000)), 6000);
    }

    #[test]
    fn description_has_the_named_elements() {
        let enc = EncoderSettings {
            input: TEST_PATTERN.into(),
            codec: Codec::H264,
            height: 720,
            fps: 30,
            min_kbps: 500,
            max_kbps: 4000,
            audio: true,
        };
        let d = describe(&enc, &Inputs::default(), 2500).unwrap();
        for part in [
            "width=1280",
            "name=venc",
            "name=vparse",
            "name=sink",
            "avenc_aac",
        ] {
            assert!(d.contains(part), "{part}: {d}");
        }
        let missing = EncoderSettings {
            input: "cam9".into(),
            ..enc
        };
        assert!(describe(&missing, &Inputs::default(), 2500).is_err());
    }
}
