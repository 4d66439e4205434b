//! Interoperability with third-party RIST peers: rist-tools' `ristsender` and
//! `ristreceiver`, and ffmpeg's librist input (ffprobe). Those tools take the
//! passphrase only on their command line, so these tests use a throwaway key.

mod support;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_rist::ts::{DATAGRAM_PAYLOAD, Pacer};
use strata_rist::{BondedReceiver, BondedSender, LinkSpec, Psk, ReceiverConfig, SenderConfig};
use support::{drain, feed, free_port, sha, strip_padding, test_ts};

const KEY: &str = "throwaway interop test key";

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command) -> Kill {
    Kill(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rist-tools/ffmpeg installed by scripts/setup"),
    )
}

#[test]
fn our_bonded_sender_to_ristreceiver() {
    let data = test_ts();
    let (p1, p2) = (free_port(), free_port());
    let out = UdpSocket::bind("127.0.0.1:0").unwrap();
    out.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _rr = spawn(Command::new("ristreceiver").args([
        "-p",
        "1",
        "-b",
        "1000",
        "-S",
        "0",
        "-e",
        "256",
        "-s",
        KEY,
        "-i",
        &format!("rist://@127.0.0.1:{p1},rist://@127.0.0.1:{p2}"),
        "-o",
        &format!("udp://127.0.0.1:{}", out.local_addr().unwrap().port()),
    ]));
    std::thread::sleep(Duration::from_millis(300));
    let links = [p1, p2]
        .iter()
        .enumerate()
        .map(|(i, p)| LinkSpec::new(format!("l{i}"), format!("127.0.0.1:{p}").parse().unwrap()))
        .collect();
    let cfg = SenderConfig {
        psk: Some(Psk::new(KEY).unwrap()),
        ..Default::default()
    };
    let mut tx = BondedSender::new(cfg, links).unwrap();
    let collector = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        let mut last = Instant::now();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            match out.recv(&mut buf) {
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    last = Instant::now();
                }
                Err(_) if !got.is_empty() && last.elapsed() > Duration::from_secs(2) => break,
                Err(_) => {}
            }
        }
        got
    });
    feed(&mut tx, data, 2000.0);
    let got = collector.join().unwrap();
    assert_eq!(
        sha(strip_padding(&got)),
        sha(data),
        "ristreceiver output differs ({} of {} bytes)",
        got.len(),
        data.len()
    );
    assert!(
        tx.stats().links.iter().all(|l| l.sent_bytes > 100_000),
        "both links carried data"
    );
}

#[test]
fn ristsender_to_our_bonded_receiver() {
    let data = test_ts();
    let rx = BondedReceiver::new(ReceiverConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap(); 2],
        psk: Some(Psk::new(KEY).unwrap()),
        buffer_ms: 1000,
    })
    .unwrap();
    let ports = rx.ports();
    let input = free_port();
    let url = |p: u16| format!("rist://127.0.0.1:{p}?secret={KEY}&aes-type=256&weight=5");
    let _rs = spawn(Command::new("ristsender").args([
        "-p",
        "1",
        "-b",
        "1000",
        "-S",
        "0",
        "-i",
        &format!("udp://@127.0.0.1:{input}"),
        "-o",
        &format!("{},{}", url(ports[0]), url(ports[1])),
    ]));
    // Let ristsender connect first: it drops input while no peer is up.
    std::thread::sleep(Duration::from_millis(1500));
    let src = UdpSocket::bind("127.0.0.1:0").unwrap();
    let feeder = {
        let data = data.to_vec();
        std::thread::spawn(move || {
            let mut pacer = Pacer::new(2000.0);
            for c in data.chunks(DATAGRAM_PAYLOAD) {
                pacer.wait(c.len());
                src.send_to(c, ("127.0.0.1", input)).unwrap();
            }
        })
    };
    let out = drain(&rx, Duration::from_secs(2), Duration::from_secs(30));
    feeder.join().unwrap();
    let st = rx.stats();
    assert_eq!(st.lost, 0, "{st:?}");
    // librist starts a flow at the first packet to arrive over any link, so
    // ristsender's very first datagram can be overtaken on the other link.
    let tail = &data[data.len() - out.len()..];
    assert!(
        out.len() + DATAGRAM_PAYLOAD >= data.len(),
        "{} of {} bytes; {st:?}",
        out.len(),
        data.len()
    );
    assert_eq!(sha(strip_padding(&out)), sha(tail), "{st:?}");
    assert!(
        st.peers.len() == 2 && st.peers.iter().all(|p| p.packets > 100),
        "both links carried data: {st:?}"
    );
}

#[test]
fn ffprobe_reads_our_stream_over_rist() {
    let port = free_port();
    let mut probe = Kill(
        Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-rist_profile",
                "main",
                "-encryption",
                "256",
                "-secret",
                KEY,
            ])
            .args(["-show_entries", "stream=codec_name", "-of", "csv=p=0"])
            .arg(format!("rist://@127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let cfg = SenderConfig {
        psk: Some(Psk::new(KEY).unwrap()),
        ..Default::default()
    };
    let remote = format!("127.0.0.1:{port}").parse().unwrap();
    let mut tx = BondedSender::new(cfg, vec![LinkSpec::new("a", remote)]).unwrap();
    let data = test_ts();
    let whole = data.len() / DATAGRAM_PAYLOAD * DATAGRAM_PAYLOAD;
    let mut pacer = Pacer::new(2000.0);
    let start = Instant::now();
    // Keep sending (looping the file) until ffprobe has seen enough to report.
    for i in 0.. {
        let c = &data[(i * DATAGRAM_PAYLOAD) % whole..][..DATAGRAM_PAYLOAD];
        pacer.wait(c.len());
        tx.send(c).unwrap();
        if i % 50 == 0 && probe.0.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "ffprobe did not finish"
        );
    }
    let mut text = String::new();
    let mut err = String::new();
    use std::io::Read;
    probe
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    probe
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        text.contains("h264") && text.contains("aac"),
        "ffprobe said: {text} / {err}"
    );
}
