//! The sender's UDP relays between librist and the network, one per link.
//!
//! librist 0.2.7 cannot bind a unicast peer's socket to an interface or source
//! address, so every sender peer talks to a loopback relay whose outside socket
//! is bound where the link must leave (`SO_BINDTODEVICE` or a source address).
//! Relays count every datagram, which is how the link controller knows a link
//! went dark (nothing came back). The receiver has no relay: see
//! [`port`](crate::port).
//!
//! The relays also do what librist cannot be told to do (see [`Steering`]):
//! they read each media datagram's RTP sequence number ([`datagram`]), so a
//! retransmission leaves by the link the controller picked instead of the one
//! the receiver's NACK happened to arrive on, each NACKed packet is counted
//! against the link that lost it, and the packets a link carried just before
//! it went dark are sent again on live links at once.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::datagram::Reader;
use crate::link::LinkBind;
use crate::steering::{Steering, Uplink};

/// How long a blocking receive waits before checking the stop flag.
const POLL_MS: i32 = 50;
/// Largest datagram relayed (librist's own maximum is below this).
const MAX_DATAGRAM: usize = 10_240;

/// Counters of one relay, shared with the controller and stats.
#[derive(Debug)]
pub(crate) struct RelayCounters {
    epoch: Instant,
    /// Datagrams and bytes sent up the link.
    pub out_packets: AtomicU64,
    pub out_bytes: AtomicU64,
    /// Datagrams and bytes coming back from the receiver.
    pub in_packets: AtomicU64,
    pub in_bytes: AtomicU64,
    /// Datagrams from an unexpected address.
    pub garbage: AtomicU64,
    /// Sends the OS refused (interface gone, no route).
    pub send_errors: AtomicU64,
    /// Sender side: drop data datagrams, pass control ones (the link is dark).
    pub suppress_data: AtomicBool,
    /// Data datagrams dropped while suppressed.
    pub suppressed: AtomicU64,
    /// New media datagrams (not retransmissions) this link carried.
    pub media_out: AtomicU64,
    /// Retransmissions the receiver asked for of media this link carried:
    /// the link's real loss (with packets that came too late).
    pub nacked: AtomicU64,
    /// Retransmissions (of any link's media) that left by this link.
    pub retransmits_out: AtomicU64,
    /// Media this link had carried, sent again elsewhere when it went dark.
    pub rescued: AtomicU64,
    /// NACKs for media this link carried that left the receiver before the
    /// packet could have arrived (not answered; see [`Steering`]).
    pub early_nacks: AtomicU64,
    /// The link's one-way delay as the controller sees it (half its RTT), ms.
    pub one_way_ms: AtomicU32,
    /// The controller's estimate of the link's capacity, kbit/s.
    pub capacity_kbps: AtomicU32,
    /// Nanoseconds after `epoch` of the last datagram from the far end; 0 = never.
    last_in_ns: AtomicU64,
    /// Same, of the first datagram from the far end.
    first_in_ns: AtomicU64,
}

impl RelayCounters {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            out_packets: AtomicU64::new(0),
            out_bytes: AtomicU64::new(0),
            in_packets: AtomicU64::new(0),
            in_bytes: AtomicU64::new(0),
            garbage: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            suppress_data: AtomicBool::new(false),
            suppressed: AtomicU64::new(0),
            media_out: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            retransmits_out: AtomicU64::new(0),
            rescued: AtomicU64::new(0),
            early_nacks: AtomicU64::new(0),
            one_way_ms: AtomicU32::new(0),
            capacity_kbps: AtomicU32::new(0),
            last_in_ns: AtomicU64::new(0),
            first_in_ns: AtomicU64::new(0),
        }
    }

    fn mark_in(&self, bytes: usize) {
        self.in_packets.fetch_add(1, Ordering::Relaxed);
        self.in_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        let ns = self.epoch.elapsed().as_nanos().max(1) as u64;
        self.last_in_ns.store(ns, Ordering::Relaxed);
        let _ = self
            .first_in_ns
            .compare_exchange(0, ns, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(crate) fn mark_out(&self, bytes: usize) {
        self.out_packets.fetch_add(1, Ordering::Relaxed);
        self.out_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn at(&self, ns: &AtomicU64) -> Option<Instant> {
        match ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.epoch + Duration::from_nanos(ns)),
        }
    }

    /// When the far end was last heard from.
    pub fn last_in(&self) -> Option<Instant> {
        self.at(&self.last_in_ns)
    }

    /// When the far end was first heard from.
    pub fn first_in(&self) -> Option<Instant> {
        self.at(&self.first_in_ns)
    }
}

fn wildcard(remote: &SocketAddr) -> SocketAddr {
    if remote.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    }
}

/// A UDP socket that leaves by the link's interface or source address.
pub(crate) fn outside_socket(bind: &LinkBind, remote: &SocketAddr) -> io::Result<UdpSocket> {
    let domain = if remote.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    // Room for a burst of retransmissions on a fast link.
    let _ = s.set_send_buffer_size(1 << 20);
    let _ = s.set_recv_buffer_size(1 << 20);
    let local = match bind {
        LinkBind::Any => wildcard(remote),
        LinkBind::Interface(dev) => {
            s.bind_device(Some(dev.as_bytes())).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot bind to interface {dev}: {e}"))
            })?;
            wildcard(remote)
        }
        LinkBind::Source(ip) => SocketAddr::new(*ip, 0),
    };
    s.bind(&local.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {local}: {e}")))?;
    Ok(s.into())
}

