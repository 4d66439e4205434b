//! Start and stop of streams, from the sender page and the API. The work is
//! in [`crate::streaming`]; these handlers check the role and translate.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiJson, AppError, AppState, Form};
use crate::auth::{ApiCaller, Caller};
use crate::store::accounts::Role;
use crate::streaming::{self, StartError};

impl From<StartError> for AppError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::NotFound => AppError::NotFound,
            StartError::BadDestination(_) | StartError::NoDestinations => {
                AppError::BadRequest(e.to_string())
            }
            StartError::Db(e) => AppError::Internal(e.into()),
            StartError::Worker(_) => AppError::Internal(anyhow::anyhow!("{e}")),
            _ => AppError::Conflict(e.to_string()),
        }
    }
}

/// POST /o/{org}/senders/{id}/start: `dest=<destination id>` for each destination.
pub async fn start_page(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, id)): Path<(String, String)>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, AppError> {
    caller.require(Role::Operator)?;
    let dests: Vec<String> = fields
        .into_iter()
        .filter(|(k, _)| k == "dest")
        .map(|(_, v)| v)
        .collect();
    let stream = streaming::start(&state, &caller.org.id, &id, &dests).await?;
    tracing::info!(org = %caller.org.id, sender = %id, %stream, user = %caller.user.email, "stream started");
    Ok(Redirect::to(&format!("/o/{}/senders/{}?started=1", caller.org.id, id)).into_response())
}

/// POST /o/{org}/streams/{id}/stop
pub async fn stop_page(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, AppError> {
    caller.require(Role::Operator)?;
    let sender = crate::store::streams::live_of(&state.db, &caller.org.id, &id)
        .await?
        .ok_or(AppError::NotFound)?
        .0;
    let reason = format!("stopped by {}", caller.user.email);
    if !streaming::stop(&state, &caller.org.id, &id, &reason).await? {
        return Err(AppError::NotFound);
    }
    Ok(Redirect::to(&format!("/o/{}/senders/{}", caller.org.id, sender)).into_response())
}

/// Which destinations a stream goes to.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Destination ids of the organization.
    pub destinations: Vec<String>,
}

/// A started stream.
#[derive(Serialize, ToSchema)]
pub struct Started {
    /// Stream id.
    pub id: String,
}

/// POST /api/v1/o/{org}/senders/{id}/streams
#[utoipa::path(post, path = "/api/v1/o/{org}/senders/{id}/streams", params(("org" = String, Path), ("id" = String, Path)), request_body = StartRequest, responses((status = 201, body = Started), (status = 400), (status = 403), (status = 404), (status = 409)), security(("bearer" = [])))]
pub async fn start_api(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(ids): Path<(String, String)>,
    ApiJson(req): ApiJson<StartRequest>,
) -> Result<(StatusCode, Json<Started>), ApiError> {
    c.require(Role::Operator)?;
    let id = streaming::start(&state, &c.org.id, &ids.1, &req.destinations)
        .await
        .map_err(AppError::from)?;
    Ok((StatusCode::CREATED, Json(Started { id })))
}

/// POST /api/v1/o/{org}/streams/{id}/stop
#[utoipa::path(post, path = "/api/v1/o/{org}/streams/{id}/stop", params(("org" = String, Path), ("id" = String, Path)), responses((status = 204), (status = 403), (status = 404)), security(("bearer" = [])))]
pub async fn stop_api(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(ids): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    c.require(Role::Operator)?;
    let reason = format!("stopped through the API by {}", c.user.email);
    if streaming::stop(&state, &c.org.id, &ids.1, &reason).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::NotFound.into())
    }
}
