//! Errors a request can end in, rendered as an HTML page for the dashboard
//! and as JSON for the API. Internal details go to the log, not the client.

use askama::Template;
use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No session: the dashboard sends the browser to the login page.
    #[error("log in first")]
    LoginRequired,
    /// No valid API token.
    #[error("a valid API token is required (Authorization: Bearer strata_...)")]
    TokenRequired,
    /// Logged in, but the role is too low.
    #[error("your role in this organization does not allow this")]
    Forbidden,
    /// No such thing here (or not in the caller's organization).
    #[error("not found")]
    NotFound,
    /// The input is wrong; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// The input conflicts with what exists (a duplicate).
    #[error("{0}")]
    Conflict(String),
    /// Missing or wrong CSRF token.
    #[error("the form expired or came from another site; reload the page and try again")]
    Csrf,
    /// Request body too large.
    #[error("the request is too large")]
    TooLarge,
    /// Too many attempts.
    #[error("too many attempts; wait a minute and try again")]
    TooManyRequests,
    /// A bug or an unavailable database.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Internal(e.into())
    }
}

impl From<askama::Error> for AppError {
    fn from(e: askama::Error) -> Self {
        AppError::Internal(e.into())
    }
}

impl AppError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::LoginRequired | AppError::TokenRequired => StatusCode::UNAUTHORIZED,
            AppError::Forbidden | AppError::Csrf => StatusCode::FORBIDDEN,
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn log(&self) {
        if let AppError::Internal(e) = self {
            tracing::error!(error = %format!("{e:#}"), "request failed");
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: String,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        self.log();
        if matches!(self, AppError::LoginRequired) {
            return Redirect::to("/login").into_response();
        }
        let status = self.status();
        let page = ErrorPage {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or(""),
            message: self.to_string(),
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (
                status,
                [(header::CONTENT_TYPE, "text/plain")],
                self.to_string(),
            )
                .into_response(),
        }
    }
}

/// An [`AppError`] rendered as `{"error": "..."}` for the JSON API.
#[derive(Debug)]
pub struct ApiError(pub AppError);

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        ApiError(e)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.log();
        let status = self.0.status();
        let mut resp = (
            status,
            Json(serde_json::json!({ "error": self.0.to_string() })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<axum::extract::rejection::FormRejection> for AppError {
    fn from(r: axum::extract::rejection::FormRejection) -> Self {
        AppError::BadRequest(r.body_text())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        ApiError(AppError::BadRequest(r.body_text()))
    }
}

/// `axum::Form` whose rejection is an HTML error page.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Form), rejection(AppError))]
pub struct Form<T>(pub T);

/// `axum::Json` whose rejection is a JSON error.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);
