//! The owner's modem actions, on the sender page and in the API: enable or
//! disable a modem, set its APN, unlock its SIM. Each is a command to the
//! device, which answers with ModemManager's outcome; the page shows that
//! answer. A PIN goes to the device only and is never logged or shown.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use strata_proto::message::{CommandBody, Outcome, Secret, check_apn, check_pin};
use utoipa::ToSchema;

use super::pages_senders::detail_page;
use super::{ApiError, ApiJson, AppError, AppState, Form};
use crate::auth::{ApiCaller, Caller};
use crate::registry::{CommandError, REPLY_TIMEOUT};
use crate::store::accounts::Role;
use crate::store::senders;

/// One modem action (form fields or JSON).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModemForm {
    /// `enable`, `disable`, `apn` or `pin`.
    action: String,
    /// The APN, for `apn`.
    #[serde(default)]
    apn: String,
    /// The SIM PIN, for `pin`; never stored or logged.
    #[serde(default)]
    pin: String,
    /// The page's CSRF field (checked by the guard; ignored here).
    #[serde(default, rename = "_csrf")]
    #[schema(ignore)]
    _csrf: Option<String>,
}

/// Sends the action to the device: `Ok` with the confirmation, or why not.
async fn run(
    state: &AppState,
    org: &str,
    id: &str,
    modem: String,
    form: ModemForm,
) -> Result<Result<&'static str, String>, AppError> {
    let sender = senders::get(&state.db, org, id)
        .await?
        .ok_or(AppError::NotFound)?;
    if !sender.inventory().modems.iter().any(|m| m.id == modem) {
        return Err(AppError::NotFound);
    }
    let (body, done) = command(modem, form).map_err(AppError::BadRequest)?;
    Ok(match state.devices.command(id, body, REPLY_TIMEOUT).await {
        Ok(Outcome::Ok) => Ok(done),
        Ok(Outcome::Failed(why)) => Err(format!("The device refused: {why}")),
        Err(CommandError::Offline) => {
            Err("The device is offline; modem actions need it online.".into())
        }
        Err(e) => Err(format!("No answer from the device: {e}")),
    })
}

/// What an action becomes, or why it is refused before reaching the device.
fn command(modem: String, form: ModemForm) -> Result<(CommandBody, &'static str), String> {
    Ok(match form.action.as_str() {
        "enable" | "disable" => (
            CommandBody::SetModemEnabled {
                modem,
                enabled: form.action == "enable",
            },
            "Modem switched",
        ),
        "apn" => {
            let apn = form.apn.trim().to_string();
            check_apn(&apn)?;
            (CommandBody::SetApn { modem, apn }, "APN set")
        }
        "pin" => {
            check_pin(&form.pin)?;
            (
                CommandBody::UnlockSim {
                    modem,
                    pin: Secret(form.pin),
                },
                "SIM unlocked",
            )
        }
        other => return Err(format!("unknown modem action {other:?}")),
    })
}

/// POST /o/{org}/senders/{id}/modems/{modem}
pub async fn modem_action(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, id, modem)): Path<(String, String, String)>,
    Form(form): Form<ModemForm>,
) -> Result<Response, AppError> {
    caller.require(Role::Operator)?;
    let (message, error) = match run(&state, &caller.org.id, &id, modem.clone(), form).await {
        Ok(Ok(done)) => (format!("{done}: the device confirmed."), String::new()),
        Ok(Err(why)) => (String::new(), why),
        Err(AppError::BadRequest(why)) => {
            let page = detail_page(&state, &caller, &id, None, "", &why).await?;
            return Ok((StatusCode::BAD_REQUEST, Html(page.render()?)).into_response());
        }
        Err(e) => return Err(e),
    };
    tracing::info!(org = %caller.org.id, sender = %id, %modem, user = %caller.user.email, ok = error.is_empty(), "modem action");
    let page = detail_page(&state, &caller, &id, None, &message, &error).await?;
    Ok(Html(page.render()?).into_response())
}

/// POST /api/v1/o/{org}/senders/{id}/modems/{modem}: 204 once the device
/// confirmed; 409 with the reason when it refused, is offline or silent.
#[utoipa::path(post, path = "/api/v1/o/{org}/senders/{id}/modems/{modem}", params(("org" = String, Path), ("id" = String, Path), ("modem" = String, Path)), request_body = ModemForm, responses((status = 204), (status = 400), (status = 403), (status = 404), (status = 409)), security(("bearer" = [])))]
pub async fn modem_api(
    State(state): State<AppState>,
    ApiCaller(c): ApiCaller,
    Path(ids): Path<(String, String, String)>,
    ApiJson(form): ApiJson<ModemForm>,
) -> Result<StatusCode, ApiError> {
    let (_, id, modem) = ids;
    c.require(Role::Operator)?;
    let outcome = run(&state, &c.org.id, &id, modem.clone(), form).await?;
    tracing::info!(org = %c.org.id, sender = %id, %modem, user = %c.user.email, ok = outcome.is_ok(), "modem action (API)");
    match outcome {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(why) => Err(AppError::Conflict(why).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(action: &str, apn: &str, pin: &str) -> ModemForm {
        ModemForm {
            action: action.into(),
            apn: apn.into(),
            pin: pin.into(),
            _csrf: None,
        }
    }

    #[test]
    fn actions_are_checked_before_they_reach_the_device() {
        assert!(command("m".into(), form("enable", "", "")).is_ok());
        assert!(command("m".into(), form("apn", "internet", "")).is_ok());
        assert!(command("m".into(), form("apn", "has space", "")).is_err());
        assert!(command("m".into(), form("pin", "", "12a4")).is_err());
        assert!(command("m".into(), form("pin", "", "123")).is_err());
        assert!(command("m".into(), form("reboot", "", "")).is_err());
        let (body, _) = command("m".into(), form("pin", "", "1234")).unwrap();
        assert!(!format!("{body:?}").contains("1234"));
    }
}
