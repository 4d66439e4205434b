//! `/metrics` in the Prometheus text format, and the request counter.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{AppError, AppState};

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP method.
    pub method: String,
    /// Status class: 2xx, 3xx, 4xx, 5xx.
    pub status: String,
}

/// Labels of the login counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    /// ok, failed, limited.
    pub result: String,
}

/// The relay's metrics.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by method and status class.
    pub requests: Family<RequestLabels, Counter>,
    /// Login attempts by result.
    pub logins: Family<LoginLabels, Counter>,
    /// Requests refused for a missing or wrong CSRF token.
    pub csrf_rejected: Counter,
    /// Device messages dropped (malformed, unknown device, wrong topic).
    pub device_messages_dropped: Counter,
    /// Device messages handled.
    pub device_messages: Counter,
    senders: Gauge,
    senders_online: Gauge,
    mqtt_refused: Gauge,
    mqtt_admin_failed: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("strata_relay");
        let requests = Family::<RequestLabels, Counter>::default();
        let logins = Family::<LoginLabels, Counter>::default();
        let csrf_rejected = Counter::default();
        let device_messages_dropped = Counter::default();
        let device_messages = Counter::default();
        let senders = Gauge::default();
        let senders_online = Gauge::default();
        let mqtt_refused = Gauge::default();
        let mqtt_admin_failed = Gauge::default();
        registry.register(
            "mqtt_admin_commands_failed",
            "Commands to the external broker's dynamic-security plugin that failed",
            mqtt_admin_failed.clone(),
        );
        registry.register(
            "mqtt_packets_refused",
            "MQTT packets that ended a device session: malformed, oversized or outside its topics",
            mqtt_refused.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by method and status class",
            requests.clone(),
        );
        registry.register("logins", "Login attempts by result", logins.clone());
        registry.register(
            "csrf_rejected",
            "Requests refused for a bad CSRF token",
            csrf_rejected.clone(),
        );
        registry.register(
            "device_messages_dropped",
            "Device messages dropped: malformed, unknown device or wrong topic",
            device_messages_dropped.clone(),
        );
        registry.register(
            "device_messages",
            "Device messages handled",
            device_messages.clone(),
        );
        registry.register("senders", "Senders in the database", senders.clone());
        registry.register(
            "senders_online",
            "Senders whose control channel is up",
            senders_online.clone(),
        );
        Metrics {
            registry,
            requests,
            logins,
            csrf_rejected,
            device_messages_dropped,
            device_messages,
            senders,
            senders_online,
            mqtt_refused,
            mqtt_admin_failed,
        }
    }
}

impl Metrics {
    /// Counts one login attempt.
    pub fn login(&self, result: &str) {
        self.logins
            .get_or_create(&LoginLabels {
                result: result.to_string(),
            })
            .inc();
    }
}

/// Middleware counting every response.
pub async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // Only known methods become labels: any token is a valid HTTP method, and
    // each new label set would live forever.
    let method = match *req.method() {
        axum::http::Method::GET
        | axum::http::Method::HEAD
        | axum::http::Method::POST
        | axum::http::Method::PUT
        | axum::http::Method::DELETE
        | axum::http::Method::OPTIONS => req.method().as_str().to_string(),
        _ => "other".to_string(),
    };
    let resp = next.run(req).await;
    let status = format!("{}xx", resp.status().as_u16() / 100);
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels { method, status })
        .inc();
    resp
}

/// Serves the metrics; sender counts are read from the database at scrape time.
pub async fn scrape(State(state): State<AppState>) -> Result<impl IntoResponse, AppError> {
    let (total, online): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(CASE WHEN online = 1 THEN 1 END) FROM senders")
            .fetch_one(&state.db)
            .await?;
    state.metrics.senders.set(total);
    state.metrics.senders_online.set(online);
    match state.devices.broker() {
        Some(crate::broker::DeviceBroker::Embedded(b)) => {
            state.metrics.mqtt_refused.set(b.refused_packets() as i64);
        }
        Some(crate::broker::DeviceBroker::External(m)) => {
            state
                .metrics
                .mqtt_admin_failed
                .set(m.failed_commands() as i64);
        }
        None => {}
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &state.metrics.registry)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    ))
}
