//! Organization pages: destinations, streams, members and API tokens.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::layout::{Nav, nav};
use super::pages_senders::ago;
use super::{AppError, AppState, Form};
use crate::auth::Caller;
use crate::now_ms;
use crate::store::accounts::{self, Member, MemberChangeError, Role, normalize_email};
use crate::store::destinations::{self, Destination, DestinationInput};
use crate::store::streams::{self, Stream, StreamOutput};
use crate::store::tokens::{self, ApiToken};

fn see_other(path: String) -> Response {
    Redirect::to(&path).into_response()
}

// ---- destinations ----

#[derive(Template)]
#[template(path = "destinations.html")]
struct DestinationsPage {
    nav: Nav,
    destinations: Vec<Destination>,
    form_name: String,
    form_kind: String,
    form_target: String,
    error: String,
}

async fn destinations_page(
    state: &AppState,
    caller: &Caller,
    form: Option<&DestinationForm>,
    error: &str,
) -> Result<DestinationsPage, AppError> {
    Ok(DestinationsPage {
        nav: nav(state, caller, "destinations")?,
        destinations: destinations::list(&state.db, &caller.org.id).await?,
        form_name: form.map(|f| f.name.clone()).unwrap_or_default(),
        form_kind: form
            .map(|f| f.kind.clone())
            .unwrap_or_else(|| "rtmp".into()),
        form_target: form.map(|f| f.target.clone()).unwrap_or_default(),
        error: error.into(),
    })
}

/// GET /o/{org}/destinations
pub async fn destinations(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, AppError> {
    Ok(Html(
        destinations_page(&state, &caller, None, "")
            .await?
            .render()?,
    )
    .into_response())
}

/// The destination form (add and edit).
#[derive(Deserialize)]
pub struct DestinationForm {
    name: String,
    kind: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    secret: String,
}

impl DestinationForm {
    fn input(&self) -> DestinationInput {
        DestinationInput {
            name: self.name.clone(),
            kind: self.kind.clone(),
            target: self.target.clone(),
            secret: Some(self.secret.clone()).filter(|s| !s.is_empty()),
        }
    }
}

/// POST /o/{org}/destinations
pub async fn add_destination(
    State(state): State<AppState>,
    caller: Caller,
    Form(form): Form<DestinationForm>,
) -> Result<Response, AppError> {
    caller.require(Role::Operator)?;
    let input = form.input();
    if let Err(e) = input.validate(true) {
        let page = destinations_page(&state, &caller, Some(&form), &e).await?;
        return Ok((StatusCode::BAD_REQUEST, Html(page.render()?)).into_response());
    }
    let d = destinations::create(&state.db, &state.sbox, &caller.org.id, &input).await?;
    tracing::info!(org = %caller.org.id, destination = %d.id, kind = %d.kind, user = %caller.user.email, "destination added");
    Ok(see_other(format!("/o/{}/destinations", caller.org.id)))
}

/// POST /o/{org}/destinations/{id}: edit; an empty key keeps the stored one.
pub async fn update_destination(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, id)): Path<(String, String)>,
    Form(form): Form<DestinationForm>,
) -> Result<Response, AppError> {
    caller.require(Role::Operator)?;
    let existing = destinations::get(&state.db, &caller.org.id, &id)
        .await?
        .ok_or(AppError::NotFound)?;
    let input = form.input();
    // Changing the kind needs a fresh key; keeping it may reuse the stored one.
    let creating = destinations::edit_needs_new_key(&existing, &input);
    if let Err(e) = input.validate(creating) {
        let page =
            destinations_page(&state, &caller, None, &format!("{}: {e}", existing.name)).await?;
        return Ok((StatusCode::BAD_REQUEST, Html(page.render()?)).into_response());
    }
    destinations::update(
        &state.db,
        &state.sbox,
        &caller.org.id,
        &id,
        &input,
        !creating,
    )
    .await?;
    Ok(see_other(format!("/o/{}/destinations", caller.org.id)))
}

