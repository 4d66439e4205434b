//! The JSON API: everything the dashboard does, for automation, with bearer
//! tokens (`Authorization: Bearer strata_...`). The OpenAPI document is served
//! at `/api/openapi.json`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{ApiError, ApiJson, AppError, AppState};
use crate::auth::ApiCaller;
use crate::now_ms;
use crate::store::accounts::{self, Member, MemberChangeError, Role, normalize_email};
use crate::store::destinations::{self, Destination, DestinationInput};
use crate::store::senders::{self, EncoderSettings, Inventory, LinkSample, SenderRow};
use crate::store::streams::{self, Stream};
use crate::store::tokens::{self, ApiToken};

type ApiResult<T> = Result<T, ApiError>;

/// The API's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/v1/o/{org}/senders", get(list_senders))
        .route("/api/v1/o/{org}/senders/{id}", get(get_sender))
        .route("/api/v1/o/{org}/senders/{id}/settings", put(put_settings))
        .route("/api/v1/o/{org}/senders/{id}/telemetry", get(telemetry))
        .route(
            "/api/v1/o/{org}/senders/{id}/streams",
            axum::routing::post(super::stream_control::start_api),
        )
        .route(
            "/api/v1/o/{org}/streams/{id}/stop",
            axum::routing::post(super::stream_control::stop_api),
        )
        .route(
            "/api/v1/o/{org}/senders/{id}/revoke",
            axum::routing::post(revoke_sender),
        )
        .route(
            "/api/v1/o/{org}/senders/{id}/update",
            axum::routing::post(super::agent_update::update_api),
        )
        .route(
            "/api/v1/o/{org}/senders/{id}/modems/{modem}",
            axum::routing::post(super::modem_control::modem_api),
        )
        .route(
            "/api/v1/o/{org}/destinations",
            get(list_destinations).post(create_destination),
        )
        .route(
            "/api/v1/o/{org}/destinations/{id}",
            put(update_destination).delete(delete_destination),
        )
        .route("/api/v1/o/{org}/streams", get(list_streams))
        .route(
            "/api/v1/o/{org}/members",
            get(list_members).post(add_member),
        )
        .route(
            "/api/v1/o/{org}/members/{user}",
            put(set_member_role).delete(remove_member),
        )
        .route(
            "/api/v1/o/{org}/tokens",
            get(list_tokens).post(create_token),
        )
        .route(
            "/api/v1/o/{org}/tokens/{id}",
            axum::routing::delete(revoke_token),
        )
}

/// A sender as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct ApiSender {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Control channel up.
    pub online: bool,
    /// Last heard from, ms since the epoch.
    pub last_seen_at: Option<i64>,
    /// Running stream.
    pub current_stream_id: Option<String>,
    /// Hardware as reported.
    pub inventory: Inventory,
    /// Encoder settings.
    pub settings: EncoderSettings,
    /// The agent's version, from its last status (single-sender reads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// The last self-update, as the sender page says it (single-sender reads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_update: Option<String>,
}

impl From<SenderRow> for ApiSender {
    fn from(s: SenderRow) -> Self {
        ApiSender {
            inventory: s.inventory(),
            settings: s.settings(),
            id: s.id,
            name: s.name,
            online: s.online != 0,
            last_seen_at: s.last_seen_at,
            current_stream_id: s.current_stream_id,
            agent_version: None,
            agent_update: None,
        }
    }
}

/// Paging of list endpoints.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// At most this many items (default 100, at most 500).
    limit: Option<i64>,
    /// Skip this many items.
    offset: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/o/{org}/senders", params(("org" = String, Path), ListQuery), responses((status = 200, body = [ApiSender])), security(("bearer" = [])))]
async fn list_senders(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    Query(q): Query<ListQuery>,
) -> ApiResult<axum::response::Response> {
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let offset = q.offset.unwrap_or(0).max(0);
    // The JSON of a page is cached with the page: parsing every sender's
    // inventory and settings per request would dominate the cost.
    let body = state
        .api_sender_pages
        .try_get_with((c.org.id.clone(), limit, offset), async {
            let page = super::pages_senders::sender_page(&state, &c.org.id, limit, offset).await?;
            let senders: Vec<ApiSender> = page.0.iter().cloned().map(ApiSender::from).collect();
            Ok::<_, AppError>(axum::body::Bytes::from(
                serde_json::to_vec(&senders).expect("senders serialize"),
            ))
        })
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/o/{org}/senders/{id}", params(("org" = String, Path), ("id" = String, Path)), responses((status = 200, body = ApiSender), (status = 404)), security(("bearer" = [])))]
async fn get_sender(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(ids): Path<(String, String)>,
) -> ApiResult<Json<ApiSender>> {
    let id = ids.1;
    let s = senders::get(&state.db, &c.org.id, &id)
        .await?
        .ok_or(AppError::NotFound)?;
    let agent = state.devices.agents.get(&id);
    let mut out = ApiSender::from(s);
    out.agent_version = Some(agent.version).filter(|v| !v.is_empty());
    out.agent_update = agent.update.map(|u| u.describe());
    Ok(Json(out))
}

#[utoipa::path(put, path = "/api/v1/o/{org}/senders/{id}/settings", params(("org" = String, Path), ("id" = String, Path)), request_body = EncoderSettings, responses((status = 200, body = EncoderSettings), (status = 400), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn put_settings(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(ids): Path<(String, String)>,
    ApiJson(settings): ApiJson<EncoderSettings>,
) -> ApiResult<Json<EncoderSettings>> {
    let id = ids.1;
    c.require(Role::Operator)?;
    let s = senders::get(&state.db, &c.org.id, &id)
        .await?
        .ok_or(AppError::NotFound)?;
    settings
        .validate(&s.inventory())
        .map_err(AppError::BadRequest)?;
    senders::set_settings(&state.db, &c.org.id, &id, &settings).await?;
    super::pages_senders::forget_senders(&state);
    // Stored either way; an online device gets them now, others when they connect.
    crate::registry::push_settings_later(state.clone(), id);
    Ok(Json(settings))
}

