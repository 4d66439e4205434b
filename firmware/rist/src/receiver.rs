//! `BondedReceiver`: librist main-profile receiver listening on one port per
//! link (each behind a kernel filter, see [`port`](crate::port)), yielding the
//! reassembled TS.

use std::collections::BTreeMap;
use std::ffi::{CStr, c_void};
use std::net::SocketAddr;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_rist_sys as sys;

use crate::log::{LogSettings, LogTap};
use crate::peer::{Ctx, peer_config, scrub, set_stats_callback};
use crate::port::{self, Port};
use crate::psk::Psk;
use crate::stats::{FlowStats, PeerStats, PortStats};

/// How a bonded receiver is set up.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// One address per link (port 0 picks a free port; see [`BondedReceiver::ports`]).
    pub listen: Vec<SocketAddr>,
    /// Passphrase; must match the sender's.
    pub psk: Option<Psk>,
    /// Recovery buffer in ms (added latency).
    pub buffer_ms: u32,
}

/// Why the receiver failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// librist refused.
    #[error("librist: {0}")]
    Rist(String),
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Socket or thread set-up failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Flow counters summed over librist's per-interval reports.
#[derive(Debug, Default)]
struct FlowTotals {
    received: u64,
    recovered: u64,
    lost: u64,
    missing: u64,
    reordered: u64,
    bitrate_kbps: f64,
    /// Per sender link (librist peer id), from librist's JSON report, with
    /// when librist last listed it.
    peers: BTreeMap<u32, (PeerStats, Instant)>,
}

/// A link librist has not listed for this long is dropped from the stats (a
/// modem that changed address shows up as a new link; the old one would
/// otherwise stay listed for the life of the stream).
const FORGET_PEER: Duration = Duration::from_secs(60);

struct Shared {
    flow: Mutex<FlowTotals>,
    output_bytes: AtomicU64,
    /// Callback mode: librist's output thread hands each datagram here.
    on_data: Option<DataCallback>,
}

/// Receives each datagram of reassembled TS on librist's output thread; must
/// not block (it holds up the output of the whole flow).
pub type DataCallback = Box<dyn Fn(&[u8]) + Send + Sync>;

/// A bonded RIST receiver. See the crate docs.
pub struct BondedReceiver {
    ctx: Ctx,
    ports: Vec<Port>,
    shared: Arc<Shared>,
    tap: Arc<LogTap>,
    log: Option<LogSettings>,
}

impl BondedReceiver {
    /// Binds every port and starts receiving.
    pub fn new(cfg: ReceiverConfig) -> Result<Self, ReceiveError> {
        Self::build(cfg, None)
    }

    /// Like [`new`](Self::new), but every datagram goes to `on_data` as librist
    /// outputs it, with no queue and no thread of ours in between; `read` is
    /// then not available.
    pub fn with_callback(cfg: ReceiverConfig, on_data: DataCallback) -> Result<Self, ReceiveError> {
        Self::build(cfg, Some(on_data))
    }