/// POST /o/{org}/destinations/{id}/delete
pub async fn delete_destination(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, AppError> {
    caller.require(Role::Operator)?;
    if !destinations::delete(&state.db, &caller.org.id, &id).await? {
        return Err(AppError::NotFound);
    }
    Ok(see_other(format!("/o/{}/destinations", caller.org.id)))
}

// ---- streams ----

/// A stream with its outputs, for the page.
pub struct StreamView {
    /// The stream.
    pub stream: Stream,
    /// "3 min ago".
    pub started: String,
    /// Duration text.
    pub duration: String,
    /// Its outputs.
    pub outputs: Vec<StreamOutput>,
}

#[derive(Template)]
#[template(path = "streams.html")]
struct StreamsPage {
    nav: Nav,
    streams: Vec<StreamView>,
}

/// GET /o/{org}/streams
pub async fn streams(State(state): State<AppState>, caller: Caller) -> Result<Response, AppError> {
    let now = now_ms();
    let list = streams::list(&state.db, &caller.org.id, 100).await?;
    let mut outputs = streams::outputs(&state.db, &caller.org.id, 100).await?;
    let streams = list
        .into_iter()
        .map(|s| {
            let secs = (s.ended_at.unwrap_or(now) - s.started_at).max(0) / 1000;
            let mine;
            (mine, outputs) = outputs
                .drain(..)
                .partition(|o: &StreamOutput| o.stream_id == s.id);
            StreamView {
                started: ago(now, Some(s.started_at)),
                duration: format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60),
                outputs: mine,
                stream: s,
            }
        })
        .collect();
    let page = StreamsPage {
        nav: nav(&state, &caller, "streams")?,
        streams,
    };
    Ok(Html(page.render()?).into_response())
}

// ---- members ----

#[derive(Template)]
#[template(path = "members.html")]
struct MembersPage {
    nav: Nav,
    members: Vec<Member>,
    roles: [Role; 3],
    error: String,
}

async fn members_page(
    state: &AppState,
    caller: &Caller,
    error: &str,
) -> Result<MembersPage, AppError> {
    Ok(MembersPage {
        nav: nav(state, caller, "members")?,
        members: accounts::members(&state.db, &caller.org.id).await?,
        roles: Role::ALL,
        error: error.into(),
    })
}

/// GET /o/{org}/members
pub async fn members(State(state): State<AppState>, caller: Caller) -> Result<Response, AppError> {
    Ok(Html(members_page(&state, &caller, "").await?.render()?).into_response())
}

/// The add-member form.
#[derive(Deserialize)]
pub struct AddMemberForm {
    email: String,
    role: String,
}

/// POST /o/{org}/members: adds an existing account, or creates one with a
/// one-time password shown once to the owner.
pub async fn add_member(
    State(state): State<AppState>,
    caller: Caller,
    Form(form): Form<AddMemberForm>,
) -> Result<Response, AppError> {
    caller.require(Role::Owner)?;
    let (Some(email), Some(role)) = (normalize_email(&form.email), Role::parse(&form.role)) else {
        let page = members_page(&state, &caller, "Give an email address and a role.").await?;
        return Ok((StatusCode::BAD_REQUEST, Html(page.render()?)).into_response());
    };
    // Only existing accounts: creating one here would hand the owner a
    // password to somebody else's email (and that account, later).
    let Some((user, _)) = accounts::user_by_email(&state.db, &email).await? else {
        let msg = format!(
            "{email} has no account yet. They create one first (registration, or `strata-relay user add` by the operator); then add them here."
        );
        let page = members_page(&state, &caller, &msg).await?;
        return Ok((StatusCode::NOT_FOUND, Html(page.render()?)).into_response());
    };
    if accounts::role_in(&state.db, &caller.org.id, &user.id)
        .await?
        .is_some()
    {
        let page = members_page(&state, &caller, &format!("{email} is already a member.")).await?;
        return Ok((StatusCode::CONFLICT, Html(page.render()?)).into_response());
    }
    accounts::add_member(&state.db, &caller.org.id, &user.id, role).await?;
    state.auth.forget_all();
    tracing::info!(org = %caller.org.id, member = %email, %role, by = %caller.user.email, "member added");
    Ok(see_other(format!("/o/{}/members", caller.org.id)))
}

