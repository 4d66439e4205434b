//! The relay's control-plane MQTT client: receives what devices publish and
//! publishes commands to them, in-process over a privileged rumqttd link to
//! the embedded broker, or as an MQTT client of an external broker
//! ([`crate::broker::mosquitto`]). Both hand the registry the same [`Inbound`].

use bytes::Bytes;
use rumqttd::Notification;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use strata_proto::topic::{self, Kind};
use tokio::sync::mpsc;

use crate::broker::Broker;

/// A message a device published.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Its topic.
    pub topic: String,
    /// Its payload (a strata-proto envelope).
    pub payload: Bytes,
}

/// How many inbound messages may wait for the registry before the reader
/// waits too (back-pressure instead of unbounded memory).
const INBOUND_QUEUE: usize = 4096;

/// Publishes to devices.
pub enum ControlPlane {
    /// A privileged link to the embedded broker's router.
    Embedded(tokio::sync::Mutex<LinkTx>),
    /// A client of the external broker.
    External(rumqttc::AsyncClient),
}

impl ControlPlane {
    /// Connects to the embedded broker and subscribes to every device-to-relay topic.
    pub async fn embedded(
        broker: &Broker,
    ) -> anyhow::Result<(ControlPlane, mpsc::Receiver<Inbound>)> {
        let (mut tx, rx) = broker.control_link().await?;
        for kind in Kind::ALL.into_iter().filter(|k| k.from_device()) {
            tx.subscribe(topic::all_devices(kind))
                .map_err(|e| anyhow::anyhow!("subscribing the control link: {e}"))?;
        }
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        tokio::spawn(read_link(rx, in_tx));
        Ok((ControlPlane::Embedded(tokio::sync::Mutex::new(tx)), in_rx))
    }

    /// The queue external-broker messages go to, and its receiving end.
    pub fn inbound_queue() -> (mpsc::Sender<Inbound>, mpsc::Receiver<Inbound>) {
        mpsc::channel(INBOUND_QUEUE)
    }

    /// Publishes to a device topic.
    pub async fn publish(&self, topic: String, payload: Vec<u8>) -> anyhow::Result<()> {
        match self {
            ControlPlane::Embedded(tx) => {
                let p = Publish::new(Bytes::from(topic), Bytes::from(payload), false);
                tx.lock()
                    .await
                    .send(Packet::Publish(p, None))
                    .await
                    .map_err(|e| anyhow::anyhow!("publishing on the control link: {e}"))?;
            }
            ControlPlane::External(client) => client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| anyhow::anyhow!("publishing to the external broker: {e}"))?,
        }
        Ok(())
    }
}

async fn read_link(mut rx: LinkRx, out: mpsc::Sender<Inbound>) {
    loop {
        match rx.next().await {
            Ok(Some(Notification::Forward(f))) => {
                let Ok(topic) = String::from_utf8(f.publish.topic.to_vec()) else {
                    continue;
                };
                let msg = Inbound {
                    topic,
                    payload: f.publish.payload,
                };
                if out.send(msg).await.is_err() {
                    return;
                }
            }
            Ok(Some(Notification::Unschedule)) => {
                if rx.wake().await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "control link to the broker closed");
                break;
            }
        }
    }
}
