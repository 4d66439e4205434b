//! `BondedReceiver`: librist main-profile receiver listening (through our
//! relays) on one port per link, yielding the reassembled TS.

use std::ffi::{CStr, c_void};
use std::net::{SocketAddr, UdpSocket};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_rist_sys as sys;

use crate::log::{LogSettings, LogTap};
use crate::peer::{Ctx, peer_config, scrub, set_stats_callback};
use crate::psk::Psk;
use crate::relay::{self, Relay};
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
    /// Per sender link, from librist's JSON report.
    peers: Vec<PeerStats>,
}

struct Shared {
    flow: Mutex<FlowTotals>,
    output_bytes: AtomicU64,
    /// Callback mode: librist's output thread hands each datagram here.
    on_data: Option<DataCallback>,
}

/// Receives each datagram of reassembled TS on librist's output thread; must
/// not block (it holds up the output of the whole flow).
pub type DataCallback = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Port share window: when it started and each port's bytes then.
struct ShareWindow {
    at: Instant,
    start: Vec<u64>,
    shares: Vec<f64>,
}

/// A bonded RIST receiver. See the crate docs.
pub struct BondedReceiver {
    ctx: Ctx,
    ports: Vec<(u16, Relay)>,
    shared: Arc<Shared>,
    share: Mutex<ShareWindow>,
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
            share: Mutex::new(ShareWindow {
                at: Instant::now(),
                start: Vec::new(),
                shares: Vec::new(),
            }),
            tap,
            log: Some(log),
        };
        set_stats_callback(
            me.ctx,
            250,
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
            let outside = UdpSocket::bind(addr).map_err(|source| ReceiveError::Bind {
                addr: *addr,
                source,
            })?;
            socket2::SockRef::from(&outside).set_recv_buffer_size(1 << 21)?;
            let port = outside.local_addr()?.port();
            let inner = relay::free_loopback_port()?;
            let mut pc = peer_config(
                &format!("rist://@127.0.0.1:{inner}"),
                cfg.psk.as_ref(),
                cfg.buffer_ms,
                0,
                "strata-receiver",
            )
            .map_err(|e| ReceiveError::Rist(e.to_string()))?;
            let mut peer = ptr::null_mut();
            // SAFETY: ctx is live and pc valid; librist copies it.
            let rc = unsafe { sys::rist_peer_create(ctx, &mut peer, &pc) };
            scrub(&mut pc);
            if rc != 0 {
                return Err(ReceiveError::Rist(format!(
                    "rist_peer_create failed for port {port} ({rc})"
                )));
            }
            me.ports
                .push((port, relay::start_receiver_relay(outside, inner)?));
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
        self.ports.iter().map(|p| p.0).collect()
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
        let bytes: Vec<u64> = self
            .ports
            .iter()
            .map(|(_, r)| r.counters.out_bytes.load(Ordering::Relaxed))
            .collect();
        let shares = {
            let mut w = self.share.lock().expect("share lock");
            if w.start.len() != bytes.len() {
                w.start = vec![0; bytes.len()];
            }
            if w.at.elapsed() >= Duration::from_secs(1) {
                let d: Vec<u64> = bytes.iter().zip(&w.start).map(|(b, s)| b - s).collect();
                let total: u64 = d.iter().sum();
                w.shares = d
                    .iter()
                    .map(|x| {
                        if total > 0 {
                            *x as f64 / total as f64
                        } else {
                            0.0
                        }
                    })
                    .collect();
                w.start = bytes.clone();
                w.at = Instant::now();
            }
            w.shares.clone()
        };
        let ports: Vec<PortStats> = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, (port, r))| PortStats {
                port: *port,
                packets: r.counters.out_packets.load(Ordering::Relaxed),
                bytes: bytes[i],
                share: shares.get(i).copied().unwrap_or(0.0),
                garbage: r.counters.garbage.load(Ordering::Relaxed),
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
            peers: f.peers.clone(),
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
            f.peers = peers_of(&json);
        }
    }
    // SAFETY: librist hands ownership of the container to the callback.
    unsafe { sys::rist_stats_free(stats) };
    0
}

/// The sender links in librist's JSON flow report (librist 0.2.7 layout:
/// `receiver-stats.flowinstant.peers[] = {id, dead, stats: {rtt, ...}}`).
fn peers_of(json: &str) -> Vec<PeerStats> {
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
            Some(PeerStats {
                id: p.get("id")?.as_u64()? as u32,
                rtt_ms: p.pointer("/stats/rtt")?.as_u64()? as u32,
                alive: p.get("dead").and_then(|d| d.as_u64()) == Some(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_peers_from_librist_json() {
        let j = r#"{"receiver-stats":{"flowinstant":{"flow_id":2,"dead":0,"stats":{},
            "peers":[{"id":1,"dead":0,"stats":{"rtt":41}},{"id":2,"dead":1,"stats":{"rtt":70}}]}}}"#;
        let p = peers_of(j);
        assert_eq!(
            p,
            vec![
                PeerStats {
                    id: 1,
                    rtt_ms: 41,
                    alive: true
                },
                PeerStats {
                    id: 2,
                    rtt_ms: 70,
                    alive: false
                }
            ]
        );
        assert!(peers_of("not json").is_empty());
    }
}
