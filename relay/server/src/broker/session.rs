//! One device's MQTT session: reads packets from its TLS stream, lets
//! through only what its own topics allow, hands them to rumqttd's router
//! over a local link, and writes the router's answers back. This is
//! rumqttd's own remote link loop plus the checks it lacks (client id = the
//! certificate's device id, topic ACL, revocation cut-off).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::Notification;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    self, ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill, Packet, Protocol,
};
use strata_proto::topic::{self, Kind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::{Broker, Registration};

/// A device must send CONNECT this soon after the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest MQTT packet accepted: a protocol envelope plus topic and headers.
pub const MAX_PACKET: usize = strata_proto::envelope::MAX_PAYLOAD + 1024;
/// Writes to a device that take longer than this end its session (a stalled
/// reader must not hold the router's buffers forever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why reading a packet failed.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    /// The connection closed or failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// EOF.
    #[error("connection closed")]
    Closed,
    /// Not MQTT, or larger than we take.
    #[error("malformed or oversized MQTT packet: {0}")]
    Bad(String),
}

/// How a session ended.
#[derive(Debug)]
enum End {
    /// The device said DISCONNECT: no will.
    Clean,
    /// Network error, keep-alive timeout, ACL violation or revocation: the will fires.
    Abnormal(String),
    /// The same device connected again: the new session owns presence now.
    TakenOver,
}

/// Whether a device may publish on `topic`: only its own device-to-relay topics.
pub fn may_publish(device_id: &str, topic: &[u8]) -> bool {
    std::str::from_utf8(topic)
        .ok()
        .and_then(topic::parse)
        .is_some_and(|(d, k)| d == device_id && k.from_device())
}

/// Whether a device may subscribe to `filter`: only its own command topic.
pub fn may_subscribe(device_id: &str, filter: &str) -> bool {
    filter == topic::topic(device_id, Kind::Command)
}

async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Result<Packet, ReadError> {
    loop {
        match V4.read_mut(buf, MAX_PACKET) {
            Ok(p) => return Ok(p),
            Err(protocol::Error::InsufficientBytes(_)) => {
                if rd.read_buf(buf).await? == 0 {
                    return Err(ReadError::Closed);
                }
            }
            Err(e) => return Err(ReadError::Bad(format!("{e:?}"))),
        }
    }
}

async fn write_packet<W: AsyncWrite + Unpin>(wr: &mut W, packet: Packet) -> anyhow::Result<()> {
    let mut buf = BytesMut::new();
    V4.write(packet, &mut buf)
        .map_err(|e| anyhow::anyhow!("encoding MQTT packet: {e:?}"))?;
    tokio::time::timeout(WRITE_TIMEOUT, async {
        wr.write_all(&buf).await?;
        wr.flush().await
    })
    .await
    .map_err(|_| anyhow::anyhow!("device stopped reading"))??;
    Ok(())
}

fn refuse(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    )
}

/// Runs one device connection to its end.
pub async fn run<S>(broker: std::sync::Arc<Broker>, stream: S, device_id: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut rbuf = BytesMut::with_capacity(4096);
    let first = match tokio::time::timeout(CONNECT_TIMEOUT, read_packet(&mut rd, &mut rbuf)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::info!(device = %device_id, error = %e, "no MQTT session");
            return;
        }
        Err(_) => {
            tracing::info!(device = %device_id, "no CONNECT in time");
            return;
        }
    };
    let Packet::Connect(connect, _, will, _, _) = first else {
        tracing::warn!(device = %device_id, "first packet was not CONNECT");
        return;
    };
    if connect.client_id != device_id {
        tracing::warn!(device = %device_id, client_id = %connect.client_id,
            "client id is not the certificate's device id: refused");
        let _ = write_packet(&mut wr, refuse(ConnectReturnCode::ClientIdentifierNotValid)).await;
        return;
    }
    if connect.keep_alive == 0 {
        tracing::warn!(device = %device_id, "keep-alive 0 refused");
        let _ = write_packet(&mut wr, refuse(ConnectReturnCode::ProtocolError)).await;
        return;
    }
    if let Some(w) = &will
        && !may_publish(&device_id, &w.topic)
    {
        tracing::warn!(device = %device_id, "last will outside the device's topics: refused");
        let _ = write_packet(&mut wr, refuse(ConnectReturnCode::NotAuthorized)).await;
        return;
    }

    let registration = broker.register(&device_id);
    let (tx, rx, ack) = match broker.link(&device_id, connect.clean_session).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(device = %device_id, error = %e, "router refused the link");
            let _ = write_packet(&mut wr, refuse(ConnectReturnCode::ServerUnavailable)).await;
            broker.unregister(&device_id, &registration);
            return;
        }
    };
    let connack: Option<Packet> = ack.into();
    let keep_alive = Duration::from_millis(u64::from(connect.keep_alive) * 1500);
    tracing::info!(device = %device_id, keep_alive_s = connect.keep_alive, "device connected");

    let end = match connack {
        Some(p) => match write_packet(&mut wr, p).await {
            Ok(()) => {
                pump(
                    &broker,
                    &device_id,
                    &registration,
                    keep_alive,
                    (&mut rd, &mut rbuf, &mut wr),
                    tx,
                    rx,
                )
                .await
            }
            Err(e) => End::Abnormal(e.to_string()),
        },
        None => End::Abnormal("router sent no CONNACK".into()),
    };
    match &end {
        End::Abnormal(why) => {
            tracing::info!(device = %device_id, reason = %why, "device connection lost");
            if let Some(w) = will {
                broker.publish_will(w).await;
            }
        }
        End::Clean => tracing::info!(device = %device_id, "device disconnected"),
        End::TakenOver => tracing::info!(device = %device_id, "replaced by a new connection"),
    }
    broker.unregister(&device_id, &registration);
}

