//! Where a sender's media leaves when librist's own choice would lose it.
//!
//! librist sends a retransmission back over the peer the receiver's NACK came
//! in on, and a librist receiver sends its NACKs over the peer with the lowest
//! RTT. That is usually the bond's smallest link; when another link dies, every
//! packet it lost is resent over that one, whose bottleneck queue then drops
//! them. And a packet in flight on a link that dies is only recovered once the
//! receiver notices and its NACK makes the round trip.
//!
//! So the relays steer (they see every datagram and own every link's socket):
//! - a retransmission leaves by the link the controller picked
//!   ([`Steering::set_retransmit_link`]: an up link with room and a short RTT),
//!   whatever peer librist gave it to;
//! - every NACKed packet counts against the link that first carried it (the
//!   RTP sequence number says which): that is each link's real loss;
//! - a NACK that left the receiver before the packet could have arrived over
//!   its link is not answered. librist's receiver asks for a packet 25 ms
//!   after a later one arrived; over links whose delays differ by more than
//!   that (a slower path, or a burst of librist's round robin queued behind a
//!   narrow link), it asks for most of the slower link's packets, and librist
//!   would send them all twice. When a packet is due is estimated per link
//!   as a bottleneck of the controller's capacity estimate (a virtual queue)
//!   plus half the link's RTT. Only one NACK per packet goes unanswered: if
//!   the packet really was lost, the receiver asks again a round trip later,
//!   and that request is answered;
//! - the media a link carried in its last moments is kept for a second, and
//!   sent again on the live links the moment the link is declared dark
//!   ([`Steering::rescue`]), before any NACK.
//!
//! A RIST receiver takes a packet on any of its ports: librist's receiver
//! puts all of a flow's peers into one buffer keyed by RTP sequence number,
//! and decrypts each datagram with the nonce it carries. So the wire stays
//! standard RIST.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::datagram::Media;
use crate::relay::RelayCounters;

/// How long a link's sent media is kept for a rescue.
const RECENT: Duration = Duration::from_secs(1);
/// And at most this many datagrams (a second at about 15 Mbit/s).
const MAX_RECENT: usize = 1500;
/// A due time that says: answer the next NACK for this packet.
const ANSWER: u32 = 0;
/// Longest wait the virtual bottleneck queue allows for, µs.
const MAX_QUEUE_US: u64 = 300_000;
/// No link chosen: a retransmission stays where librist put it.
const NO_LINK: usize = usize::MAX;
/// A NACK counts as early unless it left the receiver this long after the
/// packet was due, ms. Erring late costs a real loss one NACK round trip;
/// erring early sends a copy of most of the slower links' packets.
const EARLY_SLACK_MS: u32 = 5;

/// A datagram a link carried.
struct Sent {
    at: Instant,
    seq: u16,
    datagram: Vec<u8>,
}

/// One link's way out, usable from any relay's thread.
pub(crate) struct Uplink {
    socket: Arc<UdpSocket>,
    remote: SocketAddr,
    /// The link's counters (shared with its relay and the controller).
    pub counters: Arc<RelayCounters>,
    recent: Mutex<VecDeque<Sent>>,
    /// The virtual bottleneck queue's end, µs after the steering's epoch.
    busy_until_us: Mutex<u64>,
}

impl Uplink {
    /// The way out through `socket` to `remote`.
    pub fn new(socket: Arc<UdpSocket>, remote: SocketAddr, counters: Arc<RelayCounters>) -> Self {
        Self {
            socket,
            remote,
            counters,
            recent: Mutex::new(VecDeque::new()),
            busy_until_us: Mutex::new(0),
        }
    }

