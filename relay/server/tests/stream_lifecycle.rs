//! Stream lifecycle end to end: "Start" on the sender page spawns a real
//! strata-receiver, the device (rumqttc + a real bonded RIST sender from
//! strata-rist) is told where to send with which PSK, a recording fills up
//! and plays (ffprobe), "Stop" finalizes it and returns the ports; lost
//! input stops a stream and tells the device; a restarted relay re-adopts a
//! running worker and closes the record of one that is gone.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{StatusCode, header};
use rumqttc::{Packet, QoS};
use strata_proto::envelope;
use strata_proto::message::{
    CommandBody, DeviceMessage, Inventory, Link, LinkKind, Outcome, RelayMessage, Reply,
};
use strata_proto::topic::{self, Kind};
use strata_relay::store::accounts::Role;
use strata_relay::store::destinations::{self, DestinationInput};
use strata_relay::store::streams;
use support::device::{self, TestDevice};
use support::{TestApp, test_databases};
use tokio::sync::mpsc;

/// A 10 s H.264 + AAC test pattern as MPEG-TS (made once with ffmpeg).
fn pattern() -> &'static [u8] {
    static DATA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DATA.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("relay-pattern-10s.ts");
        if !path.exists() {
            let tmp = path.with_extension(format!("{}.ts", std::process::id()));
            let st = std::process::Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "error", "-y"])
                .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25"])
                .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
                .args([
                    "-t",
                    "10",
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    "-b:v",
                    "1000k",
                    "-g",
                    "25",
                ])
                .args([
                    "-c:a", "aac", "-b:a", "96k", "-f", "mpegts", "-muxrate", "1400000",
                ])
                .arg(&tmp)
                .status()
                .unwrap();
            assert!(st.success(), "ffmpeg makes the test pattern");
            std::fs::rename(&tmp, &path).unwrap();
        }
        std::fs::read(&path).unwrap()
    })
}

/// The device's sending side: a bonded RIST sender looping the pattern at
/// about 1.5 Mbit/s until told to stop.
struct Sending {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sending {
    fn start(host: &str, ports: &[u16], psk: &str) -> Sending {
        let links = ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                strata_rist::LinkSpec::new(format!("l{i}"), format!("{host}:{p}").parse().unwrap())
            })
            .collect();
        let cfg = strata_rist::SenderConfig {
            psk: Some(strata_rist::Psk::new(psk).unwrap()),
            ..Default::default()
        };
        let mut tx = strata_rist::BondedSender::new(cfg, links).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let data = pattern();
            let chunk = 7 * 188;
            let whole = data.len() / chunk * chunk;
            let start = std::time::Instant::now();
            let mut sent = 0usize;
            while !s.load(Ordering::Relaxed) {
                let c = &data[sent % whole..][..chunk];
                tx.send(c).unwrap();
                sent += chunk;
                // 1.5 Mbit/s = 187.5 kB/s.
                let due = Duration::from_secs_f64(sent as f64 / 187_500.0);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            let _ = tx.flush();
        });
        Sending {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the simulated agent saw.
#[derive(Debug)]
enum Seen {
    Started(String, Vec<u16>),
    Stopped(String),
}

/// The agent's stream handling: starts and stops the sender on command and
/// replies. `cut` drops the sender without being told (input lost).
struct Agent {
    seen: mpsc::UnboundedReceiver<Seen>,
    /// Drops the sender without being told (input lost).
    cut: mpsc::UnboundedSender<()>,
    /// Says offline (as its will would) and drops the sender.
    offline: mpsc::UnboundedSender<()>,
    /// Says online again.
    online: mpsc::UnboundedSender<()>,
}

fn agent(mut s: device::Session, id: String) -> Agent {
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (cut, mut cut_rx) = mpsc::unbounded_channel::<()>();
    let (offline, mut offline_rx) = mpsc::unbounded_channel::<()>();
    let (online, mut online_rx) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        // Held to keep sending; dropping it stops the sender.
        let mut _sending: Option<Sending> = None;
        loop {
            tokio::select! {
                Some(()) = cut_rx.recv() => { _sending = None; }
                Some(()) = offline_rx.recv() => {
                    _sending = None;
                    s.client.publish(topic::topic(&id, Kind::Status), QoS::AtLeastOnce, true, device::status(false)).await.unwrap();
                }
                Some(()) = online_rx.recv() => {
                    s.client.publish(topic::topic(&id, Kind::Status), QoS::AtLeastOnce, true, device::status(true)).await.unwrap();
                }
                ev = s.events.recv() => {
                    let Some(Ok(Packet::Publish(p))) = ev else {
                        if ev.is_none() { return; }
                        continue;
                    };
                    let RelayMessage::Command(c) = envelope::decode(&p.payload).unwrap();
                    match &c.body {
                        CommandBody::StartStream { stream_id, relay_host, ports, psk, encoder } => {
                            assert_eq!(encoder.codec, strata_proto::message::Codec::H264);
                            _sending = Some(Sending::start(relay_host, ports, &psk.0));
                            let _ = seen_tx.send(Seen::Started(stream_id.clone(), ports.clone()));
                        }
                        CommandBody::StopStream { stream_id } => {
                            _sending = None;
                            let _ = seen_tx.send(Seen::Stopped(stream_id.clone()));
                        }
                        _ => {}
                    }
                    let reply = envelope::encode(&DeviceMessage::Reply(Reply { id: c.id, outcome: Outcome::Ok }));
                    s.client.publish(topic::topic(&id, Kind::Reply), QoS::AtLeastOnce, false, reply).await.unwrap();
                }
            }
        }
    });
    Agent {
        seen,
        cut,
        offline,
        online,
    }
}

