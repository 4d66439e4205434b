//! Agent self-update from the dashboard and the API, and the release
//! download devices fetch. The relay sends the device an `Update` command
//! naming a stored release ([`crate::releases`]); the device answers at
//! once, downloads from [`download`], checks the vendor's signature and
//! reports progress as events, which the sender page shows live.

use askama::Template;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use strata_proto::message::{CommandBody, Outcome};
use utoipa::ToSchema;

use super::pages_senders::detail_page;
use super::{ApiError, ApiJson, AppError, AppState, Form};
use crate::auth::{ApiCaller, Caller};
use crate::registry::agents::Update;
use crate::registry::{CommandError, REPLY_TIMEOUT};
use crate::releases;
use crate::store::accounts::Role;
use crate::store::senders;

/// Which release to install (JSON).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// Release version.
    version: String,
    /// Target triple of the device's agent (`aarch64-unknown-linux-gnu`, ...).
    target: String,
}

/// The page's form: `release` is `target/version`.
#[derive(Deserialize)]
pub struct UpdateForm {
    release: String,
    #[serde(default, rename = "_csrf")]
    _csrf: Option<String>,
}

/// Sends the update command: `Ok` once the device accepted it, or why not.
async fn run(
    state: &AppState,
    org: &str,
    id: &str,
    target: &str,
    version: &str,
) -> Result<Result<(), String>, AppError> {
    senders::get(&state.db, org, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let release = releases::get(&state.data_dir, target, version).ok_or(AppError::NotFound)?;
    let url = format!(
        "{}/agent/releases/{}/{}/strata-agent",
        state.config.public_url(),
        release.target,
        release.version
    );
    let body = CommandBody::Update {
        version: release.version.clone(),
        url,
        sha256: release.sha256.clone(),
        signature: release.signature.clone(),
    };
    Ok(match state.devices.command(id, body, REPLY_TIMEOUT).await {
        Ok(Outcome::Ok) => {
            state.devices.agents.update(
                id,
                Update::Requested {
                    version: release.version,
                },
            );
            Ok(())
        }
        Ok(Outcome::Failed(why)) => Err(format!("The device refused: {why}")),
        Err(CommandError::Offline) => Err("The device is offline; updates need it online.".into()),
        Err(e) => Err(format!("No answer from the device: {e}")),
    })
}

/// POST /o/{org}/senders/{id}/update
pub async fn update_page(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, id)): Path<(String, String)>,
    Form(form): Form<UpdateForm>,
) -> Result<Response, AppError> {
    caller.require(Role::Operator)?;
    let (target, version) = form
        .release
        .split_once('/')
        .ok_or_else(|| AppError::BadRequest("choose a release".into()))?;
    let outcome = run(&state, &caller.org.id, &id, target, version).await?;
    tracing::info!(org = %caller.org.id, sender = %id, %version, %target, user = %caller.user.email, ok = outcome.is_ok(), "agent update");
    let (message, error) = match outcome {
        Ok(()) => (
            format!(
                "Update to {version} started: the device downloads and checks it, then restarts."
            ),
            String::new(),
        ),
        Err(why) => (String::new(), why),
    };
    let page = detail_page(&state, &caller, &id, None, &message, &error).await?;
    Ok(Html(page.render()?).into_response())
}

/// POST /api/v1/o/{org}/senders/{id}/update: 202 once the device accepted
/// the update (progress then shows in the sender's `agent`); 404 for an
/// unknown release; 409 with the reason when the device refused, is
/// offline or silent.
#[utoipa::path(post, path = "/api/v1/o/{org}/senders/{id}/update", params(("org" = String, Path), ("id" = String, Path)), request_body = UpdateRequest, responses((status = 202), (status = 403), (status = 404), (status = 409)), security(("bearer" = [])))]
pub async fn update_api(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(ids): Path<(String, String)>,
    ApiJson(req): ApiJson<UpdateRequest>,
) -> Result<StatusCode, ApiError> {
    let (_, id) = ids;
    c.require(Role::Operator)?;
    let outcome = run(&state, &c.org.id, &id, &req.target, &req.version).await?;
    tracing::info!(org = %c.org.id, sender = %id, version = %req.version, user = %c.user.email, ok = outcome.is_ok(), "agent update (API)");
    match outcome {
        Ok(()) => Ok(StatusCode::ACCEPTED),
        Err(why) => Err(AppError::Conflict(why).into()),
    }
}

/// GET /agent/releases/{target}/{version}/strata-agent: the binary,
/// streamed. Public: releases are signed, not secret.
pub async fn download(
    State(state): State<AppState>,
    Path((target, version)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let path = releases::binary(&state.data_dir, &target, &version).ok_or(AppError::NotFound)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| AppError::NotFound)?;
    let len = file.metadata().await.map_err(anyhow::Error::from)?.len();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
}
