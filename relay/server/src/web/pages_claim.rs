//! The owner's side of enrollment: the page the device's QR code opens. The
//! owner logs in, checks the user code against the device's screen, picks
//! the organization and a name, and confirms (or denies).

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum_extra::extract::CookieJar;
use serde::Deserialize;
use strata_proto::enrollment::DeviceFacts;

use super::{AppError, AppState, Form};
use crate::auth::SESSION_COOKIE;
use crate::store::accounts::{Org, Role};
use crate::store::enrollments::{self, Approval, Enrollment, normalize_user_code};

#[derive(Template)]
#[template(path = "claim.html")]
struct ClaimPage {
    email: String,
    csrf: String,
    code: String,
    /// Device facts when the code names a pending device.
    device: Option<DeviceFacts>,
    /// Organizations the user may add devices to.
    orgs: Vec<Org>,
    name: String,
    message: String,
    error: String,
}

/// Query of the claim page.
#[derive(Deserialize)]
pub struct ClaimQuery {
    code: Option<String>,
}

struct Session {
    entry: std::sync::Arc<crate::auth::SessionEntry>,
    csrf: String,
}

async fn session(state: &AppState, jar: &CookieJar) -> Result<Option<Session>, AppError> {
    let Some(c) = jar.get(SESSION_COOKIE) else {
        return Ok(None);
    };
    Ok(state
        .auth
        .session(&state.db, c.value())
        .await?
        .map(|entry| Session {
            entry,
            csrf: state.csrf.token("s", c.value()),
        }))
}

fn orgs_for_devices(s: &Session) -> Vec<Org> {
    s.entry
        .memberships
        .iter()
        .filter(|(_, r)| *r >= Role::Operator)
        .map(|(o, _)| o.clone())
        .collect()
}

fn facts_of(e: &Enrollment) -> Option<DeviceFacts> {
    serde_json::from_str(&e.facts).ok()
}

fn page(
    s: &Session,
    code: String,
    device: Option<DeviceFacts>,
    name: String,
    message: &str,
    error: &str,
) -> ClaimPage {
    ClaimPage {
        email: s.entry.user.email.clone(),
        csrf: s.csrf.clone(),
        code,
        device,
        orgs: orgs_for_devices(s),
        name,
        message: message.into(),
        error: error.into(),
    }
}

const NO_SUCH_CODE: &str = "No device is waiting with this code. Codes work once and expire after 10 minutes: check the code on the device's screen, or restart its enrollment.";

/// GET /claim?code=XXXX-XXXX
pub async fn claim_page(
    State(state): State<AppState>,
    jar: CookieJar,
    Query(q): Query<ClaimQuery>,
) -> Result<Response, AppError> {
    let Some(s) = session(&state, &jar).await? else {
        let next = match &q.code {
            Some(c) => format!(
                "/claim?code={}",
                form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()
            ),
            None => "/claim".into(),
        };
        let to = format!(
            "/login?next={}",
            form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
        );
        return Ok(Redirect::to(&to).into_response());
    };
    let typed = q.code.unwrap_or_default();
    let (device, error, status) = match normalize_user_code(&typed) {
        None if typed.is_empty() => (None, String::new(), StatusCode::OK),
        None => (
            None,
            "A code has 8 letters, like BCDF-GHJK.".to_string(),
            StatusCode::BAD_REQUEST,
        ),
        Some(code) => {
            if state.claim_limiter.check_key(&s.entry.user.id).is_err() {
                return Err(AppError::TooManyRequests);
            }
            match enrollments::pending_by_user_code(&state.db, &code).await? {
                Some(e) => (facts_of(&e), String::new(), StatusCode::OK),
                None => (None, NO_SUCH_CODE.to_string(), StatusCode::NOT_FOUND),
            }
        }
    };
    let name = device
        .as_ref()
        .map(|d| d.hostname.clone())
        .unwrap_or_default();
    let p = page(
        &s,
        normalize_user_code(&typed).unwrap_or(typed),
        device,
        name,
        "",
        &error,
    );
    Ok((status, Html(p.render()?)).into_response())
}

/// The claim form.
#[derive(Deserialize)]
pub struct ClaimForm {
    code: String,
    #[serde(default)]
    org: String,
    #[serde(default)]
    name: String,
    decision: String,
}

/// POST /claim
pub async fn claim(
    State(state): State<AppState>,
    jar: CookieJar,
    Form(form): Form<ClaimForm>,
) -> Result<Response, AppError> {
    let s = session(&state, &jar)
        .await?
        .ok_or(AppError::LoginRequired)?;
    if state.claim_limiter.check_key(&s.entry.user.id).is_err() {
        return Err(AppError::TooManyRequests);
    }
    let render = |status: StatusCode,
                  device: Option<DeviceFacts>,
                  message: &str,
                  error: &str|
     -> Result<Response, AppError> {
        let p = page(
            &s,
            form.code.clone(),
            device,
            form.name.clone(),
            message,
            error,
        );
        Ok((status, Html(p.render()?)).into_response())
    };
    let Some(code) = normalize_user_code(&form.code) else {
        return render(
            StatusCode::BAD_REQUEST,
            None,
            "",
            "A code has 8 letters, like BCDF-GHJK.",
        );
    };
    let Some(e) = enrollments::pending_by_user_code(&state.db, &code).await? else {
        return render(StatusCode::NOT_FOUND, None, "", NO_SUCH_CODE);
    };
    let facts = facts_of(&e);
    if orgs_for_devices(&s).is_empty() {
        return render(
            StatusCode::FORBIDDEN,
            None,
            "",
            "Only operators and owners of an organization may answer a device.",
        );
    }
    if form.decision == "deny" {
        if !enrollments::transition(&state.db, &e.id, "pending", "denied").await? {
            return render(StatusCode::CONFLICT, None, "", NO_SUCH_CODE);
        }
        tracing::info!(by = %s.entry.user.email, "enrollment denied");
        return render(StatusCode::OK, None, "The device was turned away.", "");
    }
    if form.decision != "approve" {
        return Err(AppError::BadRequest(
            "decision must be approve or deny".into(),
        ));
    }
    let Some(org) = orgs_for_devices(&s).into_iter().find(|o| o.id == form.org) else {
        return render(
            StatusCode::FORBIDDEN,
            facts,
            "",
            "Pick an organization where you are an operator or owner.",
        );
    };
    let name = form.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return render(
            StatusCode::BAD_REQUEST,
            facts,
            "",
            "Give the device a name of 1 to 64 characters.",
        );
    }
    let device_id = crate::new_id();
    let issued = state
        .ca
        .sign_device(&e.csr_pem, &device_id, state.config.device_cert_days)
        .map_err(|err| AppError::BadRequest(err.to_string()))?;
    let approval = Approval {
        org_id: &org.id,
        sender_id: &device_id,
        sender_name: name,
        user_id: &s.entry.user.id,
        certificate_pem: &issued.cert_pem,
        serial: &issued.serial,
        not_after: issued.not_after_ms,
    };
    if !enrollments::approve(&state.db, &e.id, &approval).await? {
        return render(StatusCode::CONFLICT, None, "", NO_SUCH_CODE);
    }
    super::pages_senders::forget_senders(&state);
    tracing::info!(org = %org.id, device = %device_id, by = %s.entry.user.email, "device claimed");
    let to = format!("/o/{}/senders/{device_id}", org.id);
    Ok(Redirect::to(&to).into_response())
}
