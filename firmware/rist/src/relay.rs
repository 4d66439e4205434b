//! The UDP relays between librist and the network, one per link.
//!
//! librist 0.2.7 cannot bind a unicast peer's socket to an interface or source
//! address, so every sender peer talks to a loopback relay whose outside socket
//! is bound where the link must leave (`SO_BINDTODEVICE` or a source address).
//! On the receiver, a relay owns each public port, drops datagrams that are not
//! RIST (GRE with a RIST protocol type) before librist sees them, and gives
//! librist one loopback socket per remote so it still sees one peer per link.
//! Both count every datagram, which is how the link controller knows a link
//! went dark (nothing came back) and how the receiver knows each link's share.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::link::LinkBind;

/// How long a poll waits before checking the stop flag.
const POLL_MS: i32 = 50;
/// RIST control packets (keepalive, RTCP, NACK bursts aside) are below this;
/// a data packet carries 1316 bytes of TS plus headers.
const MAX_CONTROL: usize = 400;
/// Largest datagram relayed (librist's own maximum is below this).
const MAX_DATAGRAM: usize = 10_240;

/// Counters of one relay, shared with the controller and stats.
#[derive(Debug)]
pub(crate) struct RelayCounters {
    epoch: Instant,
    /// Datagrams and bytes toward the far end (sender: uplink; receiver: from remotes).
    pub out_packets: AtomicU64,
    pub out_bytes: AtomicU64,
    /// Datagrams and bytes coming back (sender: from the receiver; receiver: to remotes).
    pub in_packets: AtomicU64,
    pub in_bytes: AtomicU64,
    /// Datagrams that were not RIST, or came from an unexpected address.
    pub garbage: AtomicU64,
    /// Sends the OS refused (interface gone, no route).
    pub send_errors: AtomicU64,
    /// Sender side: drop data datagrams, pass control ones (the link is dark).
    pub suppress_data: AtomicBool,
    /// Data datagrams dropped while suppressed.
    pub suppressed: AtomicU64,
    /// Nanoseconds after `epoch` of the last datagram from the far end; 0 = never.
    last_in_ns: AtomicU64,
    /// Same, of the first datagram from the far end.
    first_in_ns: AtomicU64,
}