    /// The link's socket (its relay reads replies from it).
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// The receiver's address for this link.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Sends one datagram up the link and counts it.
    pub fn send(&self, d: &[u8]) {
        match self.socket.send_to(d, self.remote) {
            Ok(_) => self.counters.mark_out(d.len()),
            Err(_) => {
                self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// When a datagram of `len` bytes sent at `now_us` leaves the link's
    /// bottleneck, if the link carries what the controller estimates
    /// (`capacity_kbps`): the virtual queue's clock, in µs after the epoch.
    fn departure_us(&self, now_us: u64, len: usize) -> u64 {
        let kbps = u64::from(self.counters.capacity_kbps.load(Ordering::Relaxed));
        if kbps == 0 {
            return now_us;
        }
        let serialize = len as u64 * 8 * 1000 / kbps;
        let mut busy = self.busy_until_us.lock().expect("queue lock");
        // A real bottleneck drops what would wait longer than its buffer.
        *busy = ((*busy).max(now_us) + serialize).min(now_us + MAX_QUEUE_US);
        *busy
    }

    /// Keeps a copy of media sent at `at`, reusing the oldest copy's buffer
    /// once it has aged out.
    fn remember(&self, at: Instant, seq: u16, d: &[u8]) {
        let mut recent = self.recent.lock().expect("recent lock");
        let reuse = match recent.front() {
            Some(s) if recent.len() >= MAX_RECENT || at.duration_since(s.at) > RECENT => {
                recent.pop_front().map(|s| s.datagram)
            }
            _ => None,
        };
        let mut datagram = reuse.unwrap_or_default();
        datagram.clear();
        datagram.extend_from_slice(d);
        recent.push_back(Sent { at, seq, datagram });
    }
}

/// What the relays of one sender share.
pub(crate) struct Steering {
    /// Every link's way out, by slot; `None` while the slot is removed.
    uplinks: RwLock<Vec<Option<Arc<Uplink>>>>,
    /// Slot that carries retransmissions, or [`NO_LINK`].
    retransmit_link: AtomicUsize,
    /// Per RTP sequence number, the slot + 1 that last carried it (0: none).
    carrier: Box<[AtomicU8]>,
    /// Per RTP sequence number, when it is due at the receiver over the
    /// link that last carried it, in ms after `epoch`.
    due_ms: Box<[AtomicU32]>,
    epoch: Instant,
}

impl Default for Steering {
    fn default() -> Self {
        Self {
            uplinks: RwLock::default(),
            retransmit_link: AtomicUsize::new(NO_LINK),
            carrier: (0..=u16::MAX).map(|_| AtomicU8::new(0)).collect(),
            due_ms: (0..=u16::MAX).map(|_| AtomicU32::new(0)).collect(),
            epoch: Instant::now(),
        }
    }
}

impl Steering {
    /// Registers the way out of `slot` (a new link, or a reused slot).
    pub fn attach(&self, slot: usize, uplink: Arc<Uplink>) {
        let mut u = self.uplinks.write().expect("uplinks lock");
        if u.len() <= slot {
            u.resize(slot + 1, None);
        }
        u[slot] = Some(uplink);
    }

    /// Forgets the way out of `slot`, if it is still `uplink`.
    pub fn detach(&self, slot: usize, uplink: &Arc<Uplink>) {
        let mut u = self.uplinks.write().expect("uplinks lock");
        if let Some(e) = u.get_mut(slot)
            && e.as_ref().is_some_and(|x| Arc::ptr_eq(x, uplink))
        {
            *e = None;
        }
    }

    /// Where retransmissions go from now on (`None`: where librist puts them).
    pub fn set_retransmit_link(&self, slot: Option<usize>) {
        self.retransmit_link
            .store(slot.unwrap_or(NO_LINK), Ordering::Relaxed);
    }

    fn uplink(&self, slot: usize) -> Option<Arc<Uplink>> {
        let u = self.uplinks.read().expect("uplinks lock");
        u.get(slot).cloned().flatten()
    }

    /// One datagram librist handed to the relay of `slot`: control goes out
    /// on its own link, a retransmission by the chosen link, new media on
    /// its own link unless the link is dark (`suppress`: librist's copies).
    pub fn forward(&self, slot: usize, own: &Uplink, media: Option<Media>, d: &[u8]) {
        let Some(m) = media else {
            own.send(d);
            return;
        };
        if m.retransmit {
            let carrier = self.carrier[usize::from(m.seq)].load(Ordering::Relaxed);
            let carrier = carrier.checked_sub(1).and_then(|c| self.uplink(c.into()));
            if let Some(c) = &carrier {
                // The NACK came back over this relay's link.
                let due = self.due_ms[usize::from(m.seq)].load(Ordering::Relaxed);
                let own_way = own.counters.one_way_ms.load(Ordering::Relaxed);
                if due != ANSWER && self.now_ms() < due + own_way + EARLY_SLACK_MS {
                    // Once per packet: the due time is an estimate, and a
                    // packet the receiver still misses a round trip later
                    // must not wait on it.
                    self.due_ms[usize::from(m.seq)].store(ANSWER, Ordering::Relaxed);
                    c.counters.early_nacks.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // Counted once per packet: the link lost it once, however
                // often the receiver asks (a retransmission can be lost too).
                self.carrier[usize::from(m.seq)].store(0, Ordering::Relaxed);
                c.counters.nacked.fetch_add(1, Ordering::Relaxed);
            }
            let to = self.retransmit_link.load(Ordering::Relaxed);
            match (to != slot).then(|| self.uplink(to)).flatten() {
                Some(u) => {
                    u.send(d);
                    u.counters.retransmits_out.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    own.send(d);
                    own.counters.retransmits_out.fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        if own.counters.suppress_data.load(Ordering::Relaxed) {
            own.counters.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.mark_carrier(m.seq, slot, own, d.len());
        own.counters.media_out.fetch_add(1, Ordering::Relaxed);
        own.remember(Instant::now(), m.seq, d);
        own.send(d);
    }

    /// Notes that `slot` carries `seq` (`len` bytes) now, and when it is due.
    fn mark_carrier(&self, seq: u16, slot: usize, link: &Uplink, len: usize) {
        let v = u8::try_from(slot + 1).unwrap_or(0);
        self.carrier[usize::from(seq)].store(v, Ordering::Relaxed);
        let now_us = self.epoch.elapsed().as_micros() as u64;
        let due_us = link.departure_us(now_us, len)
            + 1000 * u64::from(link.counters.one_way_ms.load(Ordering::Relaxed));
        let due_ms = ((due_us / 1000) as u32).max(ANSWER + 1);
        self.due_ms[usize::from(seq)].store(due_ms, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u32 {
        self.epoch.elapsed().as_millis() as u32
    }

    /// Sends the media `dark` carried since `since` again over the links in
    /// `to` (slot, weight), in proportion to their weights. Returns how many
    /// datagrams went out again.
    pub fn rescue(&self, dark: usize, since: Instant, to: &[(usize, f64)]) -> usize {
        let Some(src) = self.uplink(dark) else {
            return 0;
        };
        let targets: Vec<(Arc<Uplink>, usize, f64)> = to
            .iter()
            .filter(|(s, w)| *s != dark && *w > 0.0)
            .filter_map(|&(s, w)| self.uplink(s).map(|u| (u, s, w)))
            .collect();
        if targets.is_empty() {
            return 0;
        }
        let packets: Vec<(u16, Vec<u8>)> = {
            let recent = src.recent.lock().expect("recent lock");
            recent
                .iter()
                .filter(|s| s.at >= since)
                .map(|s| (s.seq, s.datagram.clone()))
                .collect()
        };
        // Smooth weighted round robin: each target gets its share, interleaved.
        let total: f64 = targets.iter().map(|t| t.2).sum();
        let mut credit = vec![0.0; targets.len()];
        for (seq, d) in &packets {
            for (c, t) in credit.iter_mut().zip(&targets) {
                *c += t.2;
            }
            let i = (0..targets.len())
                .max_by(|a, b| credit[*a].total_cmp(&credit[*b]))
                .unwrap_or(0);
            credit[i] -= total;
            let (u, slot, _) = &targets[i];
            self.mark_carrier(*seq, *slot, u, d.len());
            u.send(d);
        }
        src.counters
            .rescued
            .fetch_add(packets.len() as u64, Ordering::Relaxed);
        packets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Far(UdpSocket);

    impl Far {
        fn new() -> Self {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            Far(s)
        }
        fn drain(&self) -> Vec<Vec<u8>> {
            let mut v = Vec::new();
            let mut b = [0u8; 64];
            while let Ok(n) = self.0.recv(&mut b) {
                v.push(b[..n].to_vec());
            }
            v
        }
    }

    fn uplink(far: &Far) -> Arc<Uplink> {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = Arc::new(RelayCounters::new());
        Arc::new(Uplink::new(Arc::new(s), far.0.local_addr().unwrap(), c))
    }

    fn media(seq: u16, retransmit: bool) -> Option<Media> {
        Some(Media { seq, retransmit })
    }

    #[test]
    fn retransmissions_leave_by_the_chosen_link_and_count_against_the_carrier() {
        let (f0, f1) = (Far::new(), Far::new());
        let (u0, u1) = (uplink(&f0), uplink(&f1));
        let st = Steering::default();
        st.attach(0, u0.clone());
        st.attach(1, u1.clone());
        st.forward(0, &u0, media(7, false), b"orig-7");
        st.forward(0, &u0, None, b"rtcp");
        // A NACK at once: packet 7 cannot have arrived yet (it is due now
        // plus the links' delays). Not answered, once.
        u0.counters.one_way_ms.store(20, Ordering::Relaxed);
        st.forward(0, &u0, media(7, true), b"rtx-7-early");
        // No link chosen: the retransmission stays on librist's peer.
        st.forward(0, &u0, media(7, true), b"rtx-7a");
        st.set_retransmit_link(Some(1));
        st.forward(0, &u0, media(7, true), b"rtx-7b");
        assert_eq!(f0.drain(), [&b"orig-7"[..], b"rtcp", b"rtx-7a"]);
        assert_eq!(f1.drain(), [&b"rtx-7b"[..]]);
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(load(&u0.counters.early_nacks), 1);
        // Asked for twice, lost once.
        assert_eq!(load(&u0.counters.nacked), 1);
        assert_eq!(load(&u0.counters.media_out), 1);
        assert_eq!(load(&u1.counters.retransmits_out), 1);
        assert_eq!(load(&u1.counters.nacked), 0);
        // A dark link's new media (librist's copies) is dropped, control passes.
        u0.counters.suppress_data.store(true, Ordering::Relaxed);
        st.forward(0, &u0, media(8, false), b"copy-8");
        st.forward(0, &u0, None, b"keepalive");
        assert_eq!(f0.drain(), [&b"keepalive"[..]]);
        assert_eq!(load(&u0.counters.suppressed), 1);
    }

    #[test]
    fn rescue_resends_recent_media_on_live_links_by_weight() {
        let (f0, f1, f2) = (Far::new(), Far::new(), Far::new());
        let (u0, u1, u2) = (uplink(&f0), uplink(&f1), uplink(&f2));
        let st = Steering::default();
        for (i, u) in [&u0, &u1, &u2].into_iter().enumerate() {
            st.attach(i, u.clone());
        }
        st.forward(0, &u0, media(1, false), b"old");
        std::thread::sleep(Duration::from_millis(30));
        let since = Instant::now();
        for seq in 2..=7u16 {
            st.forward(0, &u0, media(seq, false), format!("m{seq}").as_bytes());
        }
        f0.drain();
        let n = st.rescue(0, since, &[(0, 5.0), (1, 2.0), (2, 1.0)]);
        assert_eq!(n, 6);
        let (a, b) = (f1.drain(), f2.drain());
        assert_eq!(
            (a.len(), b.len()),
            (4, 2),
            "2:1 by weight, none on the dead link"
        );
        assert!(f0.drain().is_empty());
        assert_eq!(u0.counters.rescued.load(Ordering::Relaxed), 6);
        // The rescued packets now count against the link that carried them again.
        std::thread::sleep(Duration::from_millis(10));
        st.forward(1, &u1, media(2, true), b"rtx-2");
        let nacked = |u: &Uplink| u.counters.nacked.load(Ordering::Relaxed);
        assert_eq!(nacked(&u0) + nacked(&u1) + nacked(&u2), 1);
        assert_eq!(nacked(&u0), 0);
        // A detached link is neither a source nor a target.
        st.detach(0, &u0);
        assert_eq!(st.rescue(0, since, &[(1, 1.0)]), 0);
    }
}
