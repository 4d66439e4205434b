//! Server-sent events that keep pages live without reloading: the htmx SSE
//! extension swaps the fragments these streams send. Each stream re-checks
//! the caller's membership, so a removed member stops receiving.

use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;

use super::pages_senders::{
    ChartFragment, PageQuery, RowsFragment, SenderView, StatusFragment, page_rows,
};
use super::{AppError, AppState};
use crate::auth::Caller;
use crate::now_ms;
use crate::store::senders;

/// How often the sender list is re-sent.
const LIST_EVERY: Duration = Duration::from_secs(2);
/// How often a sender's status and chart are re-sent.
const DETAIL_EVERY: Duration = Duration::from_secs(1);

/// Whether the stream may go on: the session is still live (not logged out,
/// not ended by a password change) and still a member of the organization.
async fn still_member(state: &AppState, caller: &Caller) -> bool {
    let Some(session) = caller.session.as_deref() else {
        return false;
    };
    match state.auth.session(&state.db, session).await {
        Ok(Some(entry)) => entry.memberships.iter().any(|(o, _)| o.id == caller.org.id),
        _ => false,
    }
}

async fn rows_event(state: &AppState, org: &str, page: i64) -> Result<Event, AppError> {
    let html = RowsFragment {
        org: org.to_string(),
        senders: page_rows(state, org, page).await?.0,
    }
    .render()?;
    Ok(Event::default().event("senders").data(html))
}

/// GET /o/{org}/senders/live: event `senders` with the table rows.
pub async fn senders_rows(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<PageQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let page = q.page();
    let stream = futures_util::stream::unfold((state, caller), move |(state, caller)| async move {
        tokio::time::sleep(LIST_EVERY).await;
        if !still_member(&state, &caller).await {
            return None;
        }
        let ev = rows_event(&state, &caller.org.id, page).await.ok()?;
        Some((Ok(ev), (state, caller)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn detail_events(state: &AppState, org: &str, id: &str) -> Result<Vec<Event>, AppError> {
    let sender = super::pages_senders::cached_sender(state, org, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let status = StatusFragment {
        sender: SenderView::of(&sender, now_ms()),
        agent: state.devices.agents.get(id),
    }
    .render()?;
    let chart = ChartFragment::load(state, org, id).await?.to_string();
    Ok(vec![
        Event::default().event("status").data(status),
        Event::default().event("chart").data(chart),
    ])
}

/// GET /o/{org}/senders/{id}/live: events `status` and `chart`.
pub async fn sender_detail(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, id)): Path<(String, String)>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    senders::get(&state.db, &caller.org.id, &id)
        .await?
        .ok_or(AppError::NotFound)?;
    let stream =
        futures_util::stream::unfold((state, caller, id), |(state, caller, id)| async move {
            tokio::time::sleep(DETAIL_EVERY).await;
            if !still_member(&state, &caller).await {
                return None;
            }
            let events = detail_events(&state, &caller.org.id, &id).await.ok()?;
            Some((
                futures_util::stream::iter(events.into_iter().map(Ok)),
                (state, caller, id),
            ))
        });
    use futures_util::StreamExt;
    Ok(Sse::new(stream.flatten()).keep_alive(KeepAlive::default()))
}