fn loopback_socket(port: u16) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, port))?;
    socket2::SockRef::from(&s).set_recv_buffer_size(1 << 20)?;
    Ok(s)
}

/// A running relay thread and its link's way out. Stops (and leaves the
/// steering) on drop.
pub(crate) struct Relay {
    pub uplink: Arc<Uplink>,
    slot: usize,
    steering: Arc<Steering>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// The link's counters.
    pub fn counters(&self) -> &Arc<RelayCounters> {
        &self.uplink.counters
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.steering.detach(self.slot, &self.uplink);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where a sender relay sits: its link's slot in the bond, the steering the
/// bond's relays share, and how to read the sender's datagrams.
pub(crate) struct Placement {
    pub slot: usize,
    pub steering: Arc<Steering>,
    pub reader: Reader,
}

/// Sender side: librist's peer sends to `inside_port` on loopback; the relay
/// forwards to `remote` through `outside` (or steers, see [`Steering`]), and
/// replies back to librist.
pub(crate) fn start_sender_relay(
    name: &str,
    inside_port: u16,
    outside: UdpSocket,
    remote: SocketAddr,
    at: Placement,
) -> io::Result<(Relay, u16)> {
    let inside = loopback_socket(inside_port)?;
    let port = inside.local_addr()?.port();
    let timeout = Some(Duration::from_millis(POLL_MS as u64));
    inside.set_read_timeout(timeout)?;
    outside.set_read_timeout(timeout)?;
    let counters = Arc::new(RelayCounters::new());
    let uplink = Arc::new(Uplink::new(Arc::new(outside), remote, counters));
    at.steering.attach(at.slot, uplink.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let (u, st, steering) = (uplink.clone(), stop.clone(), at.steering.clone());
    let name = name.to_string();
    let (slot, reader) = (at.slot, at.reader);
    let thread = std::thread::Builder::new()
        .name(format!("rist-link-{name}"))
        .spawn(move || {
            if let Err(e) = sender_loop(&name, inside, u, (slot, &steering, reader), &st) {
                tracing::error!("link relay stopped: {e}");
            }
        })?;
    Ok((
        Relay {
            uplink,
            slot: at.slot,
            steering: at.steering,
            stop,
            thread: Some(thread),
        },
        port,
    ))
}

/// Uplink on this thread, replies on a second one; both block on their socket
/// with a timeout (to see the stop flag): two system calls per datagram.
fn sender_loop(
    name: &str,
    inside: UdpSocket,
    uplink: Arc<Uplink>,
    (slot, steering, mut reader): (usize, &Steering, Reader),
    stop: &Arc<AtomicBool>,
) -> io::Result<()> {
    let inside = Arc::new(inside);
    // librist's peer socket, learnt from its first datagram; replies go there.
    let librist: Arc<OnceLock<SocketAddr>> = Arc::default();
    let replies = {
        let (i, u, l, st) = (
            inside.clone(),
            uplink.clone(),
            librist.clone(),
            stop.clone(),
        );
        std::thread::Builder::new()
            .name(format!("rist-link-{name}-in"))
            .spawn(move || {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                let c = &u.counters;
                while !st.load(Ordering::Relaxed) {
                    match u.socket().recv_from(&mut buf) {
                        Ok((n, from)) if from == u.remote() => {
                            c.mark_in(n);
                            if let Some(to) = l.get() {
                                let _ = i.send_to(&buf[..n], to);
                            }
                        }
                        Ok(_) => {
                            c.garbage.fetch_add(1, Ordering::Relaxed);
                        }
                        // Timeouts, and ICMP errors (port unreachable): not data.
                        Err(_) => {}
                    }
                }
            })?
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = inside.recv_from(&mut buf) else {
            continue;
        };
        let _ = librist.get_or_init(|| from);
        let d = &buf[..n];
        steering.forward(slot, &uplink, reader.media(d), d);
    }
    let _ = replies.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_relay_forwards_and_counts() {
        let far = UdpSocket::bind("127.0.0.1:0").unwrap();
        far.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let remote = far.local_addr().unwrap();
        let outside =
            outside_socket(&LinkBind::Source("127.0.0.1".parse().unwrap()), &remote).unwrap();
        let at = Placement {
            slot: 0,
            steering: Arc::default(),
            reader: Reader::new(None),
        };
        let (relay, port) = start_sender_relay("t", 0, outside, remote, at).unwrap();
        let lib = UdpSocket::bind("127.0.0.1:0").unwrap();
        lib.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        lib.send_to(b"data", ("127.0.0.1", port)).unwrap();
        let mut b = [0u8; 16];
        let (n, from) = far.recv_from(&mut b).unwrap();
        assert_eq!(&b[..n], b"data");
        far.send_to(b"ack", from).unwrap();
        let n = lib.recv(&mut b).unwrap();
        assert_eq!(&b[..n], b"ack");
        // The relay counts after its send returns, which may be after "ack".
        let t = Instant::now();
        while relay.counters().out_packets.load(Ordering::Relaxed) == 0
            && t.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(relay.counters().out_packets.load(Ordering::Relaxed), 1);
        assert!(relay.counters().last_in().is_some());
        // A stranger's datagram is not passed to librist.
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(b"x", from).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(relay.counters().garbage.load(Ordering::Relaxed), 1);
    }
}