async fn until<F: AsyncFnMut() -> bool>(what: &str, secs: u64, mut f: F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within {secs} s");
}

async fn next_seen(seen: &mut mpsc::UnboundedReceiver<Seen>, secs: u64) -> Seen {
    tokio::time::timeout(Duration::from_secs(secs), seen.recv())
        .await
        .expect("the device heard from the relay")
        .unwrap()
}

fn tweak(c: &mut strata_relay::config::Config, first_port: u16) {
    c.broker_listen = "127.0.0.1:0".parse().unwrap();
    c.rist_port_first = first_port;
    c.rist_port_last = first_port + 99;
    c.stream_no_input_s = 3;
    c.stream_offline_grace_s = 1;
}

#[tokio::test]
async fn start_record_stop_input_loss_and_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = pattern();
    for (n, db) in test_databases().await.into_iter().enumerate() {
        let first_port = 42_000 + 200 * n as u16;
        let app = TestApp::with(&db, |c| tweak(c, first_port)).await;
        strata_relay::web::device_plane(&app.state).await.unwrap();
        let org = app.org("Acme").await;
        let owner = app.member(&org, "owner@example.com", Role::Owner).await;
        let b = app.browser(&owner).await;
        let rec = destinations::create(
            &app.state.db,
            &app.state.sbox,
            &org.id,
            &DestinationInput {
                name: "Archive".into(),
                kind: "record".into(),
                target: "1".into(),
                secret: None,
            },
        )
        .await
        .unwrap()
        .id;

        let (creds, key_pem) = device::enroll(&app, &org.id, &b).await;
        let id = creds.device_id.clone();
        let dev = TestDevice {
            id: id.clone(),
            chain_pem: creds.certificate_chain_pem.clone(),
            key_pem,
        };
        let port = app.state.broker_port();
        let mut s = device::connect(device::options(&dev, &id, &creds.ca_pem, port));
        s.connected().await.unwrap();
        s.client
            .subscribe(topic::topic(&id, Kind::Command), QoS::AtLeastOnce)
            .await
            .unwrap();
        let inv = Inventory {
            links: vec![
                Link {
                    name: "wwan0".into(),
                    kind: LinkKind::Cellular,
                    up: true,
                    modem: None,
                },
                Link {
                    name: "wwan1".into(),
                    kind: LinkKind::Cellular,
                    up: true,
                    modem: None,
                },
            ],
            ..Default::default()
        };
        s.client
            .publish(
                topic::topic(&id, Kind::Inventory),
                QoS::AtLeastOnce,
                true,
                envelope::encode(&DeviceMessage::Inventory(inv)),
            )
            .await
            .unwrap();
        s.client
            .publish(
                topic::topic(&id, Kind::Status),
                QoS::AtLeastOnce,
                true,
                device::status(true),
            )
            .await
            .unwrap();
        let state = app.state.clone();
        let did = id.clone();
        until("device online", 5, async || state.devices.is_online(&did)).await;
        tokio::time::sleep(Duration::from_millis(300)).await; // inventory stored
        let Agent {
            mut seen,
            cut,
            offline,
            online,
        } = agent(s, id.clone());

        // Start from the sender page.
        let page = format!("/o/{}/senders/{}", org.id, id);
        let started = std::time::Instant::now();
        let (status, headers, body) = app
            .send(b.post(&format!("{page}/start"), &format!("dest={rec}")))
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "[{}] {body}", app.label);
        assert!(
            headers[header::LOCATION]
                .to_str()
                .unwrap()
                .ends_with("started=1")
        );
        println!(
            "[{}] start -> device told after {:?}",
            app.label,
            started.elapsed()
        );
        let Seen::Started(stream_id, ports) = next_seen(&mut seen, 5).await else {
            panic!("start expected")
        };
        assert_eq!(ports.len(), 2, "one port per link that is up");
        assert!(ports.iter().all(|p| p % 2 == 0));
        assert_eq!(app.state.streams.ports_in_use(), 4);
        let (_, _, html) = app.send(b.get(&page)).await;
        assert!(
            html.contains(&stream_id) && html.contains("Stop stream"),
            "the page shows the live stream"
        );

        let db_ = app.state.db.clone();
        let (oid, sid) = (org.id.clone(), stream_id.clone());
        until("output live with bytes", 20, async || {
            streams::outputs(&db_, &oid, 10)
                .await
                .unwrap()
                .iter()
                .any(|o| o.stream_id == sid && o.state == "live" && o.bytes > 100_000)
        })
        .await;
        println!(
            "[{}] recording live after {:?}",
            app.label,
            started.elapsed()
        );

        // Stop from the page: the device is told, the recording is finalized.
        let (status, _, body) = app
            .send(b.post(&format!("/o/{}/streams/{stream_id}/stop", org.id), ""))
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        match next_seen(&mut seen, 5).await {
            Seen::Stopped(s) => assert_eq!(s, stream_id),
            other => panic!("{other:?}"),
        }
        let st = &streams::list(&app.state.db, &org.id, 10).await.unwrap()[0];
        assert_eq!(
            (st.state.as_str(), st.end_reason.as_deref()),
            ("ended", Some("stopped by owner@example.com"))
        );
        assert_eq!(app.state.streams.ports_in_use(), 0, "ports returned");
        let dir = app.state.data_dir.join("recordings").join(&rec);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!files.is_empty(), "a recording in {}", dir.display());
        let probe = std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name:format=duration",
                "-of",
                "csv=p=0",
            ])
            .arg(&files[0])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&probe.stdout);
        assert!(out.contains("h264") && out.contains("aac"), "{out}");
        println!("[{}] recording: {}", app.label, out.replace('\n', " "));

        // Input lost: the relay stops the stream after stream_no_input_s and tells the device.
        let (status, _, body) = app
            .send(b.post(&format!("{page}/start"), &format!("dest={rec}")))
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        let Seen::Started(second, _) = next_seen(&mut seen, 5).await else {
            panic!()
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        cut.send(()).unwrap();
        match next_seen(&mut seen, 15).await {
            Seen::Stopped(s) => assert_eq!(s, second),
            other => panic!("{other:?}"),
        }
        let (db_, oid, sid) = (app.state.db.clone(), org.id.clone(), second.clone());
        until("stream closed for lost input", 5, async || {
            let st = streams::list(&db_, &oid, 10).await.unwrap();
            st.iter()
                .find(|s| s.id == sid)
                .unwrap()
                .end_reason
                .as_deref()
                == Some("no input for 3 s")
        })
        .await;

        // Started from the API; kill -9 of the worker is noticed within 5 s,
        // reported, the ports reclaimed and the device told.
        let token = app.token(&org, &owner, Role::Operator).await;
        let (status, _, body) = app
            .send(support::api(
                "POST",
                &format!("/api/v1/o/{}/senders/{id}/streams", org.id),
                &token,
                Some(&format!(r#"{{"destinations":["{rec}"]}}"#)),
            ))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let Seen::Started(fourth, _) = next_seen(&mut seen, 5).await else {
            panic!()
        };
        assert!(body.contains(&fourth));
        let (pid,): (i64,) = sqlx::query_as("SELECT worker_pid FROM streams WHERE id = $1")
            .bind(&fourth)
            .fetch_one(&app.state.db)
            .await
            .unwrap();
        let killed = std::time::Instant::now();
        assert!(
            std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
        match next_seen(&mut seen, 5).await {
            Seen::Stopped(s) => assert_eq!(s, fourth),
            other => panic!("{other:?}"),
        }
        println!(
            "[{}] kill -9 of the worker noticed and the device told after {:?}",
            app.label,
            killed.elapsed()
        );
        let st = streams::list(&app.state.db, &org.id, 10).await.unwrap();
        let st = st.iter().find(|s| s.id == fourth).unwrap();
        assert_eq!(
            (st.state.as_str(), st.end_reason.as_deref()),
            ("failed", Some("the receiver exited"))
        );
        assert_eq!(app.state.streams.ports_in_use(), 0);

        // The device goes away (offline, nothing sent): stopped after the grace period.
        let (status, _, _) = app
            .send(b.post(&format!("{page}/start"), &format!("dest={rec}")))
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let Seen::Started(fifth, _) = next_seen(&mut seen, 5).await else {
            panic!()
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        offline.send(()).unwrap();
        let left = std::time::Instant::now();
        let (db_, oid, sid) = (app.state.db.clone(), org.id.clone(), fifth.clone());
        until("stream closed after the device left", 15, async || {
            let st = streams::list(&db_, &oid, 10).await.unwrap();
            st.iter()
                .find(|s| s.id == sid)
                .unwrap()
                .end_reason
                .is_some()
        })
        .await;
        let st = streams::list(&app.state.db, &org.id, 10).await.unwrap();
        let st = st.iter().find(|s| s.id == fifth).unwrap();
        assert_eq!(st.end_reason.as_deref(), Some("the device disconnected"));
        println!(
            "[{}] device left: stream closed after {:?} (grace 1 s)",
            app.label,
            left.elapsed()
        );
        assert_eq!(app.state.streams.ports_in_use(), 0);
        online.send(()).unwrap();
        let (state, did) = (app.state.clone(), id.clone());
        until("device back", 5, async || state.devices.is_online(&did)).await;

        // A relay restart: the running worker is re-adopted, a dead one's record closed.
        let (status, _, _) = app
            .send(b.post(&format!("{page}/start"), &format!("dest={rec}")))
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let Seen::Started(third, _) = next_seen(&mut seen, 5).await else {
            panic!()
        };
        sqlx::query("INSERT INTO streams (id, org_id, sender_id, state, started_at, ports, worker_pid, worker_dir) VALUES ('gone', $1, $2, 'live', 0, '42990', 999999, '/nonexistent')")
            .bind(&org.id)
            .bind(&id)
            .execute(&app.state.db)
            .await
            .unwrap();
        app.state.streams.detach_all();
        let app2 = TestApp::with(&db, |c| tweak(c, first_port)).await;
        strata_relay::web::device_plane(&app2.state).await.unwrap();
        assert!(app2.state.streams.is_live(&third), "re-adopted");
        assert_eq!(app2.state.streams.ports_in_use(), 4, "its ports claimed");
        let all = streams::list(&app2.state.db, &org.id, 10).await.unwrap();
        let gone = all.iter().find(|s| s.id == "gone").unwrap();
        assert_eq!(gone.state, "failed");
        let pid: (i64,) = sqlx::query_as("SELECT worker_pid FROM streams WHERE id = $1")
            .bind(&third)
            .fetch_one(&app2.state.db)
            .await
            .unwrap();
        let token = app2.token(&org, &owner, Role::Operator).await;
        let status = app2
            .status(support::api(
                "POST",
                &format!("/api/v1/o/{}/streams/{third}/stop", org.id),
                &token,
                None,
            ))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(
            !std::path::Path::new(&format!("/proc/{}", pid.0)).exists() || {
                tokio::time::sleep(Duration::from_secs(1)).await;
                !std::path::Path::new(&format!("/proc/{}", pid.0)).exists()
            },
            "the adopted worker stopped"
        );
        assert_eq!(app2.state.streams.ports_in_use(), 0);

        // Revoking a streaming device ends its stream too (back on the first
        // relay, whose broker the device is still connected to).
        let (status, _, body) = app
            .send(b.post(&format!("{page}/start"), &format!("dest={rec}")))
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        let Seen::Started(sixth, _) = next_seen(&mut seen, 5).await else {
            panic!()
        };
        let (status, _, _) = app
            .send(b.post(&format!("{page}/revoke"), "confirm=yes"))
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert!(!app.state.streams.is_live(&sixth));
        let st = streams::list(&app.state.db, &org.id, 10).await.unwrap();
        let st = st.iter().find(|s| s.id == sixth).unwrap();
        assert_eq!(st.end_reason.as_deref(), Some("the device was revoked"));
    }
}
