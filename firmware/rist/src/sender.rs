//! `BondedSender`: one librist main-profile sender context, one peer per link,
//! each peer behind a relay bound to its link, weights set by the controller.

use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use strata_rist_sys as sys;

use crate::controller::{self, ControllerConfig, LinkControl, Observation};
use crate::datagram::Reader;
use crate::link::{LinkSpec, LinkState};
use crate::log::{LogSettings, LogTap};
use crate::peer::{Ctx, Peer, peer_config, scrub, set_stats_callback};
use crate::psk::Psk;
use crate::relay::{self, Placement, Relay};
use crate::stats::{BondStats, LinkStats};
use crate::steering::Steering;
use crate::ts::{DATAGRAM_PAYLOAD, TS_PACKET};

/// How a bonded sender is set up.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Passphrase for AES-256; `None` sends in clear (tests and interop only).
    pub psk: Option<Psk>,
    /// Recovery buffer in ms: how long a lost packet can still be resent.
    pub buffer_ms: u32,
    /// Name this sender gives itself in RTCP.
    pub cname: String,
    /// Link controller tuning.
    pub controller: ControllerConfig,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            psk: None,
            buffer_ms: 1000,
            cname: "strata".into(),
            controller: ControllerConfig::default(),
        }
    }
}

/// Why the sender refused something.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Input is not whole 188-byte TS packets starting with 0x47.
    #[error("input is not MPEG-TS: {0}")]
    NotTs(String),
    /// A link with this name is already in the bond.
    #[error("link {0:?} already exists")]
    DuplicateLink(String),
    /// No link with this name.
    #[error("no link named {0:?}")]
    NoSuchLink(String),
    /// librist refused.
    #[error("librist: {0}")]
    Rist(String),
    /// Socket or thread set-up failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What librist last reported for a peer.
#[derive(Debug, Default, Clone, Copy)]
struct PeerReport {
    rtt_ms: u32,
    sent: u64,
}

/// A link and everything attached to it. Slots are never freed: librist 0.2.7
/// cannot safely destroy a peer while streaming, so a removed link's peer is
/// parked at weight 0 and its slot reused by the next link added.
struct Slot {
    spec: LinkSpec,
    peer: Peer,
    inside_port: u16,
    relay: Option<Relay>,
    control: LinkControl,
    /// Relay bytes at the start of the share window, and the last share.
    share_start: u64,
    share: f64,
    /// Loss and retransmission figures over the last seconds.
    loss: LossWindow,
}

struct Shared {
    ctx: Ctx,
    cfg: SenderConfig,
    slots: Mutex<Vec<Slot>>,
    steering: Arc<Steering>,
    /// Keyed by librist's peer id (creation order, from 1).
    reports: Mutex<HashMap<u32, PeerReport>>,
    stats: Mutex<BondStats>,
    input_bytes: AtomicU64,
    stop: AtomicBool,
}

/// A bonded RIST sender. See the crate docs.
pub struct BondedSender {
    shared: Arc<Shared>,
    controller: Option<JoinHandle<()>>,
    log: Option<LogSettings>,
    _tap: Arc<LogTap>,
    pending: Vec<u8>,
    /// Datagrams written before any link answered; librist would drop them.
    held: std::collections::VecDeque<Vec<u8>>,
    connected: bool,
}

/// Shortest spacing of two retransmissions of one packet over one peer, ms:
/// librist's receivers ask again after 1.1 x max(50 ms, RTT).
const RETRY_SPACING_MS: u32 = 50;
/// Most datagrams held while no link has answered yet (about 8 s at 5 Mbit/s).
const MAX_HELD: usize = 4096;
/// Time after a link's first answer before librist accepts data for it.
const CONNECT_SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

