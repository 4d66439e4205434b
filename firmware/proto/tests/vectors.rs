//! Golden vectors: the bytes of one sample of every message, pinned in
//! `tests/vectors.txt`. Both sides build against this crate, and a future
//! version must still decode what an older device sends (or refuse it by
//! version). `STRATA_BLESS=1 cargo test -p strata-proto` rewrites the file
//! after a deliberate wire change (which also needs a new PROTOCOL_VERSION).

use strata_proto::message::*;
use strata_proto::{decode, encode};

fn encoder() -> EncoderSettings {
    EncoderSettings {
        input: "hdmi0".into(),
        codec: Codec::H264,
        height: 1080,
        fps: 30,
        min_kbps: 800,
        max_kbps: 6000,
        audio: true,
    }
}

/// A sample: its name, its encoding, and a check that bytes decode back to it.
type Sample = (&'static str, Vec<u8>, Box<dyn Fn(&[u8]) -> bool>);

fn samples() -> Vec<Sample> {
    fn case<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + 'static>(
        name: &'static str,
        v: T,
    ) -> Sample {
        let bytes = encode(&v);
        (
            name,
            bytes,
            Box::new(move |b| decode::<T>(b).is_ok_and(|d| d == v)),
        )
    }
    vec![
        case(
            "status",
            DeviceMessage::Status(Status {
                online: true,
                agent_version: "0.1.0".into(),
                boot_id: "b00t".into(),
                streaming: Some("str1".into()),
            }),
        ),
        case(
            "status_will",
            DeviceMessage::Status(Status {
                online: false,
                agent_version: "0.1.0".into(),
                boot_id: "b00t".into(),
                streaming: None,
            }),
        ),
        case(
            "inventory",
            DeviceMessage::Inventory(Inventory {
                links: vec![
                    Link {
                        name: "wwan0".into(),
                        kind: LinkKind::Cellular,
                        up: true,
                        modem: Some("m0".into()),
                    },
                    Link {
                        name: "eth0".into(),
                        kind: LinkKind::Ethernet,
                        up: false,
                        modem: None,
                    },
                ],
                modems: vec![Modem {
                    id: "m0".into(),
                    manufacturer: "Quectel".into(),
                    model: "EC25".into(),
                    imei: "867698040000001".into(),
                    sim: SimState::Ready,
                    operator: Some("Telia".into()),
                    access_tech: "lte".into(),
                    signal_percent: 71,
                    rsrp_dbm: Some(-95.5),
                    rsrq_db: Some(-11.0),
                    sinr_db: Some(13.25),
                    enabled: true,
                    apn: Some("internet".into()),
                    interface: Some("wwan0".into()),
                    data: ModemData::BearerFailed { nm_reason: 29 },
                }],
                inputs: vec![Input {
                    id: "hdmi0".into(),
                    kind: InputKind::V4l2,
                    name: "HDMI capture".into(),
                    formats: vec!["YUYV 1920x1080@30".into()],
                }],
            }),
        ),
        case(
            "telemetry",
            DeviceMessage::Telemetry(Telemetry {
                ts_ms: 1_800_000_000_000,
                links: vec![LinkTelemetry {
                    name: "wwan0".into(),
                    state: LinkState::Up,
                    rtt_ms: 48,
                    loss_permille: 3,
                    retransmit_permille: 12,
                    kbps: 2100,
                    share_permille: 512,
                    signal_percent: Some(71),
                }],
                usable_kbps: 4200,
                encoder_kbps: 3800,
                fps: 29.97,
                cpu_temp_c: Some(61.5),
            }),
        ),
        case(
            "reply_ok",
            DeviceMessage::Reply(Reply {
                id: 42,
                outcome: Outcome::Ok,
            }),
        ),
        case(
            "reply_failed",
            DeviceMessage::Reply(Reply {
                id: 43,
                outcome: Outcome::Failed("no such modem".into()),
            }),
        ),
        case(
            "event",
            DeviceMessage::Event(Event {
                ts_ms: 1_800_000_000_500,
                kind: EventKind::StreamStopped {
                    stream_id: "str1".into(),
                    reason: "stop command".into(),
                },
            }),
        ),
        case(
            "renew",
            DeviceMessage::Renew {
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            },
        ),
        case(
            "start_stream",
            RelayMessage::Command(Command {
                id: 7,
                body: CommandBody::StartStream {
                    stream_id: "str1".into(),
                    relay_host: "relay.example.com".into(),
                    ports: vec![15000, 15002, 15004],
                    psk: Secret("0123456789abcdef0123456789abcdef".into()),
                    encoder: encoder(),
                },
            }),
        ),
        case(
            "stop_stream",
            RelayMessage::Command(Command {
                id: 8,
                body: CommandBody::StopStream {
                    stream_id: "str1".into(),
                },
            }),
        ),
        case(
            "apply_settings",
            RelayMessage::Command(Command {
                id: 9,
                body: CommandBody::ApplySettings(encoder()),
            }),
        ),
        case(
            "unlock_sim",
            RelayMessage::Command(Command {
                id: 10,
                body: CommandBody::UnlockSim {
                    modem: "m0".into(),
                    pin: Secret("1234".into()),
                },
            }),
        ),
        case(
            "update",
            RelayMessage::Command(Command {
                id: 11,
                body: CommandBody::Update {
                    version: "0.2.0".into(),
                    url: "https://relay/agent".into(),
                    sha256: "ab".repeat(32),
                    signature: "cd".repeat(64),
                },
            }),
        ),
    ]
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn wire_format_is_pinned() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors.txt");
    let samples = samples();
    if std::env::var_os("STRATA_BLESS").is_some() {
        let text: String = samples
            .iter()
            .map(|(n, b, _)| format!("{n} {}\n", hex(b)))
            .collect();
        std::fs::write(&path, text).unwrap();
    }
    let text =
        std::fs::read_to_string(&path).expect("tests/vectors.txt (STRATA_BLESS=1 to create)");
    let stored: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(stored.len(), samples.len(), "every message has a vector");
    for ((name, bytes, decodes), (sname, shex)) in samples.iter().zip(stored) {
        assert_eq!(*name, sname);
        assert_eq!(hex(bytes), shex, "{name}: encoding changed");
        assert!(
            decodes(&unhex(shex)),
            "{name}: stored vector no longer decodes to the sample"
        );
    }
}

#[test]
fn garbage_and_wrong_types_are_refused_without_panic() {
    let status = encode(&DeviceMessage::Status(Status {
        online: true,
        agent_version: "v".into(),
        boot_id: "b".into(),
        streaming: None,
    }));
    // A device message is not a relay message.
    assert!(decode::<RelayMessage>(&status).is_err());
    // Truncations and bit flips of every sample: errors or other valid values, never a panic.
    for (_, bytes, _) in samples() {
        for cut in 0..bytes.len() {
            let _ = decode::<DeviceMessage>(&bytes[..cut]);
            let _ = decode::<RelayMessage>(&bytes[..cut]);
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xA5;
            let _ = decode::<DeviceMessage>(&b);
            let _ = decode::<RelayMessage>(&b);
        }
    }
    // A huge declared length does not allocate it.
    let mut huge = encode(&0u8)[..1].to_vec();
    huge.extend([0x05, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(decode::<DeviceMessage>(&huge).is_err());
}