/// The change-member form: a role, or `remove`.
#[derive(Deserialize)]
pub struct ChangeMemberForm {
    role: String,
}

/// POST /o/{org}/members/{user}
pub async fn change_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, user)): Path<(String, String)>,
    Form(form): Form<ChangeMemberForm>,
) -> Result<Response, AppError> {
    caller.require(Role::Owner)?;
    let role = match form.role.as_str() {
        "remove" => None,
        r => Some(Role::parse(r).ok_or_else(|| AppError::BadRequest("unknown role".into()))?),
    };
    let result = accounts::change_member(&state.db, &caller.org.id, &user, role).await;
    state.auth.forget_all();
    match result {
        Ok(()) => Ok(see_other(format!("/o/{}/members", caller.org.id))),
        Err(MemberChangeError::NotFound) => Err(AppError::NotFound),
        Err(MemberChangeError::LastOwner) => {
            let page =
                members_page(&state, &caller, "An organization needs at least one owner.").await?;
            Ok((StatusCode::CONFLICT, Html(page.render()?)).into_response())
        }
        Err(MemberChangeError::Db(e)) => Err(e.into()),
    }
}

// ---- API tokens ----

/// A token row for the page.
pub struct TokenView {
    /// The token.
    pub token: ApiToken,
    /// "never" or "3 min ago".
    pub last_used: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    nav: Nav,
    tokens: Vec<TokenView>,
    roles: [Role; 3],
    /// A token just created: shown this once.
    created: Option<String>,
    error: String,
}

async fn tokens_page(
    state: &AppState,
    caller: &Caller,
    created: Option<String>,
    error: &str,
) -> Result<TokensPage, AppError> {
    let now = now_ms();
    let tokens = tokens::list(&state.db, &caller.org.id)
        .await?
        .into_iter()
        .map(|t| TokenView {
            last_used: ago(now, t.last_used_at),
            token: t,
        })
        .collect();
    Ok(TokensPage {
        nav: nav(state, caller, "tokens")?,
        tokens,
        roles: Role::ALL,
        created,
        error: error.into(),
    })
}

/// GET /o/{org}/tokens (owners)
pub async fn tokens(State(state): State<AppState>, caller: Caller) -> Result<Response, AppError> {
    caller.require(Role::Owner)?;
    Ok(Html(tokens_page(&state, &caller, None, "").await?.render()?).into_response())
}

/// The new-token form.
#[derive(Deserialize)]
pub struct TokenForm {
    name: String,
    role: String,
}

/// POST /o/{org}/tokens: the page shows the secret once.
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    Form(form): Form<TokenForm>,
) -> Result<Response, AppError> {
    caller.require(Role::Owner)?;
    let name = form.name.trim();
    let role = Role::parse(&form.role);
    let (false, true, Some(role)) = (name.is_empty(), name.chars().count() <= 64, role) else {
        let page = tokens_page(
            &state,
            &caller,
            None,
            "Give the token a name (up to 64 characters) and a role.",
        )
        .await?;
        return Ok((StatusCode::BAD_REQUEST, Html(page.render()?)).into_response());
    };
    let (id, secret) = tokens::create(
        &state.db,
        &caller.org.id,
        &caller.user.id,
        name,
        role.min(caller.role),
    )
    .await?;
    tracing::info!(org = %caller.org.id, token = %id, by = %caller.user.email, "API token created");
    let mut resp = Html(
        tokens_page(&state, &caller, Some(secret), "")
            .await?
            .render()?,
    )
    .into_response();
    // The secret is in this response only: keep it out of caches.
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

/// POST /o/{org}/tokens/{id}/revoke
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, AppError> {
    caller.require(Role::Owner)?;
    if !tokens::revoke(&state.db, &caller.org.id, &id).await? {
        return Err(AppError::NotFound);
    }
    state.auth.forget_all();
    Ok(see_other(format!("/o/{}/tokens", caller.org.id)))
}
