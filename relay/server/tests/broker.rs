//! The embedded broker over real mutual TLS with rumqttc as the device:
//! identity from the certificate, per-device topics, last will, revocation.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use rumqttc::{Packet, QoS};
use strata_proto::topic::{self, Kind};
use strata_relay::broker::{Broker, BrokerSetup};
use strata_relay::ca::DeviceCa;
use strata_relay::control::{ControlPlane, Inbound};
use support::device::{self, TestDevice};
use tokio::sync::mpsc;

struct Fixture {
    _dir: tempfile::TempDir,
    ca: DeviceCa,
    broker: std::sync::Arc<Broker>,
    control: ControlPlane,
    inbound: mpsc::Receiver<Inbound>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = DeviceCa::open_or_create(&dir.path().join("ca")).unwrap();
    let (server, key) = ca.sign_server(&["127.0.0.1".into()], 30).unwrap();
    let broker = Broker::start(BrokerSetup {
        listen: "127.0.0.1:0".parse().unwrap(),
        ca_pem: ca.ca_pem(),
        cert_pem: &server.cert_pem,
        key_pem: &key,
        revoked: HashSet::new(),
    })
    .await
    .unwrap();
    let (control, inbound) = ControlPlane::embedded(&broker).await.unwrap();
    Fixture {
        _dir: dir,
        ca,
        broker,
        control,
        inbound,
    }
}

impl Fixture {
    fn options(&self, dev: &TestDevice) -> rumqttc::MqttOptions {
        device::options(
            dev,
            &dev.id,
            self.ca.ca_pem(),
            self.broker.local_addr().port(),
        )
    }

    /// The next message the relay receives within `secs`.
    async fn relay_gets(&mut self, secs: u64) -> Option<Inbound> {
        tokio::time::timeout(Duration::from_secs(secs), self.inbound.recv())
            .await
            .ok()
            .flatten()
    }
}

fn decode_status(m: &Inbound) -> bool {
    match strata_proto::envelope::decode(&m.payload).unwrap() {
        strata_proto::message::DeviceMessage::Status(s) => s.online,
        other => panic!("not a status: {other:?}"),
    }
}

#[tokio::test]
async fn device_talks_to_relay_only_on_its_own_topics() {
    let mut f = fixture().await;
    let dev = device::enrolled(&f.ca, "dev-a");
    let mut s = device::connect(f.options(&dev));
    s.connected().await.unwrap();
    assert!(f.broker.is_connected("dev-a"));

    // Device to relay.
    s.client
        .publish(
            topic::topic("dev-a", Kind::Status),
            QoS::AtLeastOnce,
            true,
            device::status(true),
        )
        .await
        .unwrap();
    let m = f.relay_gets(5).await.expect("relay receives the status");
    assert_eq!(m.topic, "strata/v1/dev/dev-a/status");
    assert!(decode_status(&m));

    // Relay to device.
    s.client
        .subscribe(topic::topic("dev-a", Kind::Command), QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Packet::SubAck(_) = s.next().await.unwrap() {
            break;
        }
    }
    f.control
        .publish(topic::topic("dev-a", Kind::Command), b"cmd-bytes".to_vec())
        .await
        .unwrap();
    loop {
        match s.next().await.unwrap() {
            Packet::Publish(p) => {
                assert_eq!(p.topic, "strata/v1/dev/dev-a/cmd");
                assert_eq!(&p.payload[..], b"cmd-bytes");
                break;
            }
            _ => continue,
        }
    }

    // Publishing as another device: cut off, and the relay never sees it;
    // the abnormal end fires the will.
    s.client
        .publish(
            topic::topic("dev-b", Kind::Status),
            QoS::AtLeastOnce,
            false,
            device::status(true),
        )
        .await
        .unwrap();
    let (err, _) = s
        .ended(Duration::from_secs(5))
        .await
        .expect("connection cut");
    println!("after foreign publish: {err}");
    let will = f.relay_gets(5).await.expect("the will");
    assert_eq!(will.topic, "strata/v1/dev/dev-a/status");
    assert!(!decode_status(&will), "will says offline");
    assert!(
        f.relay_gets(1).await.is_none(),
        "nothing from dev-b's topic"
    );
}

