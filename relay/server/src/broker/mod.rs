//! The embedded MQTT broker devices connect to.
//!
//! rumqttd's TLS listener cannot revoke, cannot tie a session to its
//! certificate and has no topic ACL (see `docs/design/mqtt-broker-research.md`),
//! so only rumqttd's routing core is used: this module accepts TCP, runs the
//! TLS handshake with [`verifier::DeviceVerifier`] (device CA + revoked set),
//! and gives each device a [`session`] that enforces its topics and talks to
//! the router over a local link. The relay's control plane gets its own
//! privileged local link ([`Broker::control_link`]).
//!
//! Hand-written here, and why: the session loop (about what rumqttd's remote
//! link does, plus the checks it lacks) and the will publication (rumqttd's
//! will event cannot be raised from outside the crate).

pub mod mosquitto;
pub mod session;
pub mod verifier;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::LastWill;
use rumqttd::{Notification, Router, RouterConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

pub use verifier::Revoked;

/// The router's client id for the relay's own link; not a valid device id,
/// so no device can take it over.
pub const CONTROL_CLIENT_ID: &str = "_strata-relay";
/// A TLS handshake must finish this soon (a silent client must not hold a slot).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds router links; errors as text (rumqttd's error type is 800 bytes).
type LinkFactory =
    Arc<dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync>;

/// The broker devices connect to.
#[derive(Clone)]
pub enum DeviceBroker {
    /// Ours, in-process.
    Embedded(Arc<Broker>),
    /// An external mosquitto the relay administers.
    External(Arc<mosquitto::Mosquitto>),
}

/// A live session's handle: cancelled to cut the device off.
#[derive(Clone)]
pub struct Registration {
    cancel: CancellationToken,
    taken_over: Arc<AtomicBool>,
}

impl Registration {
    fn taken_over(&self) -> bool {
        self.taken_over.load(Ordering::SeqCst)
    }
}

/// The running broker.
pub struct Broker {
    links: LinkFactory,
    sessions: Mutex<HashMap<String, Registration>>,
    revoked: Revoked,
    wills: tokio::sync::Mutex<LinkTx>,
    local_addr: SocketAddr,
    refused: std::sync::atomic::AtomicU64,
}

/// What the broker needs to start.
pub struct BrokerSetup<'a> {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The device CA (PEM): client certificates must chain to it.
    pub ca_pem: &'a str,
    /// The broker's certificate chain (PEM).
    pub cert_pem: &'a str,
    /// Its private key (PEM).
    pub key_pem: &'a str,
    /// Devices refused from the start.
    pub revoked: HashSet<String>,
}

fn router_config() -> RouterConfig {
    // rumqttd's zero defaults reject every connection or panic the router.
    RouterConfig {
        max_connections: 20_000,
        max_outgoing_packet_count: 200,
        max_segment_size: 1 << 20,
        max_segment_count: 10,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    }
}

impl Broker {
    /// Binds the listener, starts the router and accepts devices in the background.
    pub async fn start(setup: BrokerSetup<'_>) -> anyhow::Result<Arc<Broker>> {
        let revoked: Revoked = Arc::new(RwLock::new(setup.revoked));
        let verifier = verifier::DeviceVerifier::new(setup.ca_pem, revoked.clone())?;
        let chain = CertificateDer::pem_slice_iter(setup.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("broker certificate")?;
        let key = PrivateKeyDer::from_pem_slice(setup.key_pem.as_bytes()).context("broker key")?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)?;
        // No session resumption: a resumed TLS 1.3 session skips the client
        // certificate check, so a revoked device could come back on an old ticket.
        tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        tls.send_tls13_tickets = 0;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let router_tx = Router::new(0, router_config()).spawn();
        let links: LinkFactory = Arc::new(move |client_id, clean| {
            LinkBuilder::new(client_id, router_tx.clone())
                .clean_session(clean)
                .build()
                .map_err(|e: LinkError| e.to_string())
        });
        let (wills_tx, wills_rx, _) = blocking_link(&links, "_strata-wills", true).await?;
        tokio::spawn(drain(wills_rx));

        let listener = tokio::net::TcpListener::bind(setup.listen)
            .await
            .with_context(|| format!("binding the MQTT listener on {}", setup.listen))?;
        let broker = Arc::new(Broker {
            links,
            sessions: Mutex::new(HashMap::new()),
            revoked,
            wills: tokio::sync::Mutex::new(wills_tx),
            local_addr: listener.local_addr()?,
            refused: Default::default(),
        });
        tracing::info!(addr = %broker.local_addr, "MQTT broker (mutual TLS) listening");
        tokio::spawn(accept_loop(broker.clone(), listener, acceptor));
        Ok(broker)
    }

