//! Shared pieces of the end-to-end tests: a real H.264 + AAC TS made by
//! ffmpeg, a paced feeder, a draining reader, and emulated links.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use strata_linksim::{LinkSim, SimConfig};
use strata_rist::ts::{DATAGRAM_PAYLOAD, Pacer};
use strata_rist::{BondedReceiver, BondedSender};

/// A 5 s, ~2 Mbit/s H.264 + AAC MPEG-TS, made once per test binary.
pub fn test_ts() -> &'static [u8] {
    static TS: OnceLock<Vec<u8>> = OnceLock::new();
    TS.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bond-test-pattern.ts");
        if !path.exists() {
            let tmp = path.with_extension(format!("{}.ts", std::process::id()));
            let st = Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "error", "-y"])
                .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25"])
                .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
                .args([
                    "-t",
                    "5",
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    "-b:v",
                    "1500k",
                ])
                .args(["-maxrate", "1500k", "-bufsize", "750k", "-g", "50"])
                .args([
                    "-c:a", "aac", "-b:a", "96k", "-f", "mpegts", "-muxrate", "2000000",
                ])
                .arg(&tmp)
                .status()
                .expect("ffmpeg runs (scripts/setup installs it)");
            assert!(st.success(), "ffmpeg failed to make the test pattern");
            std::fs::rename(&tmp, &path).unwrap();
        }
        std::fs::read(&path).unwrap()
    })
}

/// Hex SHA-256.
pub fn sha(d: &[u8]) -> String {
    Sha256::digest(d)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Feeds `data` to the sender at `kbps`, then lets retransmissions finish.
pub fn feed(sender: &mut BondedSender, data: &[u8], kbps: f64) {
    feed_part(sender, data, kbps);
    let mut pacer = Pacer::new(kbps);
    // RIST sees a loss only when a later packet shows the gap, so a stream
    // that stops right after a lost packet loses it for good. A live stream
    // never stops like that; the test stream ends with padding the
    // comparisons strip ([`strip_padding`]).
    let pad = padding_datagram();
    for _ in 0..PADDING_DATAGRAMS {
        pacer.wait(pad.len());
        sender.send(&pad).unwrap();
    }
    sender.flush().unwrap();
}

/// Sends part of a stream at `kbps` (the stream goes on: no padding).
pub fn feed_part(sender: &mut BondedSender, data: &[u8], kbps: f64) {
    let mut pacer = Pacer::new(kbps);
    for chunk in data.chunks(DATAGRAM_PAYLOAD) {
        pacer.wait(chunk.len());
        sender.send(chunk).unwrap();
    }
}

/// Datagrams of padding after each fed stream.
pub const PADDING_DATAGRAMS: usize = 20;
/// PID of the padding packets (not the null PID: the test pattern has null packets of its own).
const PADDING_PID: u16 = 0x1FFE;

fn padding_datagram() -> Vec<u8> {
    let mut pkt = [0xFFu8; 188];
    pkt[..4].copy_from_slice(&[
        0x47,
        (PADDING_PID >> 8) as u8,
        (PADDING_PID & 0xFF) as u8,
        0x10,
    ]);
    pkt.repeat(7)
}

/// The stream without the trailing padding [`feed`] adds.
pub fn strip_padding(mut ts: &[u8]) -> &[u8] {
    while ts.len() >= 188 {
        let p = &ts[ts.len() - 188..];
        if p[0] == 0x47 && (u16::from(p[1] & 0x1F) << 8 | u16::from(p[2])) == PADDING_PID {
            ts = &ts[..ts.len() - 188];
        } else {
            break;
        }
    }
    ts
}

/// Reads until nothing arrived for `idle` (after something did) or `limit`.
pub fn drain(rx: &BondedReceiver, idle: Duration, limit: Duration) -> Vec<u8> {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut last = Instant::now();
    while start.elapsed() < limit {
        match rx.read(Duration::from_millis(50)).unwrap() {
            Some(d) => {
                out.extend_from_slice(&d);
                last = Instant::now();
            }
            None if !out.is_empty() && last.elapsed() > idle => break,
            None => {}
        }
    }
    out
}

/// Emulated links in their own runtime (dropped together).
pub struct Links {
    pub sim: LinkSim,
    _rt: tokio::runtime::Runtime,
}

impl Links {
    pub fn start(toml: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let sim = rt
            .block_on(LinkSim::start(SimConfig::from_toml(toml).unwrap()))
            .unwrap();
        Self { sim, _rt: rt }
    }
}

/// A free UDP port on loopback.
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