    fn build(cfg: ReceiverConfig, on_data: Option<DataCallback>) -> Result<Self, ReceiveError> {
        if cfg.listen.is_empty() {
            return Err(ReceiveError::Rist("no port to listen on".into()));
        }
        let tap = Arc::new(LogTap::new("receiver"));
        let log = LogSettings::new(&tap).map_err(|e| ReceiveError::Rist(e.to_string()))?;
        let mut ctx = ptr::null_mut();
        // SAFETY: ctx is a valid out-pointer; log settings outlive the context.
        let rc = unsafe {
            sys::rist_receiver_create(&mut ctx, sys::rist_profile::RIST_PROFILE_MAIN, log.as_ptr())
        };
        if rc != 0 || ctx.is_null() {
            return Err(ReceiveError::Rist(format!(
                "rist_receiver_create failed ({rc})"
            )));
        }
        let callback_mode = on_data.is_some();
        let shared = Arc::new(Shared {
            flow: Mutex::new(FlowTotals::default()),
            output_bytes: AtomicU64::new(0),
            on_data,
        });
        let mut me = Self {
            ctx: Ctx(ctx),
            ports: Vec::new(),
            shared,
            tap,
            log: Some(log),
        };
        // Once a second, as the worker's stats events: each report is a JSON
        // document librist builds and we parse.
        set_stats_callback(
            me.ctx,
            1000,
            stats_cb,
            Arc::as_ptr(&me.shared) as *const c_void,
        )
        .map_err(|e| ReceiveError::Rist(e.to_string()))?;
        if callback_mode {
            // SAFETY: ctx is live and not started; Shared outlives the context.
            let rc = unsafe {
                sys::rist_receiver_data_callback_set2(
                    ctx,
                    Some(data_cb),
                    Arc::as_ptr(&me.shared) as *mut c_void,
                )
            };
            // Without this librist also fills its read FIFO, which nobody drains.
            // SAFETY: as above; 0 is a valid (power-of-two) size meaning "none".
            let fifo = unsafe { sys::rist_receiver_set_output_fifo_size(ctx, 0) };
            if rc != 0 || fifo != 0 {
                return Err(ReceiveError::Rist(format!(
                    "cannot set the data callback ({rc}, {fifo})"
                )));
            }
        }
        for addr in &cfg.listen {
            let bind_err = |source| ReceiveError::Bind {
                addr: *addr,
                source,
            };
            let addr = port::resolve(*addr).map_err(bind_err)?;
            let url = match addr {
                SocketAddr::V4(a) => format!("rist://@{a}"),
                SocketAddr::V6(a) => format!("rist://@[{}]:{}", a.ip(), a.port()),
            };
            let mut pc = peer_config(&url, cfg.psk.as_ref(), cfg.buffer_ms, 0, "strata-receiver")
                .map_err(|e| ReceiveError::Rist(e.to_string()))?;
            let mut peer = ptr::null_mut();
            // SAFETY: ctx is live and pc valid; librist copies it.
            let rc = unsafe { sys::rist_peer_create(ctx, &mut peer, &pc) };
            scrub(&mut pc);
            if rc != 0 {
                return Err(ReceiveError::Rist(format!(
                    "rist_peer_create failed for {addr} ({rc})"
                )));
            }
            me.ports.push(Port::adopt(addr).map_err(bind_err)?);
        }
        // SAFETY: ctx is live.
        let rc = unsafe { sys::rist_start(ctx) };
        if rc != 0 {
            return Err(ReceiveError::Rist(format!("rist_start failed ({rc})")));
        }
        Ok(me)
    }

    /// The ports listened on, in the order given.
    pub fn ports(&self) -> Vec<u16> {
        self.ports.iter().map(|p| p.port).collect()
    }

    /// Waits up to `timeout` for the next datagram of reassembled TS.
    pub fn read(&self, timeout: Duration) -> Result<Option<Vec<u8>>, ReceiveError> {
        if self.shared.on_data.is_some() {
            return Err(ReceiveError::Rist(
                "this receiver hands data to its callback".into(),
            ));
        }
        let mut block: *mut sys::rist_data_block = ptr::null_mut();
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: ctx is live; block is a valid out-pointer.
        let rc = unsafe { sys::rist_receiver_data_read2(self.ctx.0, &mut block, ms) };
        if rc < 0 {
            return Err(ReceiveError::Rist(format!(
                "rist_receiver_data_read2 failed ({rc})"
            )));
        }
        if block.is_null() {
            return Ok(None);
        }
        // SAFETY: librist returned a valid block whose payload is payload_len bytes.
        let data = unsafe {
            let b = &*block;
            std::slice::from_raw_parts(b.payload as *const u8, b.payload_len).to_vec()
        };
        // SAFETY: block came from data_read2 and is freed once.
        unsafe { sys::rist_receiver_data_block_free2(&mut block) };
        self.shared
            .output_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(Some(data))
    }

