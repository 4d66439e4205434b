//! The device plane end to end: a device enrolls over HTTP, connects to the
//! embedded broker with the certificate it got, reports status, inventory
//! and telemetry, answers the commands the dashboard sends, renews its
//! certificate over MQTT, and is cut off when its owner revokes it. On
//! SQLite and PostgreSQL, with rumqttc over real mutual TLS.

mod support;

use std::time::Duration;

use axum::http::{StatusCode, header};
use rumqttc::{Packet, QoS};
use strata_proto::envelope;
use strata_proto::message::{
    CommandBody, DeviceMessage, Input, InputKind, Inventory, Link, LinkKind, LinkState,
    LinkTelemetry, Outcome, RelayMessage, Reply, Telemetry,
};
use strata_proto::topic::{self, Kind};
use strata_relay::store::accounts::Role;
use strata_relay::store::senders;
use support::device::{self, TestDevice};
use support::{TestApp, test_databases};
use tokio::sync::mpsc;

fn inventory() -> Inventory {
    Inventory {
        links: vec![
            Link {
                name: "wwan0".into(),
                kind: LinkKind::Cellular,
                up: true,
                modem: None,
            },
            Link {
                name: "eth0".into(),
                kind: LinkKind::Ethernet,
                up: true,
                modem: None,
            },
        ],
        modems: vec![],
        inputs: vec![Input {
            id: "hdmi0".into(),
            kind: InputKind::V4l2,
            name: "HDMI capture".into(),
            formats: vec!["YUYV 1920x1080@30".into()],
        }],
    }
}

fn telemetry(kbps: u32) -> Vec<u8> {
    envelope::encode(&DeviceMessage::Telemetry(Telemetry {
        ts_ms: 0,
        links: vec![LinkTelemetry {
            name: "wwan0".into(),
            state: LinkState::Up,
            rtt_ms: 48,
            loss_permille: 1,
            retransmit_permille: 2,
            kbps,
            share_permille: 1000,
            signal_percent: Some(70),
        }],
        usable_kbps: kbps,
        encoder_kbps: kbps,
        fps: 30.0,
        cpu_temp_c: None,
    }))
}

