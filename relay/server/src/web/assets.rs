//! Static assets compiled into the binary: vendored htmx and its SSE
//! extension (no CDN), and the stylesheet.

use axum::extract::Path;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppError;

const FILES: &[(&str, &str, &[u8])] = &[
    (
        "htmx-2.0.11.min.js",
        "text/javascript",
        include_bytes!("../../../../web-templates/static/htmx-2.0.11.min.js"),
    ),
    (
        "htmx-ext-sse-2.2.4.min.js",
        "text/javascript",
        include_bytes!("../../../../web-templates/static/htmx-ext-sse-2.2.4.min.js"),
    ),
    (
        "app.css",
        "text/css",
        include_bytes!("../../../../web-templates/static/app.css"),
    ),
];

/// Serves one asset; names carry versions, so they may be cached for long.
pub async fn serve(Path(file): Path<String>) -> Result<impl IntoResponse, AppError> {
    let (_, mime, body) = FILES
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or(AppError::NotFound)?;
    Ok((
        [
            (header::CONTENT_TYPE, *mime),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        *body,
    ))
}
