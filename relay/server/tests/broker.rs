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
