//! Pages about the person, not the organization: login, logout,
//! registration (when open), password change, and the home redirect.

use std::net::{IpAddr, SocketAddr};

use askama::Template;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use serde::Deserialize;

use super::{AppError, AppState, Form};
use crate::auth::{
    PRE_SESSION_COOKIE, SESSION_COOKIE, SessionUser, check_password_strength, hash_password,
    verify_password,
};
use crate::store::accounts::{self, Role, normalize_email};
use crate::store::sessions;

/// The client's address, when the server knows it.
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// A cookie for this service: HttpOnly, Secure, SameSite=Lax, whole site.
/// Removal cookies are built from it too: browsers ignore a `__Host-` cookie
/// (even a deletion) that lacks these attributes.
pub(super) fn cookie(name: &'static str, value: String) -> Cookie<'static> {
    Cookie::build((name, value))
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Lax)
        .path("/")
        .build()
}

/// The session cookie, living as long as the session.
fn session_cookie(token: String, hours: u32) -> Cookie<'static> {
    let mut c = cookie(SESSION_COOKIE, token);
    c.set_max_age(Some(time::Duration::hours(i64::from(hours))));
    c
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    next: String,
    email: String,
    error: String,
    registration_open: bool,
}

fn pre_session(state: &AppState, jar: CookieJar) -> (CookieJar, String) {
    match jar.get(PRE_SESSION_COOKIE).map(|c| c.value().to_string()) {
        Some(v) => {
            let t = state.csrf.token("p", &v);
            (jar, t)
        }
        None => {
            let v = crate::store::new_secret("");
            let t = state.csrf.token("p", &v);
            (jar.add(cookie(PRE_SESSION_COOKIE, v)), t)
        }
    }
}

fn login_form(
    state: &AppState,
    jar: CookieJar,
    status: StatusCode,
    email: String,
    error: &str,
    next: &str,
) -> Result<Response, AppError> {
    let (jar, csrf) = pre_session(state, jar);
    let page = LoginPage {
        csrf,
        next: safe_next(next).unwrap_or_default().to_string(),
        email,
        error: error.to_string(),
        registration_open: state.config.registration_open,
    };
    Ok((status, jar, Html(page.render()?)).into_response())
}

/// GET /login
pub async fn login_page(
    State(state): State<AppState>,
    jar: CookieJar,
    axum::extract::Query(q): axum::extract::Query<NextQuery>,
) -> Result<Response, AppError> {
    if let Some(c) = jar.get(SESSION_COOKIE)
        && sessions::user(&state.db, c.value()).await?.is_some()
    {
        return Ok(Redirect::to(safe_next(&q.next).unwrap_or("/")).into_response());
    }
    login_form(&state, jar, StatusCode::OK, String::new(), "", &q.next)
}

/// Where to go after logging in.
#[derive(Deserialize)]
pub struct NextQuery {
    #[serde(default)]
    next: String,
}

/// `next` if it is a path on this site (not `//host` or `/\host`, which
/// browsers treat as another site).
pub fn safe_next(next: &str) -> Option<&str> {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && next.len() <= 512
        && !next.chars().any(|c| c.is_control() || c == '\\');
    ok.then_some(next)
}

/// The login form.
#[derive(Deserialize)]
pub struct LoginForm {
    email: String,
    password: String,
    #[serde(default)]
    next: String,
}

/// A hash verified when the account does not exist, so a wrong email takes
/// as long as a wrong password and does not reveal which accounts exist.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password("no such account here"));