#[tokio::test]
async fn subscribing_to_someone_elses_commands_is_cut_off() {
    let mut f = fixture().await;
    let dev = device::enrolled(&f.ca, "dev-a");
    let mut s = device::connect(f.options(&dev));
    s.connected().await.unwrap();
    s.client
        .subscribe("strata/v1/dev/+/cmd", QoS::AtLeastOnce)
        .await
        .unwrap();
    s.ended(Duration::from_secs(5))
        .await
        .expect("connection cut");
    assert!(f.relay_gets(5).await.is_some(), "the will fired");
}

#[tokio::test]
async fn client_id_must_be_the_certificates_device_id() {
    let f = fixture().await;
    let dev = device::enrolled(&f.ca, "dev-a");
    let opts = device::options(&dev, "dev-b", f.ca.ca_pem(), f.broker.local_addr().port());
    let mut s = device::connect(opts);
    let err = s.connected().await.expect_err("refused");
    println!("{err}");
    assert!(!f.broker.is_connected("dev-b"));
}

#[tokio::test]
async fn certificates_of_another_ca_are_refused_in_the_handshake() {
    let f = fixture().await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = DeviceCa::open_or_create(&other_dir.path().join("ca")).unwrap();
    let dev = device::enrolled(&other, "dev-a");
    // Trusts our broker, but presents a certificate from a foreign CA.
    let opts = device::options(&dev, "dev-a", f.ca.ca_pem(), f.broker.local_addr().port());
    let mut s = device::connect(opts);
    let err = s.connected().await.expect_err("refused");
    println!("{err}");
    assert!(!f.broker.is_connected("dev-a"));
}

#[tokio::test]
async fn revocation_cuts_off_within_a_second_and_refuses_reconnects() {
    let mut f = fixture().await;
    let dev = device::enrolled(&f.ca, "dev-a");
    let mut s = device::connect(f.options(&dev));
    s.connected().await.unwrap();
    let start = std::time::Instant::now();
    f.broker.revoke("dev-a");
    let (err, _) = s
        .ended(Duration::from_secs(1))
        .await
        .expect("cut off within 1 s");
    println!("cut off after {:?}: {err}", start.elapsed());
    let will = f.relay_gets(5).await.expect("the will");
    assert!(!decode_status(&will));
    assert!(!f.broker.is_connected("dev-a"));

    let mut again = device::connect(f.options(&dev));
    let err = again.connected().await.expect_err("refused at connect");
    println!("reconnect: {err}");
    assert!(!f.broker.is_connected("dev-a"));
}

#[tokio::test]
async fn a_second_connection_takes_over_without_a_false_offline() {
    let mut f = fixture().await;
    let dev = device::enrolled(&f.ca, "dev-a");
    let mut first = device::connect(f.options(&dev));
    first.connected().await.unwrap();
    let mut second = device::connect(f.options(&dev));
    second.connected().await.unwrap();
    first
        .ended(Duration::from_secs(5))
        .await
        .expect("old session closed");
    assert!(f.broker.is_connected("dev-a"));
    assert!(f.relay_gets(1).await.is_none(), "no will on takeover");
}

