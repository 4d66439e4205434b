//! A receiver port: librist's own listening socket, with a kernel filter in
//! front of it.
//!
//! librist binds each public port itself, so a datagram costs one wake-up and
//! one copy, as in any librist receiver (a user-space hop in front of it cost
//! another wake-up, receive and send). librist 0.2.7 cannot be handed a socket, so
//! the socket it opened is found among the process's descriptors by its local
//! address, and a classic BPF program is attached to it: datagrams that are not
//! RIST main profile (GRE version 0 with a protocol type librist accepts) are
//! dropped by the kernel before librist sees them. The kernel counts those
//! drops per socket (`SO_MEMINFO`), which is the port's garbage figure.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{BorrowedFd, RawFd};

use socket2::{SockFilter, SockRef};

/// What the kernel keeps of a datagram the filter accepts (all of it).
const ACCEPT: u32 = u32::MAX;

// Classic BPF opcodes (linux/filter.h), spelled out: the libc crate has no
// names for the combined forms.
const LDB_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
const LDH_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// Offset of the RIST payload in what a UDP socket filter sees: the UDP header
/// comes first.
const UDP_HEADER: u32 = 8;

/// `SO_MEMINFO` returns `SK_MEMINFO_VARS` counters; drops are at this index.
const SK_MEMINFO_DROPS: usize = 8;
const SK_MEMINFO_VARS: usize = 9;

/// The filter: accept GRE version 0 (low 3 bits of the second flags byte)
/// carrying RIST reduced (0x88B6), full IP (0x0800), keepalive (0x88B5) or
/// EAPoL (0x888E); drop the rest. A load past the end of a short datagram
/// ends the program with 0, which drops it too.
pub(crate) fn rist_filter() -> Vec<SockFilter> {
    // Jump offsets count from the next instruction: 8 drops, 9 accepts.
    let prog = [
        (LDB_ABS, 0, 0, UDP_HEADER + 1), // 0: GRE flags, second byte
        (AND_K, 0, 0, 0x07),             // 1: its version bits
        (JEQ_K, 0, 5, 0),                // 2: version 0, or drop
        (LDH_ABS, 0, 0, UDP_HEADER + 2), // 3: GRE protocol type
        (JEQ_K, 4, 0, 0x88B6),           // 4
        (JEQ_K, 3, 0, 0x0800),           // 5
        (JEQ_K, 2, 0, 0x88B5),           // 6
        (JEQ_K, 1, 0, 0x888E),           // 7
        (RET_K, 0, 0, 0),                // 8: drop
        (RET_K, 0, 0, ACCEPT),           // 9: accept
    ];
    prog.iter()
        .map(|&(code, jt, jf, k)| SockFilter::new(code, jt, jf, k))
        .collect()
}

/// The process's open descriptors now.
fn open_fds() -> io::Result<Vec<RawFd>> {
    let mut fds = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd")? {
        if let Some(fd) = e?.file_name().to_str().and_then(|s| s.parse().ok()) {
            fds.push(fd);
        }
    }
    Ok(fds)
}

/// librist's listening socket on one public port.
pub(crate) struct Port {
    /// The port number.
    pub port: u16,
    /// librist's descriptor; librist owns and closes it.
    fd: RawFd,
}

impl Port {
    /// Finds the UDP socket bound to `addr` among the process's descriptors
    /// (only librist's can be: the port was free, and ours do not share ports),
    /// and puts the RIST filter and a 2 MiB receive buffer on it.
    pub fn adopt(addr: SocketAddr) -> io::Result<Self> {
        let mut found = None;
        for fd in &open_fds()? {
            // SAFETY: the descriptor is open (just listed) and is only borrowed
            // for these queries; a descriptor closed meanwhile makes them fail.
            let b = unsafe { BorrowedFd::borrow_raw(*fd) };
            let s = SockRef::from(&b);
            let local = s.local_addr().ok().and_then(|a| a.as_socket());
            if local == Some(addr) && s.r#type().ok() == Some(socket2::Type::DGRAM) {
                found = Some(*fd);
                break;
            }
        }
        let fd =
            found.ok_or_else(|| io::Error::other(format!("librist opened no socket on {addr}")))?;
        // SAFETY: as above; librist keeps this socket open for the context's life.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let s = SockRef::from(&b);
        s.attach_filter(&rist_filter())?;
        s.set_recv_buffer_size(1 << 21)?;
        Ok(Self {
            port: addr.port(),
            fd,
        })
    }

    /// Datagrams the kernel dropped on this port: not RIST, or no room left in
    /// the receive buffer.
    pub fn dropped(&self) -> u64 {
        socket_drops(self.fd).unwrap_or(0)
    }
}

/// The kernel's drop counter of a socket.
fn socket_drops(fd: RawFd) -> io::Result<u64> {
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: info is a writable buffer of len bytes; the kernel writes at most len.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(info[SK_MEMINFO_DROPS]))
}

/// Picks a free UDP port on `addr`'s IP when it asks for port 0, and fails the
/// way binding would when the port is taken (librist only says it failed).
pub(crate) fn resolve(addr: SocketAddr) -> io::Result<SocketAddr> {
    let probe = UdpSocket::bind(addr)?;
    probe.local_addr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// What the filter is meant to let through, written plainly.
    fn looks_like_rist(d: &[u8]) -> bool {
        d.len() >= 4
            && d[1] & 0x07 == 0
            && matches!(
                u16::from_be_bytes([d[2], d[3]]),
                0x88B6 | 0x0800 | 0x88B5 | 0x888E
            )
    }

    #[test]
    fn the_kernel_filter_passes_rist_and_counts_the_rest() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        SockRef::from(&rx).attach_filter(&rist_filter()).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let samples: Vec<Vec<u8>> = vec![
            vec![0x30, 0x00, 0x88, 0xB6, 1, 2, 3, 4],
            vec![0x00, 0x00, 0x88, 0xB5],
            vec![0x00, 0x00, 0x08, 0x00, 9],
            vec![0x00, 0x00, 0x88, 0x8E],
            b"hello world".to_vec(),
            vec![0x30, 0x01, 0x88, 0xB6],
            vec![0x30, 0x00, 0x88],
            vec![0x30],
            vec![],
        ];
        for d in &samples {
            tx.send_to(d, rx.local_addr().unwrap()).unwrap();
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = rx.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        let want: Vec<Vec<u8>> = samples
            .iter()
            .filter(|d| looks_like_rist(d))
            .cloned()
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            socket_drops(rx.as_raw_fd()).unwrap(),
            (samples.len() - want.len()) as u64
        );
    }

    #[test]
    fn adopts_the_socket_on_the_port_and_says_when_there_is_none() {
        let addr = resolve("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(addr.port(), 0);
        let s = UdpSocket::bind(addr).unwrap();
        let p = Port::adopt(addr).unwrap();
        assert_eq!(p.port, addr.port());
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"junk", addr)
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(p.dropped(), 1);
        assert!(resolve(addr).is_err(), "a taken port is refused");
        drop(s);
        let err = Port::adopt(addr).err().unwrap();
        assert!(err.to_string().contains("no socket"), "{err}");
    }
}
