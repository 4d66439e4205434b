//! The relay's control-plane MQTT client: receives what devices publish and
//! publishes commands to them, in-process over a privileged rumqttd link to
//! the embedded broker. (An external broker is not supported yet; it would
//! be a second way to build a [`ControlPlane`] with the same [`Inbound`].)

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
pub struct ControlPlane {
    tx: tokio::sync::Mutex<LinkTx>,
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
        Ok((
            ControlPlane {
                tx: tokio::sync::Mutex::new(tx),
            },
            in_rx,
        ))
    }

    /// Publishes to a device topic.
    pub async fn publish(&self, topic: String, payload: Vec<u8>) -> anyhow::Result<()> {
        let p = Publish::new(Bytes::from(topic), Bytes::from(payload), false);
        self.tx
            .lock()
            .await
            .send(Packet::Publish(p, None))
            .await
            .map_err(|e| anyhow::anyhow!("publishing on the control link: {e}"))?;
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