impl RelayCounters {
    fn new() -> Self {
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

    fn mark_out(&self, bytes: usize) {
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

/// Whether a datagram can be RIST main profile: a GRE header (version 0) with
/// one of the protocol types librist accepts (reduced, full, keepalive, EAPoL).
pub(crate) fn looks_like_rist(d: &[u8]) -> bool {
    if d.len() < 4 || d[1] & 0x07 != 0 {
        return false;
    }
    matches!(
        u16::from_be_bytes([d[2], d[3]]),
        0x88B6 | 0x0800 | 0x88B5 | 0x888E
    )
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

/// Waits until one of `fds` is readable; returns which ones.
fn poll_readable(fds: &[i32], ready: &mut Vec<bool>) -> io::Result<()> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: p is a valid array of pollfd of the given length.
    let rc = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, POLL_MS) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    ready.clear();
    ready.extend(
        p.iter()
            .map(|x| x.revents & (libc::POLLIN | libc::POLLERR) != 0),
    );
    Ok(())
}

/// A running relay thread and its counters. Stops on drop.
pub(crate) struct Relay {
    pub counters: Arc<RelayCounters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sender side: librist's peer sends to `inside_port` on loopback; the relay
/// forwards to `remote` through `outside`, and replies back to librist.
pub(crate) fn start_sender_relay(
    name: &str,
    inside_port: u16,
    outside: UdpSocket,
    remote: SocketAddr,
) -> io::Result<(Relay, u16)> {
    let inside = loopback_socket(inside_port)?;
    let port = inside.local_addr()?.port();
    let counters = Arc::new(RelayCounters::new());
    let stop = Arc::new(AtomicBool::new(false));
    let (c, st) = (counters.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name(format!("rist-link-{name}"))
        .spawn(move || {
            if let Err(e) = sender_loop(&inside, &outside, remote, &c, &st) {
                tracing::error!("link relay stopped: {e}");
            }
        })?;
    Ok((
        Relay {
            counters,
            stop,
            thread: Some(thread),
        },
        port,
    ))
}

fn sender_loop(
    inside: &UdpSocket,
    outside: &UdpSocket,
    remote: SocketAddr,
    c: &RelayCounters,
    stop: &AtomicBool,
) -> io::Result<()> {
    inside.set_nonblocking(true)?;
    outside.set_nonblocking(true)?;
    let fds = [inside.as_raw_fd(), outside.as_raw_fd()];
    let mut librist: Option<SocketAddr> = None;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut ready = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        poll_readable(&fds, &mut ready)?;
        if ready[0] {
            while let Ok((n, from)) = inside.recv_from(&mut buf) {
                librist = Some(from);
                if n > MAX_CONTROL && c.suppress_data.load(Ordering::Relaxed) {
                    c.suppressed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match outside.send_to(&buf[..n], remote) {
                    Ok(_) => c.mark_out(n),
                    Err(_) => {
                        c.send_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if ready[1] {
            loop {
                match outside.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        if from != remote {
                            c.garbage.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        c.mark_in(n);
                        if let Some(to) = librist {
                            let _ = inside.send_to(&buf[..n], to);
                        }
                    }
                    // ICMP errors (port unreachable) surface here; they are not data.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        c.send_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    Ok(())
}

/// One remote seen on a receiver port.
struct Remote {
    inside: UdpSocket,
    last: Instant,
}

/// Receiver side: owns a public port; forwards RIST datagrams to librist
/// listening on `librist_port`, one loopback socket per remote.
pub(crate) fn start_receiver_relay(outside: UdpSocket, librist_port: u16) -> io::Result<Relay> {
    let counters = Arc::new(RelayCounters::new());
    let stop = Arc::new(AtomicBool::new(false));
    let (c, st) = (counters.clone(), stop.clone());
    let port = outside.local_addr()?.port();
    let thread = std::thread::Builder::new()
        .name(format!("rist-port-{port}"))
        .spawn(move || {
            if let Err(e) = receiver_loop(&outside, librist_port, &c, &st) {
                tracing::error!(port, "receiver relay stopped: {e}");
            }
        })?;
    Ok(Relay {
        counters,
        stop,
        thread: Some(thread),
    })
}

/// Remotes silent this long are forgotten (a modem that changed address).
const REMOTE_IDLE: Duration = Duration::from_secs(30);
/// At most this many remotes per port, so a flood of spoofed sources cannot exhaust fds.
const MAX_REMOTES: usize = 16;

fn receiver_loop(
    outside: &UdpSocket,
    librist_port: u16,
    c: &RelayCounters,
    stop: &AtomicBool,
) -> io::Result<()> {
    outside.set_nonblocking(true)?;
    let librist: SocketAddr = (Ipv4Addr::LOCALHOST, librist_port).into();
    let mut remotes: HashMap<SocketAddr, Remote> = HashMap::new();
    let mut order: Vec<SocketAddr> = Vec::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut ready = Vec::new();
    let mut fds = Vec::new();
    let mut last_sweep = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        fds.clear();
        fds.push(outside.as_raw_fd());
        order.clear();
        for (addr, r) in &remotes {
            fds.push(r.inside.as_raw_fd());
            order.push(*addr);
        }
        poll_readable(&fds, &mut ready)?;
        if ready[0] {
            while let Ok((n, from)) = outside.recv_from(&mut buf) {
                if !looks_like_rist(&buf[..n]) {
                    c.garbage.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if !remotes.contains_key(&from) {
                    if remotes.len() >= MAX_REMOTES {
                        c.garbage.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let inside = loopback_socket(0)?;
                    inside.set_nonblocking(true)?;
                    tracing::debug!(%from, "new remote on receiver port");
                    remotes.insert(
                        from,
                        Remote {
                            inside,
                            last: Instant::now(),
                        },
                    );
                }
                let r = remotes.get_mut(&from).expect("inserted");
                r.last = Instant::now();
                c.mark_out(n);
                let _ = r.inside.send_to(&buf[..n], librist);
            }
        }
        for (i, addr) in order.iter().enumerate() {
            if !ready[i + 1] {
                continue;
            }
            let r = &remotes[addr];
            while let Ok(n) = r.inside.recv(&mut buf) {
                if outside.send_to(&buf[..n], addr).is_ok() {
                    c.mark_in(n);
                } else {
                    c.send_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if last_sweep.elapsed() > Duration::from_secs(1) {
            last_sweep = Instant::now();
            remotes.retain(|_, r| r.last.elapsed() < REMOTE_IDLE);
        }
    }
    Ok(())
}

/// A free loopback UDP port (for librist's listening sockets).
pub(crate) fn free_loopback_port() -> io::Result<u16> {
    Ok(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_rist_gre() {
        assert!(looks_like_rist(&[0x30, 0x00, 0x88, 0xB6, 1, 2, 3, 4]));
        assert!(looks_like_rist(&[0x00, 0x00, 0x88, 0xB5]));
        assert!(!looks_like_rist(b"hello world"));
        assert!(!looks_like_rist(&[0x30, 0x01, 0x88, 0xB6]));
        assert!(!looks_like_rist(&[0x30]));
    }

    #[test]
    fn sender_relay_forwards_and_counts() {
        let far = UdpSocket::bind("127.0.0.1:0").unwrap();
        far.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let remote = far.local_addr().unwrap();
        let outside =
            outside_socket(&LinkBind::Source("127.0.0.1".parse().unwrap()), &remote).unwrap();
        let (relay, port) = start_sender_relay("t", 0, outside, remote).unwrap();
        let lib = UdpSocket::bind("127.0.0.1:0").unwrap();
        lib.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        lib.send_to(b"data", ("127.0.0.1", port)).unwrap();
        let mut b = [0u8; 16];
        let (n, from) = far.recv_from(&mut b).unwrap();
        assert_eq!(&b[..n], b"data");
        far.send_to(b"ack", from).unwrap();
        let n = lib.recv(&mut b).unwrap();
        assert_eq!(&b[..n], b"ack");
        assert_eq!(relay.counters.out_packets.load(Ordering::Relaxed), 1);
        assert!(relay.counters.last_in().is_some());
        // A stranger's datagram is not passed to librist.
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(b"x", from).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(relay.counters.garbage.load(Ordering::Relaxed), 1);
    }
}
