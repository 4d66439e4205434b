//! The agent's stream received by a real bonded RIST receiver: H.264 and
//! H.265 video with AAC audio (checked with ffprobe), and links leaving and
//! joining the bond while live, as NetworkManager reports them.

use std::io::Write;
use std::time::{Duration, Instant};

use strata_agent::config::SimulatedLink;
use strata_agent::inventory::Inputs;
use strata_agent::stream::{LinkPlan, Stream, StreamRequest};
use strata_proto::message::{Codec, EncoderSettings, TEST_PATTERN};
use strata_rist::{BondedReceiver, LinkState, Psk, ReceiverConfig};

const PSK: &str = "codec-test-passphrase";

/// What ffprobe prints for `entries` (`-show_entries`), a line each.
fn ffprobe(path: &std::path::Path, entries: &str) -> Vec<String> {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", entries, "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn codecs_of(path: &std::path::Path) -> Vec<String> {
    ffprobe(path, "stream=codec_name")
}

async fn stream_and_probe(codec: Codec) -> Vec<String> {
    let receiver = BondedReceiver::new(ReceiverConfig {
        listen: vec![
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        ],
        psk: Some(Psk::new(PSK).unwrap()),
        buffer_ms: 300,
    })
    .unwrap();
    let links = ["wwan0", "wwan1"]
        .iter()
        .map(|n| {
            toml::from_str::<SimulatedLink>(&format!(
                "name = \"{n}\"\nrate_kbps = 8000\ndelay_ms = 5"
            ))
            .unwrap()
        })
        .collect();
    let req = StreamRequest {
        stream_id: format!("codec-{codec:?}"),
        relay_host: "127.0.0.1".into(),
        ports: receiver.ports(),
        encoder: EncoderSettings {
            input: TEST_PATTERN.into(),
            codec,
            height: 480,
            fps: 25,
            min_kbps: 800,
            max_kbps: 1500,
            audio: true,
        },
    };
    let plan = LinkPlan::Simulated { seed: 3, links };
    let mut stream = Stream::start(&req, PSK, &plan, &Inputs::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.ts");
    let mut file = std::fs::File::create(&path).unwrap();
    let start = Instant::now();
    let mut bytes = 0;
    while start.elapsed() < Duration::from_secs(5) {
        stream.tick().unwrap();
        if let Some(ts) =
            tokio::task::block_in_place(|| receiver.read(Duration::from_millis(200))).unwrap()
        {
            bytes += ts.len();
            file.write_all(&ts).unwrap();
        }
    }
    stream.stop();
    assert!(bytes > 200_000, "only {bytes} bytes arrived");
    codecs_of(&path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_and_h265_with_aac_arrive() {
    gstreamer::init().unwrap();
    let h264 = stream_and_probe(Codec::H264).await;
    assert!(
        h264.contains(&"h264".into()) && h264.contains(&"aac".into()),
        "{h264:?}"
    );
    let h265 = stream_and_probe(Codec::H265).await;
    assert!(
        h265.contains(&"hevc".into()) && h265.contains(&"aac".into()),
        "{h265:?}"
    );
}

/// Reads for `secs`, ticking the stream; returns the bytes that arrived.
fn receive(stream: &mut Stream, receiver: &BondedReceiver, secs: u64) -> usize {
    let start = Instant::now();
    let mut bytes = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        stream.tick().unwrap();
        if let Some(ts) =
            tokio::task::block_in_place(|| receiver.read(Duration::from_millis(100))).unwrap()
        {
            bytes += ts.len();
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_leave_and_join_while_live() {
    gstreamer::init().unwrap();
    let receiver = BondedReceiver::new(ReceiverConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        psk: Some(Psk::new(PSK).unwrap()),
        buffer_ms: 300,
    })
    .unwrap();
    let req = StreamRequest {
        stream_id: "links".into(),
        relay_host: "127.0.0.1".into(),
        ports: receiver.ports(),
        encoder: EncoderSettings {
            input: TEST_PATTERN.into(),
            codec: Codec::H264,
            height: 480,
            fps: 25,
            min_kbps: 800,
            max_kbps: 1500,
            audio: false,
        },
    };
    // Bound with SO_BINDTODEVICE like a modem's wwanN; lo is what a test has.
    let plan = LinkPlan::Interfaces(vec!["lo".into()]);
    let mut stream = Stream::start(&req, PSK, &plan, &Inputs::default())
        .await
        .unwrap();
    assert!(receive(&mut stream, &receiver, 3) > 100_000);

    // The interface went away (modem unplugged): the link leaves the bond.
    stream.set_interfaces(&[]);
    // Stats refresh on the controller's next tick (100 ms).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(stream.links(), [("lo".to_string(), LinkState::Removed)]);
    let _ = receive(&mut stream, &receiver, 1);
    assert!(
        receive(&mut stream, &receiver, 2) < 20_000,
        "nothing without a link"
    );

    // It came back: it joins again and the stream flows.
    stream.set_interfaces(&["lo".into()]);
    let _ = receive(&mut stream, &receiver, 1);
    assert!(receive(&mut stream, &receiver, 3) > 100_000);
    assert_ne!(stream.links()[0].1, LinkState::Removed);
    // A link that cannot be bound is refused and the others go on.
    stream.set_interfaces(&["lo".into(), "nosuch0".into()]);
    assert_eq!(stream.links().len(), 1);
    stream.stop();
}

/// A short file made by ffmpeg: `secs` of test video, with a tone if `audio`.
fn media_file(dir: &std::path::Path, name: &str, secs: u32, audio: bool) {
    let mut c = std::process::Command::new("ffmpeg");
    c.args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=duration={secs}:size=640x360:rate=25"));
    if audio {
        c.args(["-f", "lavfi", "-i"])
            .arg(format!("sine=duration={secs}:frequency=880"))
            .args(["-c:a", "aac"]);
    }
    let ok = c
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(dir.join(name))
        .status()
        .expect("ffmpeg")
        .success();
    assert!(ok, "ffmpeg made {name}");
}

/// Duration (s) of what ffprobe reads in a TS file.
fn duration_of(path: &std::path::Path) -> f64 {
    ffprobe(path, "format=duration")
        .first()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_files_are_offered_and_streamed_in_a_loop() {
    gstreamer::init().unwrap();
    let media = tempfile::tempdir().unwrap();
    media_file(media.path(), "Intro clip.mp4", 2, true);
    media_file(media.path(), "silent.mkv", 2, false);
    std::fs::write(media.path().join("notes.txt"), "not media").unwrap();
    std::fs::write(media.path().join("bad\"name.mp4"), "x").unwrap();
    let cfg: strata_agent::config::AgentConfig = toml::from_str(&format!(
        "relay_url = \"https://relay.example\"\nmedia_dir = \"{}\"\n[inputs]\nauto_detect = false\n",
        media.path().display()
    ))
    .unwrap();
    let inputs = strata_agent::inventory::inputs(&cfg);
    let ids: Vec<&str> = inputs.list.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        ids,
        ["file-intro-clip-mp4", "file-silent-mkv"],
        "{:?}",
        inputs.list
    );

    for id in ids {
        let receiver = BondedReceiver::new(ReceiverConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            psk: Some(Psk::new(PSK).unwrap()),
            buffer_ms: 300,
        })
        .unwrap();
        let links = vec![
            toml::from_str::<SimulatedLink>("name = \"wwan0\"\nrate_kbps = 8000\ndelay_ms = 5")
                .unwrap(),
        ];
        let req = StreamRequest {
            stream_id: format!("file-{id}"),
            relay_host: "127.0.0.1".into(),
            ports: receiver.ports(),
            encoder: EncoderSettings {
                input: id.into(),
                codec: Codec::H264,
                height: 360,
                fps: 25,
                min_kbps: 500,
                max_kbps: 1000,
                audio: true,
            },
        };
        let plan = LinkPlan::Simulated { seed: 5, links };
        let mut stream = Stream::start(&req, PSK, &plan, &inputs).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ts");
        let mut file = std::fs::File::create(&path).unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(6) {
            stream.tick().unwrap();
            if let Some(ts) =
                tokio::task::block_in_place(|| receiver.read(Duration::from_millis(100))).unwrap()
            {
                file.write_all(&ts).unwrap();
            }
        }
        stream.stop();
        let mut codecs = codecs_of(&path);
        codecs.dedup();
        codecs.truncate(2);
        let expect: &[&str] = if id.contains("silent") {
            &["h264"]
        } else {
            &["h264", "aac"]
        };
        assert_eq!(codecs, expect, "{id}: a file's own tracks are sent");
        // Paced in real time and looped: a 2 s file fills most of 6 s.
        let secs = duration_of(&path);
        eprintln!("{id}: {secs:.1} s received in 6 s");
        assert!((4.0..=7.0).contains(&secs), "{id}: {secs} s received");
    }
}
