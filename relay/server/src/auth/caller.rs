//! Extractors that turn a request into an authenticated caller.
//!
//! Pages authenticate with the session cookie only, the JSON API with a
//! bearer token only: so the API needs no CSRF token, and a token can never
//! drive the dashboard.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum_extra::extract::CookieJar;

use std::sync::Arc;

use super::SessionEntry;
use crate::store::accounts::{Org, Role, User};
use crate::web::{ApiError, AppError, AppState};

/// Name of the session cookie. `__Host-` makes browsers insist on Secure,
/// Path=/ and no Domain.
pub const SESSION_COOKIE: &str = "__Host-strata_session";

/// A logged-in browser user, not yet tied to an organization.
#[derive(Debug, Clone)]
pub struct SessionUser {
    /// The user.
    pub user: User,
    /// The session cookie's value (CSRF tokens derive from it).
    pub session: String,
    /// The user's organizations and roles.
    pub entry: Arc<SessionEntry>,
}

impl FromRequestParts<AppState> for SessionUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(cookie) = jar.get(SESSION_COOKIE) else {
            return Err(AppError::LoginRequired);
        };
        let session = cookie.value().to_string();
        match state.auth.session(&state.db, &session).await? {
            Some(entry) => Ok(SessionUser {
                user: entry.user.clone(),
                session,
                entry,
            }),
            None => Err(AppError::LoginRequired),
        }
    }
}

/// Someone acting in the organization named by the `{org}` path segment.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user (for a token: the user who created it).
    pub user: User,
    /// The organization.
    pub org: Org,
    /// Their role in it.
    pub role: Role,
    /// The session cookie, for page callers.
    pub session: Option<String>,
    /// Every organization of a page caller (for the switcher); empty for the API.
    pub orgs: Vec<Org>,
}

impl Caller {
    /// Refuses the request unless the caller has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), AppError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(AppError::Forbidden)
        }
    }
}

async fn org_param(parts: &mut Parts, state: &AppState) -> Option<String> {
    let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
        .await
        .ok()?;
    params.get("org").cloned()
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let org_id = org_param(parts, state).await.ok_or(AppError::NotFound)?;
        let su = SessionUser::from_request_parts(parts, state).await?;
        // Not a member and no such organization look the same: 404.
        let (org, role) = su
            .entry
            .memberships
            .iter()
            .find(|(o, _)| o.id == org_id)
            .cloned()
            .ok_or(AppError::NotFound)?;
        Ok(Caller {
            orgs: su
                .entry
                .memberships
                .iter()
                .map(|(o, _)| o.clone())
                .collect(),
            user: su.user,
            org,
            role,
            session: Some(su.session),
        })
    }
}

/// A caller of the JSON API, authenticated by `Authorization: Bearer strata_...`.
#[derive(Debug, Clone)]
pub struct ApiCaller(pub Caller);

impl FromRequestParts<AppState> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let org_id = org_param(parts, state)
            .await
            .ok_or(ApiError(AppError::NotFound))?;
        let secret = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError(AppError::TokenRequired))?;
        let id = state
            .auth
            .token(&state.db, secret.trim())
            .await
            .map_err(AppError::from)?;
        let Some(id) = id else {
            return Err(ApiError(AppError::TokenRequired));
        };
        if id.org_id != org_id {
            return Err(ApiError(AppError::NotFound));
        }
        Ok(ApiCaller(Caller {
            user: User {
                id: id.user_id.clone(),
                email: id.email.clone(),
            },
            org: Org {
                id: id.org_id.clone(),
                name: id.org_name.clone(),
            },
            role: id.role,
            session: None,
            orgs: Vec::new(),
        }))
    }
}
