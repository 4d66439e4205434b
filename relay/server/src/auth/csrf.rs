//! CSRF protection for the dashboard: every request that is not GET or HEAD
//! must carry a token (header `X-CSRF-Token`, which htmx sends from the
//! `hx-headers` on `<body>`, or a `_csrf` form field). The token is an HMAC of
//! the session cookie (or, before login, of a random pre-session cookie)
//! under the data directory's session key, so it needs no storage and a
//! page from another site cannot know it.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::CookieJar;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::SESSION_COOKIE;
use crate::web::{AppError, AppState};

/// Cookie holding the random value the login form's token is derived from.
pub const PRE_SESSION_COOKIE: &str = "__Host-strata_pre";

/// Largest form body the guard reads to find `_csrf`.
const MAX_FORM: usize = 64 * 1024;

/// Derives CSRF tokens.
#[derive(Clone)]
pub struct Csrf {
    key: [u8; 32],
}

impl Csrf {
    /// A deriver keyed with the session key.
    pub fn new(key: [u8; 32]) -> Csrf {
        Csrf { key }
    }

    fn mac(&self, kind: &str, cookie: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(kind.as_bytes());
        mac.update(b":");
        mac.update(cookie.as_bytes());
        mac
    }

    /// The token for a session cookie (`kind` "s") or a pre-session cookie ("p").
    pub fn token(&self, kind: &str, cookie: &str) -> String {
        crate::hex_lower(&self.mac(kind, cookie).finalize().into_bytes())
    }

    /// Checks a presented token in constant time.
    pub fn verify(&self, kind: &str, cookie: &str, presented: &str) -> bool {
        let Some(bytes) = Some(presented)
            .filter(|p| p.len() == 64)
            .and_then(crate::hex_decode)
        else {
            return false;
        };
        self.mac(kind, cookie).verify_slice(&bytes).is_ok()
    }
}

/// Middleware that refuses state-changing requests without a valid token.
pub async fn csrf_guard(
    State(state): State<AppState>,
    jar: CookieJar,
    req: Request,
    next: Next,
) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    // A token may be bound to the session cookie or, on the login and
    // registration forms, to the pre-session cookie. Both are tried: a stale
    // session cookie (expired, or one a browser kept) must not lock anyone
    // out of the login form.
    let candidates: Vec<(&str, String)> = [
        ("s", jar.get(SESSION_COOKIE)),
        ("p", jar.get(PRE_SESSION_COOKIE)),
    ]
    .into_iter()
    .filter_map(|(kind, c)| c.map(|c| (kind, c.value().to_string())))
    .collect();
    if candidates.is_empty() {
        return AppError::Csrf.into_response();
    }
    let header = req
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (req, presented) = match header {
        Some(h) => (req, Some(h)),
        None => {
            let (parts, body) = req.into_parts();
            let bytes = match axum::body::to_bytes(body, MAX_FORM).await {
                Ok(b) => b,
                Err(_) => return AppError::TooLarge.into_response(),
            };
            let field = form_urlencoded::parse(&bytes)
                .find(|(k, _)| k == "_csrf")
                .map(|(_, v)| v.into_owned());
            (Request::from_parts(parts, Body::from(bytes)), field)
        }
    };
    match presented {
        Some(t)
            if candidates
                .iter()
                .any(|(kind, cookie)| state.csrf.verify(kind, cookie, &t)) =>
        {
            next.run(req).await
        }
        _ => {
            state.metrics.csrf_rejected.inc();
            AppError::Csrf.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_to_cookie_and_kind() {
        let c = Csrf::new([1; 32]);
        let t = c.token("s", "cookie-a");
        assert!(c.verify("s", "cookie-a", &t));
        assert!(!c.verify("s", "cookie-b", &t));
        assert!(!c.verify("p", "cookie-a", &t));
        assert!(!Csrf::new([2; 32]).verify("s", "cookie-a", &t));
        assert!(!c.verify("s", "cookie-a", "zz"));
        assert!(!c.verify("s", "cookie-a", &"g".repeat(64)));
    }
}
