//! Simulated devices for `scripts/bench-device-plane`.
//!
//! `bench_swarm seed DATA_DIR DATABASE_URL N FILE`: enrolls N devices the
//! short way (sender rows and certificates from the relay's device CA, as
//! the claim page would), writes their keys and certificates to FILE (JSON
//! lines) and prints `ORG SESSION` for the dashboard load.
//!
//! `bench_swarm run FILE HOST PORT SECS`: connects every device over mutual
//! TLS (rumqttc + rustls, the agent's stack; at most 200 handshakes at once),
//! publishes retained status and inventory, then telemetry at 1 Hz per
//! device for SECS (then exits; the relay sees the wills). Prints `connected N`, `connect_p50_ms X`,
//! `connect_p99_ms X`, `sent_per_s X`, `errors N` on separate lines.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use strata_proto::envelope;
use strata_proto::message::{
    DeviceMessage, Inventory, Link, LinkKind, LinkState, LinkTelemetry, Status, Telemetry,
};
use strata_proto::topic::{self, Kind};
use strata_relay::store::accounts::{self, Role};
use strata_relay::store::{devices, senders, sessions};
use tokio::sync::Semaphore;

#[derive(Serialize, Deserialize)]
struct Device {
    id: String,
    cert_pem: String,
    key_pem: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["seed", data, url, n, file] => seed(data, url, n.parse()?, file).await,
        ["run", file, host, port, secs] => run(file, host, port.parse()?, secs.parse()?).await,
        _ => anyhow::bail!(
            "usage: bench_swarm seed DATA_DIR DATABASE_URL N FILE | run FILE HOST PORT SECS"
        ),
    }
}

async fn seed(data: &str, url: &str, n: usize, file: &str) -> anyhow::Result<()> {
    let data = std::path::Path::new(data);
    strata_relay::datadir::DataDir::open_or_create(data, "localhost")?;
    let ca = strata_relay::ca::DeviceCa::open_or_create(&data.join("ca"))?;
    let db = strata_relay::db::connect(url).await?;
    let org = accounts::create_org(&db, "Swarm").await?;
    let user = accounts::create_user(&db, "swarm@example.com", "!").await?;
    accounts::add_member(&db, &org.id, &user.id, Role::Owner).await?;
    let inventory = senders::Inventory::default();
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    for i in 0..n {
        let id = senders::create(&db, &org.id, &format!("swarm-{i:05}"), &inventory).await?;
        let key = rcgen::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)?
            .pem()?;
        let issued = ca.sign_device(&csr, &id, 30)?;
        devices::record_certificate(&db, &id, &issued.serial, issued.not_after_ms).await?;
        let d = Device {
            id,
            cert_pem: issued.cert_pem,
            key_pem: key.serialize_pem(),
        };
        serde_json::to_writer(&mut out, &d)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    let session = sessions::create(&db, &user.id, 24).await?;
    println!("{} {session}", org.id);
    Ok(())
}

fn options(d: &Device, ca: &rustls::RootCertStore, host: &str, port: u16) -> MqttOptions {
    let chain = CertificateDer::pem_slice_iter(d.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("certificate");
    let key = PrivateKeyDer::from_pem_slice(d.key_pem.as_bytes()).expect("key");
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(ca.clone())
    .with_client_auth_cert(chain, key)
    .expect("client certificate");
    let mut o = MqttOptions::new(&d.id, host, port);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    o.set_keep_alive(Duration::from_secs(30));
    o.set_last_will(rumqttc::LastWill::new(
        topic::topic(&d.id, Kind::Status),
        envelope::encode(&status(false)),
        QoS::AtLeastOnce,
        true,
    ));
    o
}

fn status(online: bool) -> DeviceMessage {
    DeviceMessage::Status(Status {
        online,
        agent_version: "swarm".into(),
        boot_id: "swarm".into(),
        streaming: None,
    })
}

fn links() -> Vec<&'static str> {
    vec!["wwan0", "wwan1", "eth0"]
}

fn inventory() -> DeviceMessage {
    DeviceMessage::Inventory(Inventory {
        links: links()
            .into_iter()
            .map(|n| Link {
                name: n.into(),
                kind: if n.starts_with("wwan") {
                    LinkKind::Cellular
                } else {
                    LinkKind::Ethernet
                },
                up: true,
                modem: None,
            })
            .collect(),
        modems: vec![],
        inputs: vec![],
    })
}