    /// Flow and per-port statistics now.
    pub fn stats(&self) -> FlowStats {
        let f = self.shared.flow.lock().expect("flow lock");
        let ports: Vec<PortStats> = self
            .ports
            .iter()
            .map(|p| PortStats {
                port: p.port,
                garbage: p.dropped(),
            })
            .collect();
        let garbage = ports.iter().map(|p| p.garbage).sum::<u64>()
            + self.tap.malformed.load(Ordering::Relaxed);
        let auth_failures = self.tap.auth_failures.load(Ordering::Relaxed);
        let problem = if f.received == 0 {
            self.tap.auth_problem()
        } else {
            None
        };
        FlowStats {
            received: f.received,
            recovered: f.recovered,
            lost: f.lost,
            missing: f.missing,
            reordered: f.reordered,
            output_bytes: self.shared.output_bytes.load(Ordering::Relaxed),
            bitrate_kbps: f.bitrate_kbps,
            garbage_datagrams: garbage,
            auth_failures,
            ports,
            peers: f.peers.values().map(|(p, _)| p.clone()).collect(),
            problem,
        }
    }
}

impl Drop for BondedReceiver {
    fn drop(&mut self) {
        // SAFETY: the context is live and destroyed once; callbacks stop with it.
        unsafe { sys::rist_destroy(self.ctx.0) };
        self.ports.clear();
        self.log = None;
    }
}

// SAFETY: all librist calls on the context are internally locked; the rest is Sync.
unsafe impl Send for BondedReceiver {}
// SAFETY: as above.
unsafe impl Sync for BondedReceiver {}

/// librist's data callback (its output thread); `arg` is `*const Shared`.
unsafe extern "C" fn data_cb(arg: *mut c_void, block: *mut sys::rist_data_block) -> i32 {
    if arg.is_null() || block.is_null() {
        return 0;
    }
    // SAFETY: arg is the Shared kept alive until after rist_destroy; the block
    // and its payload are valid until we free it below.
    let (sh, data) = unsafe {
        let b = &*block;
        (
            &*(arg as *const Shared),
            std::slice::from_raw_parts(b.payload as *const u8, b.payload_len),
        )
    };
    sh.output_bytes
        .fetch_add(data.len() as u64, Ordering::Relaxed);
    if let Some(f) = &sh.on_data {
        f(data);
    }
    let mut block = block;
    // SAFETY: the callback owns a reference to the block and frees it once.
    unsafe { sys::rist_receiver_data_block_free2(&mut block) };
    0
}

/// librist's stats callback; `arg` is `*const Shared`.
unsafe extern "C" fn stats_cb(arg: *mut c_void, stats: *const sys::rist_stats) -> i32 {
    if arg.is_null() || stats.is_null() {
        return 0;
    }
    // SAFETY: arg is the Shared kept alive until after rist_destroy; stats is
    // valid until freed below.
    let (sh, st) = unsafe { (&*(arg as *const Shared), &*stats) };
    if st.stats_type == sys::rist_stats_type::RIST_STATS_RECEIVER_FLOW {
        // SAFETY: the union holds receiver_flow for this stats_type.
        let r = unsafe { st.stats.receiver_flow };
        let mut f = sh.flow.lock().expect("flow lock");
        // librist's counters are per interval.
        f.received += r.received;
        f.recovered += u64::from(r.recovered);
        f.lost += u64::from(r.lost);
        f.missing += u64::from(r.missing);
        f.reordered += u64::from(r.reordered);
        f.bitrate_kbps = r.bandwidth as f64 / 1000.0;
        if !st.stats_json.is_null() {
            // SAFETY: stats_json is a NUL-terminated string owned by the container.
            let json = unsafe { CStr::from_ptr(st.stats_json) }.to_string_lossy();
            update_peers(&mut f.peers, &peers_of(&json), Instant::now());
        }
    }
    // SAFETY: librist hands ownership of the container to the callback.
    unsafe { sys::rist_stats_free(stats) };
    0
}

/// One sender link in one of librist's JSON flow reports.
#[derive(Debug, Clone, PartialEq)]
struct PeerReport {
    id: u32,
    rtt_ms: u32,
    alive: bool,
    /// Data packets received over the report's interval.
    received: u64,
    bitrate_bps: f64,
}

