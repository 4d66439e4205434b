//! HTTP: the router, shared state, errors, static assets and the small
//! service endpoints. Pages live in [`pages`] modules, the JSON API in [`api`].

mod agent_update;
pub mod api;
mod assets;
mod chart;
mod enroll;
mod error;
mod fresh;
mod layout;
mod live;
pub mod metrics;
mod modem_control;
mod pages_account;
mod pages_claim;
mod pages_org;
mod pages_senders;
mod serve;
mod stream_control;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware;
use axum::routing::{get, post};
use tower_http::set_header::SetResponseHeaderLayer;

pub use error::{ApiError, ApiJson, AppError, Form};
pub use pages_senders::forget_senders;
pub use serve::{broker_names, device_plane, serve, state};

use crate::auth::{AuthCache, Csrf, LoginLimiter, csrf_guard};
use crate::config::Config;
use crate::db::Db;
use crate::secrets::SecretBox;
use crate::store::senders::SenderRow;

/// How old a live chart may be: the pages refresh it every second anyway.
pub const CHART_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest a live view (chart, sender page) may serve a stale value while it
/// is refreshed in the background.
pub const LIVE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3);

/// How old a page of the sender list may be (online state, last seen).
pub const LIST_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest request body any route accepts.
pub const MAX_BODY: usize = 64 * 1024;

/// A page of an organization's senders and how many it has in all.
pub type SenderPage = (Vec<SenderRow>, i64);

/// Everything a handler may need, shared by all requests.
pub struct Relay {
    /// The database.
    pub db: Db,
    /// Encrypts secrets at rest.
    pub sbox: SecretBox,
    /// Derives and checks CSRF tokens.
    pub csrf: Csrf,
    /// Login rate limit.
    pub limiter: LoginLimiter,
    /// Who sessions and tokens are, for a few seconds.
    pub auth: AuthCache,
    /// Pages of senders (and the total) per (organization, limit, offset), for [`LIST_TTL`].
    pub sender_pages: moka::future::Cache<(String, i64, i64), Arc<SenderPage>>,
    /// Single senders per (organization, id) for the pages that show them, for [`LIST_TTL`].
    pub sender_rows: fresh::Revalidating<(String, String), Option<Arc<SenderRow>>>,
    /// JSON of API sender list pages per (organization, limit, offset), for [`LIST_TTL`].
    pub api_sender_pages: moka::future::Cache<(String, i64, i64), axum::body::Bytes>,
    /// Rendered charts per (organization, sender), fresh for [`CHART_TTL`].
    pub charts: fresh::Revalidating<(String, String), Arc<String>>,
    /// Prometheus counters.
    pub metrics: metrics::Metrics,
    /// The configuration it started with.
    pub config: Config,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Signs device certificates.
    pub ca: crate::ca::DeviceCa,
    /// What the relay knows of devices, and their control channel.
    pub devices: crate::registry::Registry,
    /// Live streams and their receiver workers.
    pub streams: crate::streaming::Streams,
    /// Enrollment requests per client address.
    pub enroll_limiter: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    /// Claim attempts (user-code guesses) per user.
    pub claim_limiter: governor::DefaultKeyedRateLimiter<String>,
    /// Agent releases, for the sender page.
    pub releases: crate::releases::Catalog,
}

impl Relay {
    /// The broker port devices are told: configured, else the broker's own.
    pub fn broker_port(&self) -> u16 {
        if self.config.broker_port != 0 {
            return self.config.broker_port;
        }
        match self.devices.broker() {
            Some(crate::broker::DeviceBroker::Embedded(b)) => b.local_addr().port(),
            _ if self.config.broker == crate::config::BrokerMode::External => self
                .config
                .external_broker_addr()
                .map(|(_, port)| port)
                .unwrap_or(self.config.broker_listen.port()),
            _ => self.config.broker_listen.port(),
        }
    }
}

/// The state axum hands to handlers.
pub type AppState = Arc<Relay>;

/// The whole HTTP surface: dashboard pages (cookie + CSRF), JSON API (bearer
/// token), static assets, `/healthz` and `/metrics`.
pub fn router(state: AppState) -> Router {
    let pages = Router::new()
        .route("/", get(pages_account::home))
        .route(
            "/login",
            get(pages_account::login_page).post(pages_account::login),
        )
        .route("/logout", post(pages_account::logout))
        .route(
            "/register",
            get(pages_account::register_page).post(pages_account::register),
        )
        .route(
            "/account",
            get(pages_account::account_page).post(pages_account::change_password),
        )
        .route(
            "/claim",
            get(pages_claim::claim_page).post(pages_claim::claim),
        )
        .route("/o/{org}/senders", get(pages_senders::list))
        .route("/o/{org}/senders/live", get(live::senders_rows))
        .route("/o/{org}/senders/{id}", get(pages_senders::detail))
        .route(
            "/o/{org}/senders/{id}/settings",
            get(pages_senders::settings_redirect).post(pages_senders::save_settings),
        )
        .route("/o/{org}/senders/{id}/revoke", post(pages_senders::revoke))
        .route(
            "/o/{org}/senders/{id}/modems/{modem}",
            post(modem_control::modem_action),
        )
        .route(
            "/o/{org}/senders/{id}/update",
            post(agent_update::update_page),
        )
        .route(
            "/agent/releases/{target}/{version}/strata-agent",
            get(agent_update::download),
        )
        .route(
            "/o/{org}/senders/{id}/start",
            post(stream_control::start_page),
        )
        .route(
            "/o/{org}/streams/{id}/stop",
            post(stream_control::stop_page),
        )
        .route("/o/{org}/senders/{id}/live", get(live::sender_detail))
        .route(
            "/o/{org}/destinations",
            get(pages_org::destinations).post(pages_org::add_destination),
        )
        .route(
            "/o/{org}/destinations/{id}",
            post(pages_org::update_destination),
        )
        .route(
            "/o/{org}/destinations/{id}/delete",
            post(pages_org::delete_destination),
        )
        .route("/o/{org}/streams", get(pages_org::streams))
        .route(
            "/o/{org}/members",
            get(pages_org::members).post(pages_org::add_member),
        )
        .route("/o/{org}/members/{user}", post(pages_org::change_member))
        .route(
            "/o/{org}/tokens",
            get(pages_org::tokens).post(pages_org::create_token),
        )
        .route("/o/{org}/tokens/{id}/revoke", post(pages_org::revoke_token))
        .layer(middleware::from_fn_with_state(state.clone(), csrf_guard));

    Router::new()
        .merge(pages)
        .merge(api::router())
        .route(
            strata_proto::enrollment::AUTHORIZE_PATH,
            post(enroll::authorize),
        )
        .route(strata_proto::enrollment::TOKEN_PATH, post(enroll::token))
        .route("/static/{file}", get(assets::serve))
        .route(
            "/favicon.ico",
            get(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::scrape))
        .fallback(|| async { AppError::NotFound })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::count_requests,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                 frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
            ),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("strict-transport-security"),
            HeaderValue::from_static("max-age=31536000"),
        ))
        .with_state(state)
}

/// Liveness and database reachability.
async fn healthz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<&'static str, AppError> {
    sqlx::query("SELECT 1").execute(&state.db).await?;
    Ok("ok\n")
}