/// Query of the telemetry endpoint.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct TelemetryQuery {
    /// Samples newer than this, ms since the epoch (default: the last 5 minutes).
    since_ms: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/o/{org}/senders/{id}/telemetry", params(("org" = String, Path), ("id" = String, Path), TelemetryQuery), responses((status = 200, body = [LinkSample]), (status = 404)), security(("bearer" = [])))]
async fn telemetry(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(ids): Path<(String, String)>,
    Query(q): Query<TelemetryQuery>,
) -> ApiResult<Json<Vec<LinkSample>>> {
    let id = ids.1;
    senders::get(&state.db, &c.org.id, &id)
        .await?
        .ok_or(AppError::NotFound)?;
    let since = q.since_ms.unwrap_or_else(|| now_ms() - 5 * 60_000);
    Ok(Json(
        senders::telemetry_since(&state.db, &c.org.id, &id, since, 10_000).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/o/{org}/destinations", params(("org" = String, Path)), responses((status = 200, body = [Destination])), security(("bearer" = [])))]
async fn list_destinations(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
) -> ApiResult<Json<Vec<Destination>>> {
    Ok(Json(destinations::list(&state.db, &c.org.id).await?))
}

#[utoipa::path(post, path = "/api/v1/o/{org}/destinations", params(("org" = String, Path)), request_body = DestinationInput, responses((status = 201, body = Destination), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn create_destination(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    ApiJson(input): ApiJson<DestinationInput>,
) -> ApiResult<(StatusCode, Json<Destination>)> {
    c.require(Role::Operator)?;
    input.validate(true).map_err(AppError::BadRequest)?;
    Ok((
        StatusCode::CREATED,
        Json(destinations::create(&state.db, &state.sbox, &c.org.id, &input).await?),
    ))
}

#[utoipa::path(put, path = "/api/v1/o/{org}/destinations/{id}", params(("org" = String, Path), ("id" = String, Path)), request_body = DestinationInput, responses((status = 200, body = Destination), (status = 400), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn update_destination(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(ids): Path<(String, String)>,
    ApiJson(input): ApiJson<DestinationInput>,
) -> ApiResult<Json<Destination>> {
    let id = ids.1;
    c.require(Role::Operator)?;
    let existing = destinations::get(&state.db, &c.org.id, &id)
        .await?
        .ok_or(AppError::NotFound)?;
    input
        .validate(destinations::edit_needs_new_key(&existing, &input))
        .map_err(AppError::BadRequest)?;
    destinations::update(
        &state.db,
        &state.sbox,
        &c.org.id,
        &id,
        &input,
        !destinations::edit_needs_new_key(&existing, &input),
    )
    .await?;
    Ok(Json(
        destinations::get(&state.db, &c.org.id, &id)
            .await?
            .ok_or(AppError::NotFound)?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/o/{org}/destinations/{id}", params(("org" = String, Path), ("id" = String, Path)), responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn delete_destination(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(ids): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = ids.1;
    c.require(Role::Operator)?;
    if destinations::delete(&state.db, &c.org.id, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::NotFound.into())
    }
}

#[utoipa::path(get, path = "/api/v1/o/{org}/streams", params(("org" = String, Path)), responses((status = 200, body = [Stream])), security(("bearer" = [])))]
async fn list_streams(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
) -> ApiResult<Json<Vec<Stream>>> {
    Ok(Json(streams::list(&state.db, &c.org.id, 100).await?))
}

#[utoipa::path(get, path = "/api/v1/o/{org}/members", params(("org" = String, Path)), responses((status = 200, body = [Member])), security(("bearer" = [])))]
async fn list_members(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
) -> ApiResult<Json<Vec<Member>>> {
    Ok(Json(accounts::members(&state.db, &c.org.id).await?))
}

/// A member to add (the account must exist).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    /// Their email.
    pub email: String,
    /// Their role.
    pub role: Role,
}

#[utoipa::path(post, path = "/api/v1/o/{org}/members", params(("org" = String, Path)), request_body = NewMember, responses((status = 201), (status = 403), (status = 404), (status = 409)), security(("bearer" = [])))]
async fn add_member(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    ApiJson(m): ApiJson<NewMember>,
) -> ApiResult<StatusCode> {
    c.require(Role::Owner)?;
    let email = normalize_email(&m.email)
        .ok_or_else(|| AppError::BadRequest("not an email address".into()))?;
    let (user, _) = accounts::user_by_email(&state.db, &email)
        .await?
        .ok_or(AppError::NotFound)?;
    if accounts::role_in(&state.db, &c.org.id, &user.id)
        .await?
        .is_some()
    {
        return Err(AppError::Conflict("already a member".into()).into());
    }
    accounts::add_member(&state.db, &c.org.id, &user.id, m.role).await?;
    state.auth.forget_all();
    Ok(StatusCode::CREATED)
}

/// A role change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    /// The new role.
    pub role: Role,
}