fn telemetry(tick: u64) -> DeviceMessage {
    DeviceMessage::Telemetry(Telemetry {
        ts_ms: strata_relay::now_ms() as u64,
        links: links()
            .into_iter()
            .enumerate()
            .map(|(i, n)| LinkTelemetry {
                name: n.into(),
                state: LinkState::Up,
                rtt_ms: 40 + (tick as u32 * 7 + i as u32 * 13) % 60,
                loss_permille: (tick as u16 + i as u16) % 5,
                retransmit_permille: (tick as u16 + i as u16) % 7,
                kbps: 1500 + (tick as u32 * 37 + i as u32 * 101) % 1000,
                share_permille: 333,
                signal_percent: Some(60),
            })
            .collect(),
        usable_kbps: 5000,
        encoder_kbps: 4000,
        fps: 30.0,
        cpu_temp_c: Some(55.0),
    })
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    errors: AtomicU64,
    connected: AtomicU64,
}

async fn run(file: &str, host: &str, port: u16, secs: u64) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = std::path::Path::new(file);
    let ca_pem = std::fs::read_to_string(
        std::env::var("BENCH_CA").context("BENCH_CA names the device CA file")?,
    )?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let devices: Vec<Device> = std::io::BufReader::new(std::fs::File::open(data)?)
        .lines()
        .map(|l| Ok(serde_json::from_str(&l?)?))
        .collect::<anyhow::Result<_>>()?;
    let n = devices.len();
    let counters = Arc::new(Counters::default());
    let handshakes = Arc::new(Semaphore::new(200));
    let (times_tx, mut times_rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let start = Instant::now();
    for (i, d) in devices.into_iter().enumerate() {
        let o = options(&d, &roots, host, port);
        let (counters, handshakes, times_tx) =
            (counters.clone(), handshakes.clone(), times_tx.clone());
        tokio::spawn(async move {
            let permit = handshakes.acquire_owned().await.expect("semaphore");
            let (client, mut el) = AsyncClient::new(o, 16);
            let t0 = Instant::now();
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("{}: connect failed: {e}", d.id);
                        return;
                    }
                }
            }
            counters.connected.fetch_add(1, Ordering::Relaxed);
            let _ = times_tx.send(t0.elapsed());
            drop(permit);
            let publish = |kind, msg: DeviceMessage, qos, retain| {
                client.try_publish(
                    topic::topic(&d.id, kind),
                    qos,
                    retain,
                    envelope::encode(&msg),
                )
            };
            let _ = publish(Kind::Status, status(true), QoS::AtLeastOnce, true);
            let _ = publish(Kind::Inventory, inventory(), QoS::AtLeastOnce, true);
            // Spread the devices over the second so the load is even.
            let offset = Duration::from_millis((i as u64 * 997) % 1000);
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + offset,
                Duration::from_secs(1),
            );
            let mut k = 0u64;
            loop {
                tokio::select! {
                    ev = el.poll() => if let Err(e) = ev {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("{}: {e}", d.id);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    },
                    _ = tick.tick() => {
                        k += 1;
                        if publish(Kind::Telemetry, telemetry(k), QoS::AtMostOnce, false).is_ok() {
                            counters.sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }
    drop(times_tx);
    let mut times = Vec::with_capacity(n);
    while times.len() < n {
        match tokio::time::timeout(Duration::from_secs(60), times_rx.recv()).await {
            Ok(Some(t)) => times.push(t),
            _ => break,
        }
        if counters.errors.load(Ordering::Relaxed) as usize + times.len() >= n {
            while let Ok(t) = times_rx.try_recv() {
                times.push(t);
            }
            break;
        }
    }
    times.sort();
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map(|t| t.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };
    println!("connected {}", counters.connected.load(Ordering::Relaxed));
    println!("connect_all_s {:.1}", start.elapsed().as_secs_f64());
    println!("connect_p50_ms {:.1}", pct(0.50));
    println!("connect_p99_ms {:.1}", pct(0.99));
    // The steady window: every device connected and publishing.
    std::io::stdout().flush()?;
    let sent0 = counters.sent.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let rate = (counters.sent.load(Ordering::Relaxed) - sent0) as f64 / t0.elapsed().as_secs_f64();
    println!("sent_per_s {rate:.0}");
    println!("errors {}", counters.errors.load(Ordering::Relaxed));
    std::io::stdout().flush()?;
    std::process::exit(0);
}
