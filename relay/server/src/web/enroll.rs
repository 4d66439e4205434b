//! The device side of enrollment (JSON over HTTPS, no login): a device asks
//! for codes with its CSR, then polls until the owner claimed it and collects
//! its certificate once. See `strata_proto::enrollment` for the bodies.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use strata_proto::enrollment::{
    BrokerAddress, DeviceAuthorizationRequest, DeviceAuthorizationResponse, DeviceCredentials,
    GRANT_TYPE, TokenError, TokenRequest,
};

use super::pages_account::ClientIp;
use super::{ApiError, ApiJson, AppError, AppState};
use crate::now_ms;
use crate::store::enrollments::{self, LIFETIME_MS, POLL_INTERVAL_S};

/// Largest CSR accepted (an RSA-4096 CSR is under 2 KiB of PEM).
const MAX_CSR: usize = 8 * 1024;

fn printable(s: &str, max: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control)
}

/// POST /enroll/device/authorize
pub async fn authorize(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<DeviceAuthorizationRequest>,
) -> Result<Json<DeviceAuthorizationResponse>, ApiError> {
    if let Some(ip) = ip
        && state.enroll_limiter.check_key(&ip).is_err()
    {
        return Err(AppError::TooManyRequests.into());
    }
    let f = &req.facts;
    if !printable(&f.model, 128) || !printable(&f.hostname, 128) || !printable(&f.agent_version, 64)
    {
        return Err(AppError::BadRequest(
            "facts must be 1 to 128 printable characters each".into(),
        )
        .into());
    }
    if req.csr_pem.len() > MAX_CSR {
        return Err(AppError::BadRequest("the CSR is too large".into()).into());
    }
    state
        .ca
        .check_csr(&req.csr_pem)
        .map_err(|e| AppError::BadRequest(e.to_string()))?;
    let facts = serde_json::to_string(&req.facts).expect("facts serialize");
    let (device_code, user_code) = enrollments::create(&state.db, &req.csr_pem, &facts).await?;
    let base = state.config.public_url();
    tracing::info!(model = %f.model, hostname = %f.hostname, "enrollment requested");
    Ok(Json(DeviceAuthorizationResponse {
        device_code,
        verification_uri: format!("{base}/claim"),
        verification_uri_complete: format!("{base}/claim?code={user_code}"),
        user_code,
        expires_in: (LIFETIME_MS / 1000) as u64,
        interval: POLL_INTERVAL_S as u64,
    }))
}

fn token_error(error: &str, description: &str) -> Response {
    let body = TokenError {
        error: error.into(),
        error_description: description.into(),
    };
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// POST /enroll/device/token
pub async fn token(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<Response, ApiError> {
    if req.grant_type != GRANT_TYPE {
        return Ok(token_error(
            "unsupported_grant_type",
            "grant_type must be the device code grant",
        ));
    }
    let Some(e) = enrollments::by_device_code(&state.db, &req.device_code).await? else {
        return Ok(token_error("invalid_grant", "unknown device code"));
    };
    let now = now_ms();
    match e.state.as_str() {
        "pending" if e.expires_at <= now => Ok(token_error(
            "expired_token",
            "the code expired; start enrollment again",
        )),
        "pending" => {
            let too_soon = e
                .last_poll_at
                .is_some_and(|t| now - t < POLL_INTERVAL_S * 1000 - 500);
            enrollments::polled(&state.db, &e.id, now).await?;
            if too_soon {
                Ok(token_error(
                    "slow_down",
                    "poll at most every interval seconds",
                ))
            } else {
                Ok(token_error(
                    "authorization_pending",
                    "waiting for the owner to confirm",
                ))
            }
        }
        "denied" => Ok(token_error(
            "access_denied",
            "the owner declined this device",
        )),
        // The device has the lifetime again to collect an approved certificate.
        "approved" if e.expires_at + LIFETIME_MS <= now => Ok(token_error(
            "expired_token",
            "the certificate was not collected in time",
        )),
        "approved" => {
            if !enrollments::transition(&state.db, &e.id, "approved", "issued").await? {
                return Ok(token_error("invalid_grant", "this code was already used"));
            }
            let (Some(device_id), Some(cert), Some(not_after)) =
                (e.sender_id, e.certificate_pem, e.not_after)
            else {
                return Err(AppError::Internal(anyhow::anyhow!(
                    "approved enrollment {} lacks its certificate",
                    e.id
                ))
                .into());
            };
            state.devices.admit(&device_id).await;
            tracing::info!(device = %device_id, "device collected its certificate");
            let creds = DeviceCredentials {
                device_id,
                certificate_chain_pem: cert,
                ca_pem: state.ca.ca_pem().to_string(),
                broker: BrokerAddress {
                    host: state.config.broker_host(),
                    port: state.broker_port(),
                },
                not_after_ms: not_after as u64,
            };
            Ok(Json(creds).into_response())
        }
        _ => Ok(token_error("invalid_grant", "this code was already used")),
    }
}