fn member_error(e: MemberChangeError) -> ApiError {
    match e {
        MemberChangeError::NotFound => AppError::NotFound.into(),
        MemberChangeError::LastOwner => AppError::Conflict(e.to_string()).into(),
        MemberChangeError::Db(e) => e.into(),
    }
}

#[utoipa::path(put, path = "/api/v1/o/{org}/members/{user}", params(("org" = String, Path), ("user" = String, Path)), request_body = RoleChange, responses((status = 204), (status = 403), (status = 404), (status = 409)), security(("bearer" = [])))]
async fn set_member_role(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(ids): Path<(String, String)>,
    ApiJson(r): ApiJson<RoleChange>,
) -> ApiResult<StatusCode> {
    let user = ids.1;
    c.require(Role::Owner)?;
    accounts::change_member(&state.db, &c.org.id, &user, Some(r.role))
        .await
        .map_err(member_error)?;
    state.auth.forget_all();
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/o/{org}/members/{user}", params(("org" = String, Path), ("user" = String, Path)), responses((status = 204), (status = 403), (status = 404), (status = 409)), security(("bearer" = [])))]
async fn remove_member(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(ids): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let user = ids.1;
    c.require(Role::Owner)?;
    accounts::change_member(&state.db, &c.org.id, &user, None)
        .await
        .map_err(member_error)?;
    state.auth.forget_all();
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/o/{org}/tokens", params(("org" = String, Path)), responses((status = 200, body = [ApiToken]), (status = 403)), security(("bearer" = [])))]
async fn list_tokens(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
) -> ApiResult<Json<Vec<ApiToken>>> {
    c.require(Role::Owner)?;
    Ok(Json(tokens::list(&state.db, &c.org.id).await?))
}

/// A token to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Name, 1–64 characters.
    pub name: String,
    /// Role (capped at the caller's).
    pub role: Role,
}

/// A created token: the secret appears here only.
#[derive(Serialize, ToSchema)]
pub struct CreatedToken {
    /// Id.
    pub id: String,
    /// The bearer secret.
    pub token: String,
}

#[utoipa::path(post, path = "/api/v1/o/{org}/tokens", params(("org" = String, Path)), request_body = NewToken, responses((status = 201, body = CreatedToken), (status = 400), (status = 403)), security(("bearer" = [])))]
async fn create_token(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    ApiJson(t): ApiJson<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    c.require(Role::Owner)?;
    let name = t.name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(
            AppError::BadRequest("a token needs a name of 1 to 64 characters".into()).into(),
        );
    }
    let (id, token) =
        tokens::create(&state.db, &c.org.id, &c.user.id, name, t.role.min(c.role)).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { id, token })))
}

#[utoipa::path(post, path = "/api/v1/o/{org}/senders/{id}/revoke", params(("org" = String, Path), ("id" = String, Path)), responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn revoke_sender(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(ids): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = ids.1;
    c.require(Role::Owner)?;
    if crate::registry::revoke(&state, &c.org.id, &id).await? {
        super::pages_senders::forget_senders(&state);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::NotFound.into())
    }
}

#[utoipa::path(delete, path = "/api/v1/o/{org}/tokens/{id}", params(("org" = String, Path), ("id" = String, Path)), responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn revoke_token(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(ids): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = ids.1;
    c.require(Role::Owner)?;
    if tokens::revoke(&state.db, &c.org.id, &id).await? {
        state.auth.forget_all();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::NotFound.into())
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Strata relay API", description = "Senders, destinations, streams, members and tokens of one organization. Authenticate with `Authorization: Bearer strata_...`."),
    paths(list_senders, get_sender, put_settings, telemetry, revoke_sender, super::stream_control::start_api, super::stream_control::stop_api, super::modem_control::modem_api, super::agent_update::update_api, list_destinations, create_destination, update_destination, delete_destination, list_streams, list_members, add_member, set_member_role, remove_member, list_tokens, create_token, revoke_token),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
