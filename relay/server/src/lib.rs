//! `strata-relay`: the cloud side's server. It keeps accounts, organizations,
//! senders, destinations and streams in a database (SQLite by default,
//! PostgreSQL by URL) and serves the customer's dashboard (server-rendered
//! askama pages with vendored htmx, live values over server-sent events), the
//! JSON API with its OpenAPI document, `/metrics` and `/healthz`, over HTTPS.
//!
//! Where a request goes: [`web::router`] builds the axum router; an
//! [`auth::Caller`] extractor turns the session cookie or a bearer token into a
//! user with a role in the organization named in the path; handlers in
//! [`web`] check the role and call the [`store`] functions, every one of which
//! takes the organization id so no query can cross tenants.
//!
//! Hand-written here, and why:
//! - CSRF tokens: an HMAC of the session token under the data directory's
//!   session key (`hmac` + `sha2`); the axum CSRF crates are tied to session
//!   stores we do not use.
//! - The per-link chart: a small server-rendered SVG polyline, so the page
//!   needs no chart library.
//! - Portable SQL: sqlx's `Any` driver runs one set of queries and migrations
//!   on both databases; the queries avoid the few places where SQLite and
//!   PostgreSQL differ (ids are TEXT, times BIGINT milliseconds).

pub mod auth;
pub mod broker;
pub mod ca;
pub mod config;
pub mod control;
pub mod datadir;
pub mod db;
pub mod registry;
pub mod releases;
pub mod secrets;
pub mod store;
pub mod streaming;
pub mod web;

/// Milliseconds since the Unix epoch, the time unit of every stored timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A new random id: 16 random bytes, lowercase hex.
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex_lower(&bytes)
}

/// The bytes of a hex string; `None` if it is not hex.
pub fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Lowercase hex of some bytes.
pub fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