/// The sender links in librist's JSON flow report (librist 0.2.7 layout:
/// `receiver-stats.flowinstant.peers[] = {id, dead, stats: {rtt,
/// received_data, bitrate, ...}}`, counters per interval).
fn peers_of(json: &str) -> Vec<PeerReport> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let Some(peers) = v
        .pointer("/receiver-stats/flowinstant/peers")
        .and_then(|p| p.as_array())
    else {
        return Vec::new();
    };
    peers
        .iter()
        .filter_map(|p| {
            let stat = |k: &str| {
                p.get("stats")
                    .and_then(|s| s.get(k))
                    .and_then(|v| v.as_f64())
            };
            Some(PeerReport {
                id: p.get("id")?.as_u64()? as u32,
                rtt_ms: stat("rtt")? as u32,
                alive: p.get("dead").and_then(|d| d.as_u64()) == Some(0),
                received: stat("received_data").unwrap_or(0.0) as u64,
                bitrate_bps: stat("bitrate").unwrap_or(0.0),
            })
        })
        .collect()
}

/// Folds one report, received at `now`, into the running per-link figures:
/// packets add up, RTT, bit rate and share are the report's. Links librist no
/// longer lists keep their totals, marked not alive, for [`FORGET_PEER`].
fn update_peers(
    peers: &mut BTreeMap<u32, (PeerStats, Instant)>,
    report: &[PeerReport],
    now: Instant,
) {
    let total: f64 = report.iter().map(|r| r.bitrate_bps).sum();
    peers.retain(|_, (_, heard)| now.duration_since(*heard) < FORGET_PEER);
    for (p, _) in peers.values_mut() {
        p.alive = false;
        p.bitrate_kbps = 0.0;
        p.share = 0.0;
    }
    for r in report {
        let (p, heard) = peers.entry(r.id).or_insert_with(|| {
            let p = PeerStats {
                id: r.id,
                ..PeerStats::default()
            };
            (p, now)
        });
        *heard = now;
        p.rtt_ms = r.rtt_ms;
        p.alive = r.alive;
        p.packets += r.received;
        p.bitrate_kbps = r.bitrate_bps / 1000.0;
        p.share = if total > 0.0 {
            r.bitrate_bps / total
        } else {
            0.0
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_peers_from_librist_json_and_adds_them_up() {
        let j = r#"{"receiver-stats":{"flowinstant":{"flow_id":2,"dead":0,"stats":{},
            "peers":[{"id":1,"dead":0,"stats":{"rtt":41,"received_data":30,"bitrate":3000000}},
                     {"id":2,"dead":1,"stats":{"rtt":70,"received_data":10,"bitrate":1000000}}]}}}"#;
        let r = peers_of(j);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].id, r[0].rtt_ms, r[0].alive, r[0].received),
            (1, 41, true, 30)
        );
        assert_eq!((r[1].id, r[1].alive), (2, false));
        assert!(peers_of("not json").is_empty());
        let mut peers = BTreeMap::new();
        let t0 = Instant::now();
        update_peers(&mut peers, &r, t0);
        update_peers(&mut peers, &r[..1], t0);
        let (a, b) = (&peers[&1].0, &peers[&2].0);
        assert_eq!((a.packets, a.rtt_ms, a.alive), (60, 41, true));
        assert!((a.share - 1.0).abs() < 1e-9 && (a.bitrate_kbps - 3000.0).abs() < 1e-9);
        assert_eq!((b.packets, b.alive, b.share), (10, false, 0.0));
        update_peers(&mut peers, &r, t0);
        assert!((peers[&1].0.share - 0.75).abs() < 1e-9, "{peers:?}");
        // A link librist stopped listing is forgotten after a while.
        update_peers(&mut peers, &r[..1], t0 + FORGET_PEER / 2);
        assert!(peers.contains_key(&2));
        update_peers(&mut peers, &r[..1], t0 + FORGET_PEER + FORGET_PEER / 2);
        assert_eq!(peers.keys().collect::<Vec<_>>(), [&1]);
    }
}