    /// Where the listener is bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A link for the relay's control plane: may publish and subscribe anywhere.
    pub async fn control_link(&self) -> anyhow::Result<(LinkTx, LinkRx)> {
        let (tx, rx, _) = blocking_link(&self.links, CONTROL_CLIENT_ID, true).await?;
        Ok((tx, rx))
    }

    /// Refuses a device from now on and cuts off its live session.
    pub fn revoke(&self, device_id: &str) {
        self.revoked
            .write()
            .expect("revoked set")
            .insert(device_id.to_string());
        if let Some(reg) = self.sessions.lock().expect("sessions").remove(device_id) {
            reg.cancel.cancel();
            tracing::info!(device = %device_id, "revoked device cut off");
        }
    }

    /// Packets that ended a session: malformed, oversized, or outside the
    /// device's topics.
    pub fn refused_packets(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a device has a live session.
    pub fn is_connected(&self, device_id: &str) -> bool {
        self.sessions
            .lock()
            .expect("sessions")
            .contains_key(device_id)
    }

    /// Records a new session for a device, ending an older one (takeover).
    fn register(&self, device_id: &str) -> Registration {
        let reg = Registration {
            cancel: CancellationToken::new(),
            taken_over: Arc::new(AtomicBool::new(false)),
        };
        let old = self
            .sessions
            .lock()
            .expect("sessions")
            .insert(device_id.to_string(), reg.clone());
        if let Some(old) = old {
            old.taken_over.store(true, Ordering::SeqCst);
            old.cancel.cancel();
        }
        reg
    }

    /// Forgets a session, unless a newer one already replaced it.
    fn unregister(&self, device_id: &str, reg: &Registration) {
        let mut sessions = self.sessions.lock().expect("sessions");
        if sessions
            .get(device_id)
            .is_some_and(|r| Arc::ptr_eq(&r.taken_over, &reg.taken_over))
        {
            sessions.remove(device_id);
        }
    }

    async fn link(
        &self,
        device_id: &str,
        clean: bool,
    ) -> anyhow::Result<(LinkTx, LinkRx, Notification)> {
        blocking_link(&self.links, device_id, clean).await
    }

    async fn publish_will(&self, will: LastWill) {
        let mut tx = self.wills.lock().await;
        if let Err(e) = tx.send(session::will_publish(will)).await {
            tracing::error!(error = %e, "publishing a last will failed");
        }
    }
}

/// Builds a router link; the builder blocks until the router answers.
async fn blocking_link(
    links: &LinkFactory,
    client_id: &str,
    clean: bool,
) -> anyhow::Result<(LinkTx, LinkRx, Notification)> {
    let links = links.clone();
    let id = client_id.to_string();
    tokio::task::spawn_blocking(move || links(&id, clean))
        .await?
        .map_err(|e| anyhow::anyhow!("router link for {client_id}: {e}"))
}

/// Keeps a publish-only link scheduled (the router pauses links that do not
/// answer its Unschedule).
async fn drain(mut rx: LinkRx) {
    while let Ok(n) = rx.next().await {
        if matches!(n, Some(Notification::Unschedule)) && rx.wake().await.is_err() {
            break;
        }
    }
}

async fn accept_loop(
    broker: Arc<Broker>,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "MQTT accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let broker = broker.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "MQTT TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "MQTT TLS handshake timed out");
                    return;
                }
            };
            let device = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(verifier::device_id);
            match device {
                // The verifier refused revoked devices already; this also
                // covers a revocation between handshake and here.
                Some(id) if broker.revoked.read().expect("revoked set").contains(&id) => {
                    tracing::warn!(%peer, device = %id, "revoked device refused");
                }
                Some(id) => session::run(broker, tls, id).await,
                None => tracing::warn!(%peer, "verified certificate without a device id"),
            }
        });
    }
}