/// Plays the agent's part for commands: answers each (2160p settings fail,
/// as on a board whose encoder cannot) and hands the command to the test.
fn agent(
    mut s: device::Session,
    id: String,
) -> (
    rumqttc::AsyncClient,
    mpsc::UnboundedReceiver<Result<CommandBody, String>>,
) {
    let client = s.client.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(ev) = s.events.recv().await {
            match ev {
                Ok(Packet::Publish(p)) => {
                    let RelayMessage::Command(c) = envelope::decode(&p.payload).unwrap();
                    let outcome = match &c.body {
                        CommandBody::ApplySettings(e) if e.height == 2160 => {
                            Outcome::Failed("the encoder cannot do 2160p".into())
                        }
                        _ => Outcome::Ok,
                    };
                    let reply =
                        envelope::encode(&DeviceMessage::Reply(Reply { id: c.id, outcome }));
                    s.client
                        .publish(
                            topic::topic(&id, Kind::Reply),
                            QoS::AtLeastOnce,
                            false,
                            reply,
                        )
                        .await
                        .unwrap();
                    let _ = tx.send(Ok(c.body));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    (client, rx)
}

async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test]
async fn enroll_connect_report_command_renew_revoke() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    for db in test_databases().await {
        let app = TestApp::with(&db, |c| c.broker_listen = "127.0.0.1:0".parse().unwrap()).await;
        strata_relay::web::device_plane(&app.state).await.unwrap();
        let org = app.org("Acme").await;
        let owner = app.member(&org, "owner@example.com", Role::Owner).await;
        let b = app.browser(&owner).await;

        let (creds, key_pem) = device::enroll(&app, &org.id, &b).await;
        let Some(strata_relay::broker::DeviceBroker::Embedded(broker)) = app.state.devices.broker()
        else {
            panic!("the embedded broker runs by default");
        };
        let port = broker.local_addr().port();
        assert_eq!(
            creds.broker.port, port,
            "the token reply names the broker's real port"
        );
        let id = creds.device_id.clone();
        let dev = TestDevice {
            id: id.clone(),
            chain_pem: creds.certificate_chain_pem.clone(),
            key_pem,
        };
        let mut s = device::connect(device::options(&dev, &id, &creds.ca_pem, port));
        s.connected().await.unwrap();
        s.client
            .subscribe(topic::topic(&id, Kind::Command), QoS::AtLeastOnce)
            .await
            .unwrap();
        let (client, mut commands) = agent(s, id.clone());

        // Presence and inventory.
        client
            .publish(
                topic::topic(&id, Kind::Status),
                QoS::AtLeastOnce,
                true,
                device::status(true),
            )
            .await
            .unwrap();
        client
            .publish(
                topic::topic(&id, Kind::Inventory),
                QoS::AtLeastOnce,
                true,
                envelope::encode(&DeviceMessage::Inventory(inventory())),
            )
            .await
            .unwrap();
        let (db_, org_id, sid) = (app.state.db.clone(), org.id.clone(), id.clone());
        eventually("online with inventory", async || {
            let row = senders::get(&db_, &org_id, &sid).await.unwrap().unwrap();
            row.online == 1 && row.inventory().links.len() == 2
        })
        .await;
        // Coming online, the device gets its stored settings.
        match tokio::time::timeout(Duration::from_secs(5), commands.recv()).await {
            Ok(Some(Ok(CommandBody::ApplySettings(e)))) => assert_eq!(e.input, "test"),
            other => panic!("expected settings on connect, got {other:?}"),
        }

        // The sender page shows what it reported.
        let page = format!("/o/{}/senders/{}", org.id, id);
        let (_, _, html) = app.send(b.get(&page)).await;
        assert!(
            html.contains("HDMI capture") && html.contains("wwan0"),
            "[{}] inventory on the page",
            app.label
        );

        // Settings saved on the page go to the device, which confirms.
        let form = "input=hdmi0&codec=h264&height=1080&fps=30&min_kbps=800&max_kbps=4000&audio=on";
        let (status, headers, body) = app.send(b.post(&format!("{page}/settings"), form)).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        assert!(
            headers[header::LOCATION]
                .to_str()
                .unwrap()
                .ends_with("saved=applied")
        );
        match commands.recv().await {
            Some(Ok(CommandBody::ApplySettings(e))) => {
                assert_eq!((e.input.as_str(), e.max_kbps), ("hdmi0", 4000))
            }
            other => panic!("expected settings, got {other:?}"),
        }

        // Telemetry reaches the live view.
        for kbps in [1500, 1600, 1700] {
            client
                .publish(
                    topic::topic(&id, Kind::Telemetry),
                    QoS::AtMostOnce,
                    false,
                    telemetry(kbps),
                )
                .await
                .unwrap();
        }
        let (state, sid) = (app.state.clone(), id.clone());
        eventually("telemetry in memory", async || {
            state.devices.telemetry.since(&sid, 0).len() == 3
        })
        .await;

        // Garbage is dropped with a count, and the device stays connected.
        let dropped = app.state.metrics.device_messages_dropped.get();
        client
            .publish(
                topic::topic(&id, Kind::Telemetry),
                QoS::AtLeastOnce,
                false,
                b"\x07garbage".to_vec(),
            )
            .await
            .unwrap();
        client
            .publish(
                topic::topic(&id, Kind::Status),
                QoS::AtLeastOnce,
                false,
                telemetry(1),
            )
            .await
            .unwrap();
        let state = app.state.clone();
        eventually("two messages dropped", async || {
            state.metrics.device_messages_dropped.get() == dropped + 2
        })
        .await;

        // Renewal over MQTT: a CSR for the same key; the new certificate comes back as a command.
        let key = rcgen::KeyPair::from_pem(&dev.key_pem).unwrap();
        let csr = device::csr(&key);
        client
            .publish(
                topic::topic(&id, Kind::Renew),
                QoS::AtLeastOnce,
                false,
                envelope::encode(&DeviceMessage::Renew { csr_pem: csr }),
            )
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(5), commands.recv()).await {
            Ok(Some(Ok(CommandBody::CertificateIssued { chain_pem }))) => {
                let der = pem::parse(&chain_pem).unwrap().into_contents();
                let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
                assert_eq!(
                    cert.subject()
                        .iter_common_name()
                        .next()
                        .unwrap()
                        .as_str()
                        .unwrap(),
                    id
                );
            }
            other => panic!("expected a renewed certificate, got {other:?}"),
        }
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM device_certificates WHERE sender_id = $1")
                .bind(&id)
                .fetch_one(&app.state.db)
                .await
                .unwrap();
        assert_eq!(n, 2, "enrollment and renewal recorded");

        // A device answering "failed" shows the reason on the page.
        let (status, _, html) = app
            .send(b.post(
                &format!("{page}/settings"),
                "input=test&codec=h264&height=2160&fps=30&min_kbps=800&max_kbps=4000",
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            html.contains("could not apply them: the encoder cannot do 2160p"),
            "{html}"
        );
        let _ = commands.recv().await;

        // Revocation from the dashboard cuts the device off within a second.
        let start = std::time::Instant::now();
        let (status, _, body) = app
            .send(b.post(&format!("{page}/revoke"), "confirm=yes"))
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        let ended = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match commands.recv().await {
                    Some(Err(e)) => return e,
                    None => return "gone".into(),
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
        .expect("cut off within 1 s");
        println!(
            "[{}] revoked device cut off after {:?}: {ended}",
            app.label,
            start.elapsed()
        );
        let row = senders::get(&app.state.db, &org.id, &id)
            .await
            .unwrap()
            .unwrap();
        assert!(row.revoked_at.is_some() && row.online == 0);
        let (_, _, html) = app.send(b.get(&page)).await;
        assert!(html.contains("revoked"));

        let mut again = device::connect(device::options(&dev, &id, &creds.ca_pem, port));
        let err = again.connected().await.expect_err("refused at connect");
        assert!(err.contains("Revoked") || err.contains("revoked"), "{err}");
    }
}
