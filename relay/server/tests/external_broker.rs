//! The device plane on an external broker: Debian's mosquitto, configured
//! by `strata-relay mosquitto-config`, with devices over real mutual TLS
//! (rumqttc, as the agent). A device enrolled over HTTP talks to the relay
//! through mosquitto on its own topics only; a client without a certificate
//! is refused; revocation cuts the device off within 1 s, leaves it no
//! rights when it reconnects, and once mosquitto reloads the relay's CRL
//! (SIGHUP) refuses it at the handshake.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{Packet, QoS, SubscribeReasonCode};
use strata_proto::topic::{self, Kind};
use strata_relay::config::BrokerMode;
use strata_relay::store::accounts::Role;
use strata_relay::store::senders;
use support::device::{self, TestDevice};
use support::{TestApp, TestDb, test_databases};

struct Mosquitto {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mosquitto {
    fn reload(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "SIGHUP to mosquitto");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes mosquitto's files with the relay's own command and starts it.
fn start_mosquitto(db: &TestDb, port: u16) -> Mosquitto {
    let dir = db.dir.path().join("mosquitto");
    let out = Command::new(env!("CARGO_BIN_EXE_strata-relay"))
        .args(["mosquitto-config", "--out"])
        .arg(&dir)
        .env("STRATA_RELAY_DATA_DIR", db.dir.path().join("data"))
        .env("STRATA_RELAY_DATABASE_URL", &db.url)
        .env("STRATA_RELAY_BROKER", "external")
        .env("STRATA_RELAY_EXTERNAL_BROKER", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mosquitto-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf = dir.join("mosquitto.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("require_certificate true") && text.contains("crlfile"));
    // As root, mosquitto would switch to its own user, which cannot read the
    // 0600 key the test's user wrote.
    if nix_is_root() {
        text.push_str("user root\n");
    }
    text.push_str(&format!(
        "log_dest file {}\nlog_type all\n",
        dir.join("mosquitto.log").display()
    ));
    std::fs::write(&conf, text).unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto is installed (scripts/setup)");
    let m = Mosquitto { child, dir };
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "mosquitto did not listen: {}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    m
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 10 s");
}

/// Waits for the SUBACK and tells whether the subscription was granted.
async fn subscribed(s: &mut device::Session, filter: String) -> bool {
    s.client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        match s.next().await.unwrap() {
            Packet::SubAck(a) => {
                return !matches!(a.return_codes[0], SubscribeReasonCode::Failure);
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn devices_through_mosquitto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    for db in test_databases().await {
        let port = free_port();
        let app = TestApp::with(&db, |c| {
            c.broker = BrokerMode::External;
            c.external_broker = format!("127.0.0.1:{port}");
        })
        .await;
        let mq = start_mosquitto(&db, port);
        strata_relay::web::device_plane(&app.state).await.unwrap();
        let org = app.org("Acme").await;
        let owner = app.member(&org, "owner@example.com", Role::Owner).await;
        let b = app.browser(&owner).await;

        let mut devs = Vec::new();
        for _ in 0..2 {
            let (creds, key_pem) = device::enroll(&app, &org.id, &b).await;
            assert_eq!(creds.broker.port, port, "devices are sent to mosquitto");
            assert_eq!(creds.broker.host, "127.0.0.1");
            devs.push((
                TestDevice {
                    id: creds.device_id.clone(),
                    chain_pem: creds.certificate_chain_pem.clone(),
                    key_pem,
                },
                creds.ca_pem,
            ));
        }
        let (a, ca) = &devs[0];
        let (other, _) = &devs[1];
        let options = || device::options(a, &a.id, ca, port);

        let mut s = device::connect(options());
        s.connected().await.unwrap();
        // The relay admitted the device (and waited for the plugin) before
        // handing out its certificate: the first subscription is granted,
        // another device's topic is not.
        let mine = topic::topic(&a.id, Kind::Command);
        let granted = subscribed(&mut s, mine.clone()).await;
        assert!(granted, "[{}] own command topic: {}", app.label, mq.log());
        assert!(
            !subscribed(&mut s, topic::topic(&other.id, Kind::Command)).await,
            "another device's command topic is refused"
        );
        assert!(
            !subscribed(&mut s, format!("{}/#", topic::ROOT)).await,
            "the whole tree is refused"
        );

        // Presence reaches the relay; a status published as the other device does not.
        s.client
            .publish(
                topic::topic(&a.id, Kind::Status),
                QoS::AtLeastOnce,
                true,
                device::status(true),
            )
            .await
            .unwrap();
        s.client
            .publish(
                topic::topic(&other.id, Kind::Status),
                QoS::AtLeastOnce,
                true,
                device::status(true),
            )
            .await
            .unwrap();
        let (db_, org_id, id) = (app.state.db.clone(), org.id.clone(), a.id.clone());
        eventually("device online through mosquitto", async || {
            let row = senders::get(&db_, &org_id, &id).await.unwrap().unwrap();
            row.online == 1
        })
        .await;
        // Coming online, the device gets its stored settings from the relay.
        let got_command = async {
            loop {
                if let Packet::Publish(p) = s.next().await.unwrap() {
                    return p.topic;
                }
            }
        };
        let t = tokio::time::timeout(Duration::from_secs(5), got_command)
            .await
            .expect("the relay's command reaches the device through mosquitto");
        assert_eq!(t, mine);
        let other_row = senders::get(&app.state.db, &org.id, &other.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(other_row.online, 0, "a device cannot speak for another");

        // No certificate: refused at the handshake.
        let out = Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "#",
                "-C",
                "1",
            ])
            .arg("--cafile")
            .arg(mq.dir.join("ca.pem"))
            .args(["-W", "3"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "no certificate, no connection");

        // Revocation: cut off within 1 s.
        let revoked_at = Instant::now();
        assert!(
            strata_relay::registry::revoke(&app.state, &org.id, &a.id)
                .await
                .unwrap()
        );
        let (why, _) = s
            .ended(Duration::from_secs(1))
            .await
            .expect("a revoked device is cut off within 1 s");
        eprintln!(
            "[{}] revoked device cut off after {:?}: {why}",
            app.label,
            revoked_at.elapsed()
        );
        // Before mosquitto reloads the CRL it may connect, but has no rights.
        let mut again = device::connect(options());
        if again.connected().await.is_ok() {
            assert!(
                !subscribed(&mut again, mine.clone()).await,
                "a revoked device has no rights"
            );
        }
        // After the reload it is refused at the handshake.
        mq.reload();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut after = device::connect(options());
        let refused = after.connected().await;
        assert!(
            refused.is_err(),
            "revoked device refused after the CRL reload"
        );
        eprintln!(
            "[{}] revoked device after reload: {}",
            app.label,
            refused.unwrap_err()
        );

        // The other device is unaffected.
        let (o, oca) = &devs[1];
        let mut so = device::connect(device::options(o, &o.id, oca, port));
        so.connected().await.unwrap();
        assert!(subscribed(&mut so, topic::topic(&o.id, Kind::Command)).await);
        assert_eq!(
            app.state
                .devices
                .broker()
                .map(|b| match b {
                    strata_relay::broker::DeviceBroker::External(m) => m.failed_commands(),
                    _ => u64::MAX,
                })
                .unwrap(),
            0,
            "every dynamic-security command succeeded: {}",
            mq.log()
        );
    }
}
