//! The control channel: rumqttc over rustls with the device certificate,
//! to the broker the relay named at enrollment. The offline status is the
//! retained last will. The event loop runs in its own task and reconnects
//! every 1–2 s while the network is away, so the channel is back within
//! seconds of the network; what it receives reaches the agent over a channel,
//! and the agent only ever `try_publish`es, so nothing in the data plane
//! waits on MQTT.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use strata_proto::message::{DeviceMessage, Status};
use strata_proto::topic::{self, Kind};
use tokio::sync::mpsc;

use crate::identity::Identity;

/// What the event loop tells the agent.
#[derive(Debug)]
pub enum Incoming {
    /// Connected (again): subscribe, publish status and inventory.
    Connected,
    /// A command payload on our `cmd` topic.
    Command(Vec<u8>),
    /// The connection dropped; the loop retries by itself.
    Disconnected(String),
    /// The broker refused our certificate as revoked: the loop has stopped.
    Revoked,
}

/// A connected (or reconnecting) control channel.
pub struct Channel {
    client: AsyncClient,
    device_id: String,
    /// Incoming events.
    pub incoming: mpsc::Receiver<Incoming>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Our presence, encoded.
pub fn status(online: bool, streaming: Option<String>) -> Vec<u8> {
    strata_proto::encode(&DeviceMessage::Status(Status {
        online,
        agent_version: crate::update::running_version(),
        boot_id: boot_id(),
        streaming,
    }))
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl Channel {
    /// Starts the channel with the identity's certificate.
    pub fn open(identity: &Identity) -> anyhow::Result<Channel> {
        let creds = identity
            .credentials
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("not enrolled"))?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(creds.ca_pem.as_bytes()) {
            roots.add(c?)?;
        }
        let chain = CertificateDer::pem_slice_iter(creds.certificate_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem().as_bytes())?;
        let tls = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        let id = &creds.device_id;
        let mut o = MqttOptions::new(id, &creds.broker.host, creds.broker.port);
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        o.set_keep_alive(Duration::from_secs(10));
        o.set_max_packet_size(
            strata_proto::MAX_PAYLOAD + 1024,
            strata_proto::MAX_PAYLOAD + 1024,
        );
        o.set_last_will(rumqttc::LastWill::new(
            topic::topic(id, Kind::Status),
            status(false, None),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut eventloop) = AsyncClient::new(o, 64);
        let (tx, incoming) = mpsc::channel(64);
        let cmd_topic = topic::topic(id, Kind::Command);
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        failures = 0;
                        let _ = tx.send(Incoming::Connected).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == cmd_topic => {
                        let _ = tx.send(Incoming::Command(p.payload.to_vec())).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let text = format!("{e}: {e:?}");
                        if text.contains("CertificateRevoked") {
                            let _ = tx.send(Incoming::Revoked).await;
                            return;
                        }
                        let _ = tx.send(Incoming::Disconnected(e.to_string())).await;
                        failures += 1;
                        // Quick retries: the network may be back any moment.
                        let ms = if failures < 3 { 1000 } else { 2000 };
                        let jitter = rand::random_range(0..250);
                        tokio::time::sleep(Duration::from_millis(ms + jitter)).await;
                    }
                }
            }
        });
        Ok(Channel {
            client,
            device_id: id.clone(),
            incoming,
            task,
        })
    }

    /// Subscribes to our command topic.
    pub fn subscribe(&self) {
        if let Err(e) = self.client.try_subscribe(
            topic::topic(&self.device_id, Kind::Command),
            QoS::AtLeastOnce,
        ) {
            tracing::warn!(error = %e, "subscribing to commands failed");
        }
    }

    /// Publishes a message of `kind`; dropped (with a debug line) when the
    /// outgoing queue is full: the data plane never waits on MQTT.
    pub fn publish(&self, kind: Kind, retain: bool, payload: Vec<u8>) {
        let qos = if kind == Kind::Telemetry {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        if let Err(e) =
            self.client
                .try_publish(topic::topic(&self.device_id, kind), qos, retain, payload)
        {
            tracing::debug!(error = %e, kind = kind.as_str(), "publish dropped");
        }
    }

    /// Publishes `msg` on its topic.
    pub fn send(&self, msg: &DeviceMessage) {
        let (kind, retain) = match msg {
            DeviceMessage::Status(_) => (Kind::Status, true),
            DeviceMessage::Inventory(_) => (Kind::Inventory, true),
            DeviceMessage::Telemetry(_) => (Kind::Telemetry, false),
            DeviceMessage::Reply(_) => (Kind::Reply, false),
            DeviceMessage::Event(_) => (Kind::Event, false),
            DeviceMessage::Renew { .. } => (Kind::Renew, false),
        };
        self.publish(kind, retain, strata_proto::encode(msg));
    }

    /// Says goodbye: offline status, then a clean disconnect (no will).
    pub async fn close(self) {
        self.publish(Kind::Status, true, status(false, None));
        self.disconnect().await;
    }

    /// Disconnects cleanly (the broker does not publish the will).
    pub async fn disconnect(self) {
        let _ = self.client.try_disconnect();
        // Give the event loop a moment to flush what is queued.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