type Io<'a, R, W> = (&'a mut R, &'a mut BytesMut, &'a mut W);

async fn pump<R, W>(
    broker: &Broker,
    device_id: &str,
    reg: &Registration,
    keep_alive: Duration,
    (rd, rbuf, wr): Io<'_, R, W>,
    mut tx: LinkTx,
    mut rx: LinkRx,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut deadline = Instant::now() + keep_alive;
    let end = loop {
        tokio::select! {
            _ = reg.cancel.cancelled() => {
                break if reg.taken_over() { End::TakenOver } else { End::Abnormal("revoked".into()) };
            }
            _ = tokio::time::sleep_until(deadline) => break End::Abnormal("keep-alive timeout".into()),
            p = read_packet(rd, rbuf) => {
                let p = match p {
                    Ok(p) => p,
                    Err(e) => {
                        if matches!(e, ReadError::Bad(_)) {
                            tracing::warn!(device = %device_id, error = %e, "disconnected");
                            broker.count_refused();
                        }
                        break End::Abnormal(e.to_string());
                    }
                };
                deadline = Instant::now() + keep_alive;
                match &p {
                    Packet::Disconnect(..) => break End::Clean,
                    Packet::Publish(publ, _) if !may_publish(device_id, &publ.topic) => {
                        tracing::warn!(device = %device_id,
                            topic = %String::from_utf8_lossy(&publ.topic),
                            "publish outside the device's topics: disconnected");
                        broker.count_refused();
                        break End::Abnormal("ACL: publish".into());
                    }
                    Packet::Subscribe(sub, _)
                        if !sub.filters.iter().all(|f| may_subscribe(device_id, &f.path)) =>
                    {
                        tracing::warn!(device = %device_id, "subscribe outside the device's topics: disconnected");
                        broker.count_refused();
                        break End::Abnormal("ACL: subscribe".into());
                    }
                    Packet::Connect(..) => break End::Abnormal("second CONNECT".into()),
                    _ => {}
                }
                if let Err(e) = tx.send(p).await {
                    break End::Abnormal(format!("router: {e}"));
                }
            }
            n = rx.next() => match n {
                Ok(Some(Notification::Unschedule)) => {
                    if let Err(e) = rx.wake().await {
                        break End::Abnormal(format!("router: {e}"));
                    }
                }
                Ok(Some(Notification::Disconnect(..))) => break End::TakenOver,
                Ok(Some(n)) => {
                    if let Some(packet) = Option::<Packet>::from(n)
                        && let Err(e) = write_packet(wr, packet).await
                    {
                        break End::Abnormal(e.to_string());
                    }
                }
                Ok(None) => {}
                // The router dropped this link: another connection took the id.
                Err(_) => break End::TakenOver,
            },
        }
    };
    // Tell the router the link is gone so it drops the connection's state.
    let _ = tx
        .send(Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        ))
        .await;
    end
}

/// A will as the router takes it from a local link (always QoS 0).
pub fn will_publish(w: LastWill) -> Packet {
    Packet::Publish(
        protocol::Publish::new::<Bytes>(w.topic, w.message, w.retain),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl() {
        let me = "dev1";
        assert!(may_publish(me, b"strata/v1/dev/dev1/status"));
        assert!(may_publish(me, b"strata/v1/dev/dev1/telemetry"));
        assert!(
            !may_publish(me, b"strata/v1/dev/dev1/cmd"),
            "commands come from the relay"
        );
        assert!(!may_publish(me, b"strata/v1/dev/dev2/status"));
        assert!(!may_publish(me, b"strata/v1/dev/dev1/status/x"));
        assert!(!may_publish(me, b"$SYS/x"));
        assert!(!may_publish(me, b"\xff"));
        assert!(may_subscribe(me, "strata/v1/dev/dev1/cmd"));
        for f in [
            "#",
            "strata/#",
            "strata/v1/dev/+/cmd",
            "strata/v1/dev/dev1/#",
            "strata/v1/dev/dev2/cmd",
            "$share/g/strata/v1/dev/dev1/cmd",
        ] {
            assert!(!may_subscribe(me, f), "{f}");
        }
    }
}
