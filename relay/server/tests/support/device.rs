//! A device as the broker sees it: a key, a certificate from the relay's
//! device CA, and a rumqttc client over mutual TLS (the agent's stack).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use strata_proto::enrollment::{DeviceCredentials, GRANT_TYPE};
use strata_proto::message::{DeviceMessage, Status};
use strata_proto::topic::{self, Kind};
use strata_relay::ca::DeviceCa;
use tokio::sync::mpsc;

/// A device key and certificate.
pub struct TestDevice {
    /// Device id (the certificate's CN).
    pub id: String,
    /// Certificate chain, PEM.
    pub chain_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}

/// A CSR for `key`, as the agent makes it (PEM).
pub fn csr(key: &rcgen::KeyPair) -> String {
    rcgen::CertificateParams::default()
        .serialize_request(key)
        .unwrap()
        .pem()
        .unwrap()
}

/// A device whose CSR `ca` signed for `id`.
pub fn enrolled(ca: &DeviceCa, id: &str) -> TestDevice {
    let key = rcgen::KeyPair::generate().unwrap();
    let issued = ca.sign_device(&csr(&key), id, 30).unwrap();
    TestDevice {
        id: id.into(),
        chain_pem: issued.cert_pem,
        key_pem: key.serialize_pem(),
    }
}

/// A status message, encoded.
pub fn status(online: bool) -> Vec<u8> {
    strata_proto::envelope::encode(&DeviceMessage::Status(Status {
        online,
        agent_version: "test".into(),
        boot_id: "boot-1".into(),
        streaming: None,
    }))
}

/// rumqttc options for `dev` connecting as `client_id` to `port` on loopback,
/// trusting `ca_pem`, with the offline status as retained last will.
pub fn options(dev: &TestDevice, client_id: &str, ca_pem: &str, port: u16) -> MqttOptions {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_slice_iter(dev.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(dev.key_pem.as_bytes()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    o.set_keep_alive(Duration::from_secs(5));
    o.set_last_will(rumqttc::LastWill::new(
        topic::topic(&dev.id, Kind::Status),
        status(false),
        QoS::AtLeastOnce,
        true,
    ));
    o
}

/// A connected client and what its event loop sees (an `Err` ends it).
pub struct Session {
    /// Publishes and subscribes.
    pub client: AsyncClient,
    /// Incoming packets, then the error that ended the loop.
    pub events: mpsc::UnboundedReceiver<Result<Packet, String>>,
}

/// Starts a client; its event loop runs until the first error.
pub fn connect(options: MqttOptions) -> Session {
    let (client, eventloop) = AsyncClient::new(options, 64);
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(run(eventloop, tx));
    Session { client, events }
}

async fn run(mut el: EventLoop, tx: mpsc::UnboundedSender<Result<Packet, String>>) {
    loop {
        match el.poll().await {
            Ok(Event::Incoming(p)) => {
                if tx.send(Ok(p)).is_err() {
                    return;
                }
            }
            Ok(Event::Outgoing(_)) => {}
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        }
    }
}

impl Session {
    /// Waits for the CONNACK (or the error instead).
    pub async fn connected(&mut self) -> Result<(), String> {
        loop {
            match self.next().await? {
                Packet::ConnAck(a) if a.code == rumqttc::ConnectReturnCode::Success => {
                    return Ok(());
                }
                Packet::ConnAck(a) => return Err(format!("refused: {:?}", a.code)),
                _ => {}
            }
        }
    }

    /// The next incoming packet, within 5 s.
    pub async fn next(&mut self) -> Result<Packet, String> {
        match tokio::time::timeout(Duration::from_secs(5), self.events.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => Err("event loop gone".into()),
            Err(_) => Err("nothing within 5 s".into()),
        }
    }

    /// Waits until the connection ends; returns the error and how long it took.
    pub async fn ended(&mut self, within: Duration) -> Option<(String, Duration)> {
        let start = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Err(e))) => return Some((e, start.elapsed())),
                Ok(Some(Ok(_))) => {}
                Ok(None) => return Some(("gone".into(), start.elapsed())),
                Err(_) => return None,
            }
        }
    }
}

fn json(path: &str, body: String) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// Enrolls a device the way the agent does; the owner claims it into `org`.
pub async fn enroll(
    app: &super::TestApp,
    org: &str,
    owner: &super::Browser,
) -> (DeviceCredentials, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = csr(&key);
    let body = serde_json::json!({"csr_pem": csr, "facts": {"model": "Orange Pi 5 Plus", "hostname": "van-7", "agent_version": "0.1.0"}});
    let (status, _, text) = app
        .send(json("/enroll/device/authorize", body.to_string()))
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let auth: strata_proto::enrollment::DeviceAuthorizationResponse =
        serde_json::from_str(&text).unwrap();
    let form = format!(
        "code={}&org={org}&name=Van+7&decision=approve",
        auth.user_code
    );
    let (status, _, _) = app.send(owner.post("/claim", &form)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let body = serde_json::json!({"grant_type": GRANT_TYPE, "device_code": auth.device_code});
    let (status, _, text) = app
        .send(json("/enroll/device/token", body.to_string()))
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    (serde_json::from_str(&text).unwrap(), key.serialize_pem())
}