/// mosquitto's command-line clients, with files the relay issued.
#[tokio::test]
async fn third_party_clients_use_their_own_topics_only() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    let mut f = fixture().await;
    let dev = device::enrolled(&f.ca, "dev-a");
    let dir = tempfile::tempdir().unwrap();
    let (ca, crt, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("a.crt"),
        dir.path().join("a.key"),
    );
    std::fs::write(&ca, f.ca.ca_pem()).unwrap();
    std::fs::write(&crt, &dev.chain_pem).unwrap();
    std::fs::write(&key, &dev.key_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = f.broker.local_addr().port().to_string();
    // Blocking waits go to another thread: the broker runs on this test's runtime.
    let run = |mut c: Command| async move {
        tokio::task::spawn_blocking(move || c.status().unwrap())
            .await
            .unwrap()
    };
    let client = |prog: &str, with_cert: bool| {
        let mut c = Command::new(prog);
        c.args(["-h", "127.0.0.1", "-p", &port, "-i", "dev-a", "--cafile"])
            .arg(&ca);
        if with_cert {
            c.arg("--cert").arg(&crt).arg("--key").arg(&key);
        }
        c
    };

    // Subscribes to its own commands and gets what the relay sends.
    let sub = client("mosquitto_sub", true)
        .args(["-t", "strata/v1/dev/dev-a/cmd", "-C", "1", "-W", "10"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if f.broker.is_connected("dev-a") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // SUBSCRIBE processed
    f.control
        .publish(
            topic::topic("dev-a", Kind::Command),
            b"hello device".to_vec(),
        )
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking(move || sub.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello device");

    // Publishes on its own topic.
    let mut c = client("mosquitto_pub", true);
    c.args(["-t", "strata/v1/dev/dev-a/event", "-m", "x", "-q", "1"]);
    let st = run(c).await;
    assert!(st.success());
    let m = f.relay_gets(5).await.expect("relay receives it");
    assert_eq!(m.topic, "strata/v1/dev/dev-a/event");

    // Another device's topic: cut off before the PUBACK, nothing reaches the relay.
    let mut c = client("mosquitto_pub", true);
    c.args(["-t", "strata/v1/dev/dev-b/event", "-m", "x", "-q", "1"]);
    let st = run(c).await;
    assert!(!st.success(), "refused");
    assert!(f.relay_gets(1).await.is_none());

    // Without a certificate, or with a revoked one: no connection.
    let mut c = client("mosquitto_pub", false);
    c.args(["-t", "strata/v1/dev/dev-a/event", "-m", "x", "-q", "1"]);
    let st = run(c).await;
    assert!(!st.success(), "no certificate");
    f.broker.revoke("dev-a");
    let mut c = client("mosquitto_pub", true);
    c.args(["-t", "strata/v1/dev/dev-a/event", "-m", "x", "-q", "1"]);
    let st = run(c).await;
    assert!(!st.success(), "revoked");
    assert!(f.relay_gets(1).await.is_none());
}

/// An oversized packet ends only that device's session; others go on.
#[tokio::test]
async fn oversized_packets_cut_only_their_sender() {
    let mut f = fixture().await;
    let a = device::enrolled(&f.ca, "dev-a");
    let b = device::enrolled(&f.ca, "dev-b");
    let mut opts = f.options(&a);
    opts.set_max_packet_size(1 << 20, 1 << 20); // rumqttc would refuse it itself
    let mut sa = device::connect(opts);
    sa.connected().await.unwrap();
    let mut sb = device::connect(f.options(&b));
    sb.connected().await.unwrap();
    let big = vec![0u8; strata_proto::envelope::MAX_PAYLOAD + 4096];
    sa.client
        .publish(
            topic::topic("dev-a", Kind::Telemetry),
            QoS::AtMostOnce,
            false,
            big,
        )
        .await
        .unwrap();
    sa.ended(Duration::from_secs(5)).await.expect("cut off");
    while let Some(m) = f.relay_gets(1).await {
        assert_ne!(
            m.topic, "strata/v1/dev/dev-a/telemetry",
            "the oversized packet never reaches the relay"
        );
    }
    sb.client
        .publish(
            topic::topic("dev-b", Kind::Event),
            QoS::AtLeastOnce,
            false,
            b"still here".to_vec(),
        )
        .await
        .unwrap();
    let m = f.relay_gets(5).await.expect("dev-b still served");
    assert_eq!(m.topic, "strata/v1/dev/dev-b/event");
    assert!(f.broker.is_connected("dev-b") && !f.broker.is_connected("dev-a"));
    assert_eq!(f.broker.refused_packets(), 1);
}

/// A client that opens TCP and says nothing does not hold up anyone else
/// (each handshake runs on its own, with a time limit).
#[tokio::test]
async fn a_silent_connection_does_not_block_others() {
    let f = fixture().await;
    let _silent = tokio::net::TcpStream::connect(f.broker.local_addr())
        .await
        .unwrap();
    let dev = device::enrolled(&f.ca, "dev-a");
    let mut s = device::connect(f.options(&dev));
    s.connected()
        .await
        .expect("served while another connection is silent");
}