impl BondedSender {
    /// Creates the sender and its links, and starts streaming to them.
    pub fn new(cfg: SenderConfig, links: Vec<LinkSpec>) -> Result<Self, SendError> {
        let tap = Arc::new(LogTap::new("sender"));
        let log = LogSettings::new(&tap).map_err(|e| SendError::Rist(e.to_string()))?;
        let mut ctx = ptr::null_mut();
        // Main profile needs an even flow id.
        // SAFETY: plain call returning a random id.
        let flow_id = unsafe { sys::rist_flow_id_create() } & !1;
        // SAFETY: ctx is a valid out-pointer; log settings outlive the context (dropped after it).
        let rc = unsafe {
            sys::rist_sender_create(
                &mut ctx,
                sys::rist_profile::RIST_PROFILE_MAIN,
                flow_id,
                log.as_ptr(),
            )
        };
        if rc != 0 || ctx.is_null() {
            return Err(SendError::Rist(format!("rist_sender_create failed ({rc})")));
        }
        let shared = Arc::new(Shared {
            ctx: Ctx(ctx),
            cfg,
            slots: Mutex::new(Vec::new()),
            steering: Arc::default(),
            reports: Mutex::new(HashMap::new()),
            stats: Mutex::new(BondStats::default()),
            input_bytes: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let mut me = Self {
            shared,
            controller: None,
            log: Some(log),
            _tap: tap,
            pending: Vec::new(),
            held: Default::default(),
            connected: false,
        };
        // The stats interval is read once when the sender thread starts: set it first.
        set_stats_callback(
            me.shared.ctx,
            me.shared.cfg.controller.tick.as_millis() as i32,
            stats_cb,
            Arc::as_ptr(&me.shared) as *const c_void,
        )
        .map_err(|e| SendError::Rist(e.to_string()))?;
        for l in links {
            me.add_link(l)?;
        }
        // SAFETY: ctx is live.
        let rc = unsafe { sys::rist_start(ctx) };
        if rc != 0 {
            return Err(SendError::Rist(format!("rist_start failed ({rc})")));
        }
        let shared = me.shared.clone();
        me.controller = Some(
            std::thread::Builder::new()
                .name("rist-link-controller".into())
                .spawn(move || control_loop(&shared))?,
        );
        Ok(me)
    }

    /// Adds a link while streaming.
    pub fn add_link(&self, spec: LinkSpec) -> Result<(), SendError> {
        let sh = &self.shared;
        let mut slots = sh.slots.lock().expect("slots lock");
        if slots
            .iter()
            .any(|s| s.spec.name == spec.name && s.control.state() != LinkState::Removed)
        {
            return Err(SendError::DuplicateLink(spec.name));
        }
        let outside = relay::outside_socket(&spec.bind, &spec.remote)?;
        let initial = spec
            .initial_kbps
            .map_or(sh.cfg.controller.initial_kbps, f64::from);
        let now = Instant::now();
        let placement = |slot| Placement {
            slot,
            steering: sh.steering.clone(),
            reader: Reader::new(sh.cfg.psk.as_ref()),
        };
        // Reuse a removed link's peer: rebind its relay's loopback port.
        if let Some((i, slot)) = slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.control.state() == LinkState::Removed)
        {
            let (relay, _) = relay::start_sender_relay(
                &spec.name,
                slot.inside_port,
                outside,
                spec.remote,
                placement(i),
            )?;
            slot.relay = Some(relay);
            slot.control = LinkControl::new(now, initial);
            set_weight(sh.ctx, slot.peer, slot.control.weight());
            tracing::info!(link = %spec.name, remote = %spec.remote, "link added (reused peer)");
            slot.spec = spec;
            slot.share_start = 0;
            slot.share = 0.0;
            slot.loss = LossWindow::default();
            return Ok(());
        }
        let (relay, port) =
            relay::start_sender_relay(&spec.name, 0, outside, spec.remote, placement(slots.len()))?;
        let url = format!("rist://127.0.0.1:{port}");
        let control = LinkControl::new(now, initial);
        let mut pc = peer_config(
            &url,
            sh.cfg.psk.as_ref(),
            sh.cfg.buffer_ms,
            control.weight(),
            &sh.cfg.cname,
        )
        .map_err(|e| SendError::Rist(e.to_string()))?;
        // librist 0.2.7's sender answers a NACK for the same packet from the
        // same peer at most once per max(that peer's RTT, recovery_length_min):
        // with the minimum at the buffer length, a lost retransmission was
        // never sent again. A sender peer uses the minimum for nothing else.
        pc.recovery_length_min = RETRY_SPACING_MS;
        let mut peer = ptr::null_mut();
        // SAFETY: ctx is live and pc a valid configuration; librist copies it.
        let rc = unsafe { sys::rist_peer_create(sh.ctx.0, &mut peer, &pc) };
        scrub(&mut pc);
        if rc != 0 || peer.is_null() {
            return Err(SendError::Rist(format!(
                "rist_peer_create failed for link {:?} ({rc})",
                spec.name
            )));
        }
        tracing::info!(link = %spec.name, remote = %spec.remote, "link added");
        slots.push(Slot {
            spec,
            peer: Peer(peer),
            inside_port: port,
            relay: Some(relay),
            control,
            share_start: 0,
            share: 0.0,
            loss: LossWindow::default(),
        });
        Ok(())
    }

    /// Takes a link out of the bond while streaming.
    pub fn remove_link(&self, name: &str) -> Result<(), SendError> {
        let mut slots = self.shared.slots.lock().expect("slots lock");
        let slot = slots
            .iter_mut()
            .find(|s| s.spec.name == name && s.control.state() != LinkState::Removed)
            .ok_or_else(|| SendError::NoSuchLink(name.into()))?;
        slot.control.remove(Instant::now());
        // Weight 0 first (copies only), then silence the relay: no packet's only copy is lost.
        set_weight(self.shared.ctx, slot.peer, 0);
        slot.relay = None;
        tracing::info!(link = name, "link removed");
        Ok(())
    }

    /// Sends MPEG-TS: any number of whole 188-byte packets. Data is cut into
    /// datagrams of 7 TS packets; a remainder waits for the next call.
    pub fn send(&mut self, ts: &[u8]) -> Result<(), SendError> {
        if !ts.len().is_multiple_of(TS_PACKET) {
            return Err(SendError::NotTs(format!(
                "{} bytes is not a multiple of 188",
                ts.len()
            )));
        }
        if let Some(i) = (0..ts.len()).step_by(TS_PACKET).find(|i| ts[*i] != 0x47) {
            return Err(SendError::NotTs(format!("no sync byte at offset {i}")));
        }
        self.pending.extend_from_slice(ts);
        if !self.connected && self.any_link_heard() {
            self.connected = true;
            // librist's receiver starts its flow at the first packet to arrive
            // and drops anything older, so the first packet goes on every link.
            let first = match self.held.pop_front() {
                Some(d) => d,
                None => self
                    .pending
                    .drain(..DATAGRAM_PAYLOAD.min(self.pending.len()))
                    .collect(),
            };
            self.write_on_every_link(&first)?;
            while let Some(d) = self.held.pop_front() {
                write_block(self.shared.ctx, &d)?;
            }
        }
        let whole = self.pending.len() / DATAGRAM_PAYLOAD * DATAGRAM_PAYLOAD;
        for chunk in self.pending[..whole].chunks(DATAGRAM_PAYLOAD) {
            if self.connected {
                write_block(self.shared.ctx, chunk)?;
            } else {
                if self.held.len() == MAX_HELD {
                    self.held.pop_front();
                    tracing::warn!("no link has answered yet; dropping the oldest held datagram");
                }
                self.held.push_back(chunk.to_vec());
            }
        }
        self.pending.drain(..whole);
        self.shared
            .input_bytes
            .fetch_add(ts.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes one datagram with every link in duplicate mode (weight 0), then
    /// restores the controller's weights.
    fn write_on_every_link(&self, d: &[u8]) -> Result<(), SendError> {
        if d.is_empty() {
            return Ok(());
        }
        let slots = self.shared.slots.lock().expect("slots lock");
        for s in slots.iter() {
            set_weight(self.shared.ctx, s.peer, 0);
        }
        write_block(self.shared.ctx, d)?;
        // librist's sender thread picks the packet up within a few ms.
        std::thread::sleep(std::time::Duration::from_millis(20));
        for s in slots.iter() {
            set_weight(self.shared.ctx, s.peer, s.control.weight());
        }
        Ok(())
    }

    /// True once a link has answered and librist has had a moment to take the
    /// peer as connected (data written earlier is dropped by librist).
    fn any_link_heard(&self) -> bool {
        let slots = self.shared.slots.lock().expect("slots lock");
        slots.iter().any(|s| {
            s.relay
                .as_ref()
                .and_then(|r| r.counters().first_in())
                .is_some_and(|t| t.elapsed() >= CONNECT_SETTLE)
        })
    }

    /// Whether any link has answered (before that, input is held, not sent).
    pub fn is_connected(&self) -> bool {
        self.connected || self.any_link_heard()
    }

    /// Sends whatever is pending, even if it is less than 7 TS packets.
    pub fn flush(&mut self) -> Result<(), SendError> {
        if !self.pending.is_empty() {
            write_block(self.shared.ctx, &self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// The latest statistics (refreshed every controller tick).
    pub fn stats(&self) -> BondStats {
        self.shared.stats.lock().expect("stats lock").clone()
    }
}

impl Drop for BondedSender {
    fn drop(&mut self) {
        let _ = self.flush();
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.controller.take() {
            let _ = t.join();
        }
        // SAFETY: the context is live and destroyed once; callbacks stop with it.
        unsafe { sys::rist_destroy(self.shared.ctx.0) };
        for s in self.shared.slots.lock().expect("slots lock").iter_mut() {
            s.relay = None;
        }
        self.log = None;
    }
}

fn write_block(ctx: Ctx, payload: &[u8]) -> Result<(), SendError> {
    let block = sys::rist_data_block {
        payload: payload.as_ptr() as *const c_void,
        payload_len: payload.len(),
        ..Default::default()
    };
    // SAFETY: block points at payload for the duration of the call; librist copies it.
    let rc = unsafe { sys::rist_sender_data_write(ctx.0, &block) };
    if rc < 0 {
        return Err(SendError::Rist(format!(
            "rist_sender_data_write failed ({rc})"
        )));
    }
    Ok(())
}

fn set_weight(ctx: Ctx, peer: Peer, weight: u32) {
    // SAFETY: peer belongs to ctx and is never destroyed before the context.
    let rc = unsafe { sys::rist_peer_weight_set(ctx.0, peer.0, weight) };
    if rc != 0 {
        tracing::warn!("rist_peer_weight_set failed ({rc})");
    }
}

/// librist's stats callback (its own thread); `arg` is `*const Shared`.
unsafe extern "C" fn stats_cb(arg: *mut c_void, stats: *const sys::rist_stats) -> i32 {
    if arg.is_null() || stats.is_null() {
        return 0;
    }
    // SAFETY: arg is the Shared the sender keeps alive until after rist_destroy;
    // stats is valid until we free it below.
    let (sh, st) = unsafe { (&*(arg as *const Shared), &*stats) };
    if st.stats_type == sys::rist_stats_type::RIST_STATS_SENDER_PEER {
        // SAFETY: the union holds sender_peer for this stats_type.
        let p = unsafe { st.stats.sender_peer };
        let mut reports = sh.reports.lock().expect("reports lock");
        let r = reports.entry(p.peer_id).or_default();
        // The struct's rtt is an EWMA that starts from 0 and takes about a
        // second to converge; the JSON carries the last measured RTT.
        r.rtt_ms = last_measured_rtt(st).unwrap_or(p.rtt);
        // librist's counters are per interval.
        r.sent += p.sent;
    }
    // SAFETY: librist hands ownership of the container to the callback.
    unsafe { sys::rist_stats_free(stats) };
    0
}

/// The last measured RTT (`sender-stats.peer.stats.rtt`, librist's
/// `last_mrtt`) from a sender peer report's JSON.
fn last_measured_rtt(st: &sys::rist_stats) -> Option<u32> {
    if st.stats_json.is_null() {
        return None;
    }
    // SAFETY: stats_json is a NUL-terminated string owned by the container.
    let json = unsafe { std::ffi::CStr::from_ptr(st.stats_json) }.to_string_lossy();
    let v: serde_json::Value = serde_json::from_str(&json).ok()?;
    let rtt = v.pointer("/sender-stats/peer/stats/rtt")?.as_u64()?;
    (rtt > 0).then_some(rtt as u32)
}

fn control_loop(sh: &Shared) {
    let cfg = sh.cfg.controller.clone();
    let mut next = Instant::now() + cfg.tick;
    let mut last_share_at = Instant::now();
    while !sh.stop.load(Ordering::Relaxed) {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += cfg.tick;
        let now = Instant::now();
        let reports = sh.reports.lock().expect("reports lock").clone();
        let mut slots = sh.slots.lock().expect("slots lock");
        let obs: Vec<Observation> = slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let c = s.relay.as_ref().map(|r| r.counters().clone());
                Observation {
                    sent_bytes: c
                        .as_ref()
                        .map_or(0, |c| c.out_bytes.load(Ordering::Relaxed)),
                    last_heard: c.as_ref().and_then(|c| c.last_in()),
                    rtt_ms: reports.get(&(i as u32 + 1)).map(|r| r.rtt_ms),
                    media_packets: c
                        .as_ref()
                        .map_or(0, |c| c.media_out.load(Ordering::Relaxed)),
                    nacked_packets: c.as_ref().map_or(0, |c| c.nacked.load(Ordering::Relaxed)),
                }
            })
            .collect();
        let before: Vec<LinkState> = slots.iter().map(|s| s.control.state()).collect();
        let mut controls: Vec<&mut LinkControl> =
            slots.iter_mut().map(|s| &mut s.control).collect();
        let decisions = controller::tick(&cfg, now, &mut controls, &obs);
        // Where a dead link's last packets and every retransmission go.
        let live: Vec<(usize, f64)> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.control.state() == LinkState::Up)
            .map(|(i, s)| (i, s.control.capacity_kbps()))
            .collect();
        sh.steering.set_retransmit_link(controller::retransmit_link(
            slots.iter().map(|s| &s.control),
        ));
        for (i, ((s, d), before)) in slots.iter_mut().zip(&decisions).zip(before).enumerate() {
            if let Some(r) = &s.relay {
                let c = r.counters();
                // Silence the link before librist copies the stream to it.
                c.suppress_data.store(d.suppress_data, Ordering::Relaxed);
                let one_way = s.control.rtt_ms().unwrap_or(0) / 2;
                c.one_way_ms.store(one_way, Ordering::Relaxed);
                let kbps = s.control.capacity_kbps().round() as u32;
                c.capacity_kbps.store(kbps, Ordering::Relaxed);
            }
            if d.weight_changed {
                set_weight(sh.ctx, s.peer, d.weight);
            }
            if let Some(since) = d.rescue_since {
                let n = sh.steering.rescue(i, since, &live);
                tracing::info!(link = %s.spec.name, packets = n, "link dark: its last packets sent again on live links");
            }
            if before != d.state && before != LinkState::Removed {
                tracing::info!(link = %s.spec.name, state = ?d.state, weight = d.weight, "link state");
            }
        }
        // Shares over the last second.
        if now.duration_since(last_share_at).as_secs_f64() >= 1.0 {
            let deltas: Vec<u64> = slots
                .iter()
                .map(|s| relay_bytes(s).saturating_sub(s.share_start))
                .collect();
            let total: u64 = deltas.iter().sum();
            for (s, d) in slots.iter_mut().zip(deltas) {
                s.share = if total > 0 {
                    d as f64 / total as f64
                } else {
                    0.0
                };
                s.share_start = relay_bytes(s);
                if let Some(r) = &s.relay {
                    s.loss.push(now, r.counters());
                }
            }
            last_share_at = now;
        }
        let links: Vec<LinkStats> = slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let r = reports.get(&(i as u32 + 1)).copied().unwrap_or_default();
                LinkStats {
                    name: s.spec.name.clone(),
                    state: s.control.state(),
                    rtt_ms: (r.rtt_ms > 0).then_some(r.rtt_ms),
                    base_rtt_ms: s.control.base_rtt_ms(),
                    sent_packets: r.sent,
                    retransmitted_packets: counter(s, |c| &c.retransmits_out),
                    sent_bytes: relay_bytes(s),
                    sent_kbps: s.control.sent_kbps(),
                    capacity_kbps: s.control.capacity_kbps(),
                    weight: s.control.weight(),
                    share: s.share,
                    loss_percent: s.loss.loss_percent(),
                    retransmit_percent: s.loss.retransmit_percent(),
                    media_packets: counter(s, |c| &c.media_out),
                    nacked_packets: counter(s, |c| &c.nacked),
                    early_nacks: counter(s, |c| &c.early_nacks),
                    rescued_packets: counter(s, |c| &c.rescued),
                    send_errors: counter(s, |c| &c.send_errors),
                }
            })
            .collect();
        let usable = controller::usable_kbps(&cfg, slots.iter().map(|s| &s.control));
        drop(slots);
        let mut st = sh.stats.lock().expect("stats lock");
        st.sent_kbps = links.iter().map(|l| l.sent_kbps).sum();
        st.retransmitted_packets = links.iter().map(|l| l.retransmitted_packets).sum();
        st.links = links;
        st.usable_kbps = usable;
        st.input_bytes = sh.input_bytes.load(Ordering::Relaxed);
    }
}

fn relay_bytes(s: &Slot) -> u64 {
    counter(s, |c| &c.out_bytes)
}

/// One of the link's relay counters (0 while the link is removed).
fn counter(s: &Slot, which: impl Fn(&relay::RelayCounters) -> &AtomicU64) -> u64 {
    s.relay
        .as_ref()
        .map_or(0, |r| which(r.counters()).load(Ordering::Relaxed))
}

/// A link's loss and retransmission share over the last [`LossWindow::SPAN`]
/// seconds, from its relay's counters sampled once a second.
#[derive(Debug, Default)]
struct LossWindow {
    /// (when, media sent, NACKed, datagrams out, retransmissions out).
    samples: std::collections::VecDeque<(Instant, [u64; 4])>,
}

impl LossWindow {
    /// Seconds of history the figures cover.
    const SPAN: usize = 10;

    fn push(&mut self, now: Instant, c: &relay::RelayCounters) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let v = [
            load(&c.media_out),
            load(&c.nacked),
            load(&c.out_packets),
            load(&c.retransmits_out),
        ];
        if self.samples.len() > Self::SPAN {
            self.samples.pop_front();
        }
        self.samples.push_back((now, v));
    }

    /// Change of counter `i` over the window.
    fn delta(&self, i: usize) -> u64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) => b.1[i].saturating_sub(a.1[i]),
            _ => 0,
        }
    }

    /// Media this link carried that the receiver NACKed, % of its media.
    fn loss_percent(&self) -> f64 {
        percent(self.delta(1), self.delta(0))
    }

    /// Retransmissions among the datagrams this link sent, %.
    fn retransmit_percent(&self) -> f64 {
        percent(self.delta(3), self.delta(2))
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (100.0 * part as f64 / whole as f64).min(100.0)
    }
}