/// POST /login
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    jar: CookieJar,
    Form(form): Form<LoginForm>,
) -> Result<Response, AppError> {
    let email = form.email.trim().to_lowercase();
    if email.len() > 254 || form.password.len() > 1024 {
        return login_form(
            &state,
            jar,
            StatusCode::BAD_REQUEST,
            String::new(),
            "Email or password too long.",
            &form.next,
        );
    }
    if !state.limiter.attempt(ip, &email) {
        state.metrics.login("limited");
        tracing::warn!(?ip, "login rate limit hit");
        return login_form(
            &state,
            jar,
            StatusCode::TOO_MANY_REQUESTS,
            email,
            "Too many attempts; wait a minute and try again.",
            &form.next,
        );
    }
    let found = accounts::user_by_email(&state.db, &email).await?;
    let next = form.next;
    let password = form.password;
    let (user, ok) = tokio::task::spawn_blocking(move || match found {
        Some((user, hash)) => {
            let ok = verify_password(&password, &hash);
            (Some(user), ok)
        }
        None => {
            verify_password(&password, &DUMMY_HASH);
            (None, false)
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    let Some(user) = user.filter(|_| ok) else {
        state.metrics.login("failed");
        return login_form(
            &state,
            jar,
            StatusCode::UNAUTHORIZED,
            email,
            "Wrong email or password.",
            &next,
        );
    };
    state.metrics.login("ok");
    let token = sessions::create(&state.db, &user.id, state.config.session_hours).await?;
    tracing::info!(user = %user.email, "logged in");
    let jar = jar
        .remove(cookie(PRE_SESSION_COOKIE, String::new()))
        .add(session_cookie(token, state.config.session_hours));
    Ok((jar, Redirect::to(safe_next(&next).unwrap_or("/"))).into_response())
}

/// POST /logout
pub async fn logout(State(state): State<AppState>, jar: CookieJar) -> Result<Response, AppError> {
    if let Some(c) = jar.get(SESSION_COOKIE) {
        sessions::delete(&state.db, c.value()).await?;
        state.auth.forget_session(c.value());
    }
    let jar = jar.remove(cookie(SESSION_COOKIE, String::new()));
    Ok((jar, Redirect::to("/login")).into_response())
}

#[derive(Template)]
#[template(path = "no_org.html")]
struct NoOrgPage {
    email: String,
    csrf: String,
}

/// GET /: the first organization's senders.
pub async fn home(State(state): State<AppState>, su: SessionUser) -> Result<Response, AppError> {
    let orgs = accounts::memberships_of(&state.db, &su.user.id).await?;
    match orgs.first() {
        Some((org, _)) => Ok(Redirect::to(&format!("/o/{}/senders", org.id)).into_response()),
        None => {
            let page = NoOrgPage {
                email: su.user.email,
                csrf: state.csrf.token("s", &su.session),
            };
            Ok(Html(page.render()?).into_response())
        }
    }
}

#[derive(Template)]
#[template(path = "register.html")]
struct RegisterPage {
    csrf: String,
    email: String,
    org: String,
    error: String,
}

/// GET /register (only when registration is open).
pub async fn register_page(
    State(state): State<AppState>,
    jar: CookieJar,
) -> Result<Response, AppError> {
    if !state.config.registration_open {
        return Err(AppError::NotFound);
    }
    let (jar, csrf) = pre_session(&state, jar);
    let page = RegisterPage {
        csrf,
        email: String::new(),
        org: String::new(),
        error: String::new(),
    };
    Ok((jar, Html(page.render()?)).into_response())
}

/// The registration form.
#[derive(Deserialize)]
pub struct RegisterForm {
    email: String,
    organization: String,
    password: String,
}

/// POST /register: a new account owning a new organization.
pub async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    jar: CookieJar,
    Form(form): Form<RegisterForm>,
) -> Result<Response, AppError> {
    if !state.config.registration_open {
        return Err(AppError::NotFound);
    }
    let org_name = form.organization.trim().to_string();
    let problem = match normalize_email(&form.email) {
        None => Some("That is not an email address."),
        Some(_) if org_name.is_empty() || org_name.chars().count() > 64 => {
            Some("The organization needs a name (up to 64 characters).")
        }
        Some(_) => check_password_strength(&form.password).err(),
    };
    let email = normalize_email(&form.email).unwrap_or_default();
    if problem.is_none() && !state.limiter.attempt(ip, &email) {
        return Err(AppError::TooManyRequests);
    }
    if let Some(problem) = problem {
        let (jar, csrf) = pre_session(&state, jar);
        let page = RegisterPage {
            csrf,
            email: form.email,
            org: org_name,
            error: problem.to_string(),
        };
        return Ok((StatusCode::BAD_REQUEST, jar, Html(page.render()?)).into_response());
    }
    let password = form.password;
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let user = match accounts::create_user(&state.db, &email, &hash).await {
        Ok(u) => u,
        Err(e) if crate::db::is_unique_violation(&e) => {
            return Err(AppError::Conflict(
                "an account with this email exists; log in instead".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let org = accounts::create_org(&state.db, &org_name).await?;
    accounts::add_member(&state.db, &org.id, &user.id, Role::Owner).await?;
    let token = sessions::create(&state.db, &user.id, state.config.session_hours).await?;
    let jar = jar
        .remove(cookie(PRE_SESSION_COOKIE, String::new()))
        .add(session_cookie(token, state.config.session_hours));
    Ok((jar, Redirect::to("/")).into_response())
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    email: String,
    csrf: String,
    message: String,
    error: String,
}

/// GET /account
pub async fn account_page(
    State(state): State<AppState>,
    su: SessionUser,
) -> Result<Response, AppError> {
    let page = AccountPage {
        email: su.user.email,
        csrf: state.csrf.token("s", &su.session),
        message: String::new(),
        error: String::new(),
    };
    Ok(Html(page.render()?).into_response())
}

/// The password change form.
#[derive(Deserialize)]
pub struct PasswordForm {
    current: String,
    new: String,
    confirm: String,
}

/// POST /account: change the password; every other session of the user ends.
pub async fn change_password(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    su: SessionUser,
    jar: CookieJar,
    Form(form): Form<PasswordForm>,
) -> Result<Response, AppError> {
    let render = |status: StatusCode,
                  csrf: String,
                  message: &str,
                  error: &str|
     -> Result<Response, AppError> {
        let page = AccountPage {
            email: su.user.email.clone(),
            csrf,
            message: message.into(),
            error: error.into(),
        };
        Ok((status, Html(page.render()?)).into_response())
    };
    let csrf = state.csrf.token("s", &su.session);
    if !state.limiter.attempt(ip, &su.user.email) {
        return render(
            StatusCode::TOO_MANY_REQUESTS,
            csrf,
            "",
            "Too many attempts; wait a minute and try again.",
        );
    }
    if form.new != form.confirm {
        return render(
            StatusCode::BAD_REQUEST,
            csrf,
            "",
            "The new passwords differ.",
        );
    }
    if let Err(e) = check_password_strength(&form.new) {
        return render(StatusCode::BAD_REQUEST, csrf, "", e);
    }
    let (_, hash) = accounts::user_by_email(&state.db, &su.user.email)
        .await?
        .ok_or(AppError::LoginRequired)?;
    let (current, new) = (form.current, form.new);
    let new_hash = tokio::task::spawn_blocking(move || {
        verify_password(&current, &hash).then(|| hash_password(&new))
    })
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    let Some(new_hash) = new_hash else {
        return render(
            StatusCode::BAD_REQUEST,
            csrf,
            "",
            "The current password is wrong.",
        );
    };
    accounts::set_password(&state.db, &su.user.id, &new_hash).await?;
    sessions::delete_all_of(&state.db, &su.user.id).await?;
    state.auth.forget_all();
    let token = sessions::create(&state.db, &su.user.id, state.config.session_hours).await?;
    let csrf = state.csrf.token("s", &token);
    let jar = jar.add(session_cookie(token, state.config.session_hours));
    let page = AccountPage {
        email: su.user.email.clone(),
        csrf,
        message: "Password changed; other sessions were logged out.".into(),
        error: String::new(),
    };
    Ok((jar, Html(page.render()?)).into_response())
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn only_local_paths() {
        assert_eq!(
            safe_next("/claim?code=BCDF-GHJK"),
            Some("/claim?code=BCDF-GHJK")
        );
        for bad in [
            "",
            "https://evil.example/",
            "//evil.example",
            "/\\evil.example",
            "evil",
            "/a\nb",
        ] {
            assert_eq!(safe_next(bad), None, "{bad:?}");
        }
    }
}
