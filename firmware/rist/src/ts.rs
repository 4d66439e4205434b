//! MPEG-TS framing and pacing helpers shared by the sender, the CLI and tests.

use std::time::{Duration, Instant};

/// Size of one MPEG-TS packet.
pub const TS_PACKET: usize = 188;
/// TS bytes per RIST datagram: 7 packets, as every RIST and SMPTE 2022 tool does.
pub const DATAGRAM_PAYLOAD: usize = 7 * TS_PACKET;

/// Releases bytes at a constant bit rate (for feeding files as if live).
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    bits_per_sec: f64,
    sent_bits: f64,
}

impl Pacer {
    /// A pacer at `kbps` kbit/s starting now.
    pub fn new(kbps: f64) -> Self {
        Self {
            start: Instant::now(),
            bits_per_sec: kbps * 1000.0,
            sent_bits: 0.0,
        }
    }

    /// Waits until `bytes` more may go out, then accounts for them.
    pub fn wait(&mut self, bytes: usize) {
        let due = self.start + Duration::from_secs_f64(self.sent_bits / self.bits_per_sec);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        self.sent_bits += bytes as f64 * 8.0;
    }
}

/// Checks that `data` is whole TS packets, each starting with the sync byte.
pub fn is_ts(data: &[u8]) -> bool {
    data.len().is_multiple_of(TS_PACKET) && data.chunks(TS_PACKET).all(|p| p[0] == 0x47)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_ts() {
        let mut d = vec![0u8; 376];
        assert!(!is_ts(&d));
        d[0] = 0x47;
        d[188] = 0x47;
        assert!(is_ts(&d));
        assert!(!is_ts(&d[..200]));
    }

    #[test]
    fn pacer_paces() {
        let mut p = Pacer::new(8000.0); // 1 MB/s
        let t = Instant::now();
        for _ in 0..20 {
            p.wait(10_000);
        }
        // 19 waits of 10 ms each have passed before the last one returned.
        assert!(t.elapsed() >= Duration::from_millis(185));
    }
}
