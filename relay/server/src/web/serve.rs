//! Start-up of `strata-relay serve`: data directory, database, state, and
//! the HTTPS listener with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum_server::tls_rustls::RustlsConfig;

use super::{AppState, Relay, metrics::Metrics, router};
use crate::auth::{AuthCache, Csrf, LoginLimiter};
use crate::broker::mosquitto::{self, Mosquitto, MosquittoSetup};
use crate::broker::{Broker, BrokerSetup, DeviceBroker};
use crate::config::{BrokerMode, Config};
use crate::control::ControlPlane;
use crate::datadir::DataDir;
use crate::registry;
use crate::secrets::SecretBox;
use crate::{db, store};

/// Builds the shared state: opens (or creates) the data directory and the database.
pub async fn state(config: Config) -> anyhow::Result<(AppState, DataDir)> {
    let dir = DataDir::open_or_create(&config.data_dir, &config.public_host())?;
    let pool = db::connect(&config.database_url()).await?;
    let state = Arc::new(Relay {
        db: pool,
        sbox: SecretBox::new(&dir.secrets_key),
        csrf: Csrf::new(dir.session_key),
        limiter: LoginLimiter::new(config.login_attempts_per_minute),
        auth: AuthCache::default(),
        sender_pages: moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(super::LIST_TTL)
            .build(),
        sender_rows: super::fresh::Revalidating::new(super::LIST_TTL, super::LIVE_MAX_AGE, 10_000),
        api_sender_pages: moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(super::LIST_TTL)
            .build(),
        charts: super::fresh::Revalidating::new(super::CHART_TTL, super::LIVE_MAX_AGE, 10_000),
        metrics: Metrics::default(),
        data_dir: dir.path.clone(),
        ca: crate::ca::DeviceCa::open_or_create(&dir.path.join("ca"))?,
        devices: Default::default(),
        streams: crate::streaming::Streams::new(crate::streaming::ports::PortPool::new(
            config.rist_port_first,
            config.rist_port_last,
            config.rist_bind,
        )),
        enroll_limiter: governor::RateLimiter::keyed(governor::Quota::per_minute(nonzero(20))),
        claim_limiter: governor::RateLimiter::keyed(governor::Quota::per_minute(nonzero(10))),
        releases: Default::default(),
        config,
    });
    Ok((state, dir))
}

/// Starts the device plane: the embedded broker (revoked devices refused
/// from the start) or the connection to the external one, the relay's
/// control plane on it, and the registry that handles what devices send.
pub async fn device_plane(state: &AppState) -> anyhow::Result<()> {
    // Presence is rebuilt from what devices say once they reconnect.
    store::devices::all_offline(&state.db).await?;
    let (broker, control, inbound) = match state.config.broker {
        BrokerMode::Embedded => {
            let broker = embedded_broker(state).await?;
            let (control, inbound) = ControlPlane::embedded(&broker).await?;
            (DeviceBroker::Embedded(broker), control, inbound)
        }
        BrokerMode::External => {
            let (host, port) = state.config.external_broker_addr()?;
            let (tx, inbound) = ControlPlane::inbound_queue();
            let m = Mosquitto::connect(
                MosquittoSetup {
                    host,
                    port,
                    ca: &state.ca,
                    db: state.db.clone(),
                    crl_path: mosquitto::crl_path(&state.config),
                },
                tx,
            )
            .await?;
            let control = ControlPlane::External(m.client());
            (DeviceBroker::External(m), control, inbound)
        }
    };
    state.devices.attach(Some(broker), control);
    tokio::spawn(registry::run(state.clone(), inbound));
    crate::streaming::adopt(state).await?;
    Ok(())
}

/// The names the broker's server certificate carries.
pub fn broker_names(config: &Config) -> Vec<String> {
    let mut names = vec![config.broker_host(), "localhost".into(), "127.0.0.1".into()];
    names.dedup();
    names
}

async fn embedded_broker(state: &AppState) -> anyhow::Result<Arc<Broker>> {
    let revoked = store::devices::revoked(&state.db).await?;
    let (cert, key) = state.ca.sign_server(&broker_names(&state.config), 397)?;
    Broker::start(BrokerSetup {
        listen: state.config.broker_listen,
        ca_pem: state.ca.ca_pem(),
        cert_pem: &cert.cert_pem,
        key_pem: &key,
        revoked: revoked.into_iter().collect(),
    })
    .await
}

/// Hourly: drop expired sessions and enrollments, and forget rate-limit
/// state of quiet keys (each would otherwise stay forever).
async fn housekeep(state: &AppState) {
    if let Err(e) = store::sessions::purge_expired(&state.db).await {
        tracing::warn!(error = %e, "purging expired sessions failed");
    }
    if let Err(e) = store::enrollments::purge_expired(&state.db).await {
        tracing::warn!(error = %e, "purging expired enrollments failed");
    }
    state.limiter.retain_recent();
    state.enroll_limiter.retain_recent();
    state.claim_limiter.retain_recent();
}

fn nonzero(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).expect("a positive constant")
}

/// Serves HTTPS until SIGTERM or Ctrl-C, then drains requests for up to 10 s.
pub async fn serve(mut config: Config) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Bound first so that links in QR codes carry the real port when the
    // configured one is 0.
    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("binding {}", config.listen))?;
    listener.set_nonblocking(true)?;
    let listen = listener.local_addr()?;
    config.listen = listen;
    let (state, dir) = state(config).await?;
    let (cert, key) = match (&state.config.tls_cert, &state.config.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => (dir.tls_cert.clone(), dir.tls_key.clone()),
    };
    let tls = RustlsConfig::from_pem_file(&cert, &key)
        .await
        .with_context(|| format!("loading TLS certificate {} and key", cert.display()))?;

    device_plane(&state).await?;
    match state.devices.broker() {
        Some(DeviceBroker::Embedded(b)) => {
            println!("strata-relay device broker on mqtts://{}", b.local_addr());
        }
        Some(DeviceBroker::External(_)) => {
            println!(
                "strata-relay device broker (external) on mqtts://{}",
                state.config.external_broker
            );
        }
        None => {}
    }

    let housekeeping = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            housekeep(&housekeeping).await;
        }
    });

    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        shutdown.graceful_shutdown(Some(Duration::from_secs(10)));
    });

    let listening = handle.clone();
    tokio::spawn(async move {
        if let Some(addr) = listening.listening().await {
            // One stable line for scripts and tests (the port may be 0 in config).
            println!("strata-relay listening on https://{addr}");
        }
    });

    let app = router(state);
    tracing::info!(%listen, cert = %cert.display(), "serving HTTPS");
    axum_server::from_tcp_rustls(listener, tls)
        .handle(handle)
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await
        .with_context(|| format!("serving on {listen}"))?;
    Ok(())
}
