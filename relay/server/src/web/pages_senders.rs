//! Sender pages: the list (live online state) and one sender (links, modems,
//! inputs, encoder settings, live per-link chart).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::chart::{self, Chart};
use super::layout::{Nav, nav};
use super::{AppError, AppState, Form};
use crate::auth::Caller;
use crate::now_ms;
use crate::registry::{self, Delivery};
use crate::store::accounts::Role;
use crate::store::senders::{
    self, Codec, EncoderSettings, FRAME_RATES, HEIGHTS, Inventory, SenderRow,
};

/// Window of the live chart.
pub const CHART_WINDOW_MS: i64 = 5 * 60_000;
/// The chart plots one averaged point per link per bucket (150 over the window).
pub const CHART_BUCKET_MS: i64 = 2_000;

/// A sender as a row of the list.
pub struct SenderView {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Online now.
    pub online: bool,
    /// "12 s ago", "never".
    pub last_seen: String,
    /// Whether a stream is running.
    pub streaming: bool,
    /// Whether the owner revoked it.
    pub revoked: bool,
}

impl SenderView {
    /// The row for a stored sender.
    pub fn of(s: &SenderRow, now: i64) -> SenderView {
        SenderView {
            id: s.id.clone(),
            name: s.name.clone(),
            online: s.online != 0,
            last_seen: ago(now, s.last_seen_at),
            streaming: s.current_stream_id.is_some(),
            revoked: s.revoked_at.is_some(),
        }
    }
}

/// "12 s ago" style age of a timestamp.
pub fn ago(now: i64, ts: Option<i64>) -> String {
    let Some(ts) = ts else { return "never".into() };
    let s = (now - ts).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

#[derive(Template)]
#[template(path = "senders.html")]
struct ListPage {
    nav: Nav,
    org: String,
    senders: Vec<SenderView>,
    /// 1-based page shown.
    page: i64,
    /// Number of pages.
    pages: i64,
    /// Senders in the organization.
    total: i64,
}

/// Senders per page of the list.
pub const PAGE_SIZE: i64 = 50;

/// Query of the sender list: `?page=N` (1-based).
#[derive(Deserialize)]
pub struct PageQuery {
    page: Option<u32>,
}

impl PageQuery {
    /// The 1-based page asked for.
    pub fn page(&self) -> i64 {
        i64::from(self.page.unwrap_or(1).max(1))
    }
}

/// A page of the organization's senders and their total, at most
/// [`super::LIST_TTL`] old: every viewer of the list in that second shares one
/// pair of queries. Changes this process makes drop the cache at once.
pub async fn sender_page(
    state: &AppState,
    org: &str,
    limit: i64,
    offset: i64,
) -> Result<std::sync::Arc<(Vec<SenderRow>, i64)>, AppError> {
    state
        .sender_pages
        .try_get_with((org.to_string(), limit, offset), async {
            let total = senders::count(&state.db, org).await?;
            let rows = senders::list(&state.db, org, limit, offset).await?;
            Ok::<_, sqlx::Error>(std::sync::Arc::new((rows, total)))
        })
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")))
}

/// One sender for the pages that show it, at most [`super::LIST_TTL`] old.
pub async fn cached_sender(
    state: &AppState,
    org: &str,
    id: &str,
) -> Result<Option<std::sync::Arc<SenderRow>>, AppError> {
    let (db, org_id, sender_id) = (state.db.clone(), org.to_string(), id.to_string());
    state
        .sender_rows
        .get((org.to_string(), id.to_string()), move || {
            let (db, org_id, sender_id) = (db.clone(), org_id.clone(), sender_id.clone());
            async move {
                Ok::<_, sqlx::Error>(
                    senders::get(&db, &org_id, &sender_id)
                        .await?
                        .map(std::sync::Arc::new),
                )
            }
        })
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")))
}

/// Drops every cached sender view (after this process changed a sender).
pub fn forget_senders(state: &super::Relay) {
    state.sender_pages.invalidate_all();
    state.sender_rows.invalidate_all();
    state.api_sender_pages.invalidate_all();
}

/// One page of the organization's senders as rows, and the total.
pub async fn page_rows(
    state: &AppState,
    org: &str,
    page: i64,
) -> Result<(Vec<SenderView>, i64), AppError> {
    let now = now_ms();
    let cached = sender_page(state, org, PAGE_SIZE, (page - 1) * PAGE_SIZE).await?;
    Ok((
        cached.0.iter().map(|s| SenderView::of(s, now)).collect(),
        cached.1,
    ))
}

/// The rows fragment the list page's live stream swaps in.
#[derive(Template)]
#[template(path = "senders_rows.html")]
pub struct RowsFragment {
    /// Organization id, for links.
    pub org: String,
    /// The rows.
    pub senders: Vec<SenderView>,
}

/// GET /o/{org}/senders
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<PageQuery>,
) -> Result<Response, AppError> {
    let (mut rows, mut total) = page_rows(&state, &caller.org.id, q.page()).await?;
    let pages = ((total + PAGE_SIZE - 1) / PAGE_SIZE).max(1);
    let page_no = q.page().min(pages);
    if page_no != q.page() {
        // Asked past the end: show the last page.
        (rows, total) = page_rows(&state, &caller.org.id, page_no).await?;
    }
    let page = ListPage {
        nav: nav(&state, &caller, "senders")?,
        org: caller.org.id.clone(),
        senders: rows,
        page: page_no,
        pages,
        total,
    };
    Ok(Html(page.render()?).into_response())
}

/// The status fragment of the sender page.
#[derive(Template)]
#[template(path = "sender_status.html")]
pub struct StatusFragment {
    /// The sender.
    pub sender: SenderView,
    /// Its agent's version and last update.
    pub agent: crate::registry::agents::AgentState,
}

/// The chart fragment of the sender page.
#[derive(Template)]
#[template(path = "chart.html")]
pub struct ChartFragment {
    /// Laid-out chart.
    pub chart: Chart,
}

impl ChartFragment {
    /// The rendered chart of a sender's last minutes. Every viewer of a
    /// sender sees the same chart: one query and one rendering per second
    /// serve them all, and nobody waits for them (see `fresh`).
    pub async fn load(
        state: &AppState,
        org: &str,
        sender: &str,
    ) -> Result<std::sync::Arc<String>, AppError> {
        let key = (org.to_string(), sender.to_string());
        let (state2, org_id, sender_id) = (state.clone(), org.to_string(), sender.to_string());
        state
            .charts
            .get(key, move || {
                let (state, org_id, sender_id) =
                    (state2.clone(), org_id.clone(), sender_id.clone());
                async move {
                    let now = now_ms();
                    let since = now - CHART_WINDOW_MS;
                    // Full rate from memory where the registry has it; the
                    // database's averaged history before that (after a restart).
                    let recent = state.devices.telemetry.since(&sender_id, since);
                    let db_until = recent.first().map_or(i64::MAX, |s| s.ts);
                    let mut samples: Vec<_> = senders::telemetry_buckets(
                        &state.db,
                        &org_id,
                        &sender_id,
                        since,
                        CHART_BUCKET_MS,
                    )
                    .await?
                    .into_iter()
                    .filter(|s| s.ts < db_until)
                    .collect();
                    samples.extend(recent);
                    let html = ChartFragment {
                        chart: chart::build(&samples, now, CHART_WINDOW_MS),
                    }
                    .render()?;
                    Ok::<_, AppError>(std::sync::Arc::new(html))
                }
            })
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")))
    }
}

#[derive(Template)]
#[template(path = "sender.html")]
/// The sender page.
pub(super) struct DetailPage {
    nav: Nav,
    status: StatusFragment,
    /// Rendered chart fragment.
    chart: std::sync::Arc<String>,
    inventory: Inventory,
    settings: EncoderSettings,
    /// (id, label, selected)
    input_options: Vec<(String, String, bool)>,
    /// (value, selected)
    height_options: Vec<(u32, bool)>,
    /// (value, selected)
    fps_options: Vec<(u32, bool)>,
    message: String,
    error: String,
    /// The running stream, if any.
    stream_id: Option<String>,
    /// The organization's destinations, to choose from when starting.
    destinations: Vec<crate::store::destinations::Destination>,
    /// Agent releases the relay has: (target/version, label).
    releases: Vec<(String, String)>,
}

/// How long saving settings waits for the device to confirm them.
const APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Query of the sender page.
#[derive(Deserialize)]
pub struct DetailQuery {
    /// What became of saved settings: applied, offline, noanswer.
    saved: Option<String>,
    /// Set after a revocation.
    revoked: Option<u8>,
    /// Set after a stream started.
    started: Option<u8>,
}

/// The sender page with a message or an error.
pub(super) async fn detail_page(
    state: &AppState,
    caller: &Caller,
    id: &str,
    settings: Option<EncoderSettings>,
    message: &str,
    error: &str,
) -> Result<DetailPage, AppError> {
    let sender = cached_sender(state, &caller.org.id, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let inventory = sender.inventory();
    let settings = settings.unwrap_or_else(|| sender.settings());
    let mut input_options = vec![(
        "test".to_string(),
        "Test pattern with tone".to_string(),
        settings.input == "test",
    )];
    input_options.extend(inventory.inputs.iter().map(|i| {
        (
            i.id.clone(),
            format!("{} ({})", i.name, i.kind),
            i.id == settings.input,
        )
    }));
    Ok(DetailPage {
        nav: nav(state, caller, "senders")?,
        status: StatusFragment {
            sender: SenderView::of(&sender, now_ms()),
            agent: state.devices.agents.get(id),
        },
        // Only operators see the update form.
        releases: if caller
            .require(crate::store::accounts::Role::Operator)
            .is_ok()
        {
            state.releases.list(&state.data_dir).to_vec()
        } else {
            Vec::new()
        }
        .into_iter()
        .map(|r| {
            (
                format!("{}/{}", r.target, r.version),
                format!("{} ({})", r.version, r.target),
            )
        })
        .collect(),
        chart: ChartFragment::load(state, &caller.org.id, id).await?,
        input_options,
        height_options: HEIGHTS.iter().map(|&h| (h, h == settings.height)).collect(),
        fps_options: FRAME_RATES
            .iter()
            .map(|&f| (f, f == settings.fps))
            .collect(),
        inventory,
        settings,
        message: message.into(),
        error: error.into(),
        stream_id: sender.current_stream_id.clone(),
        destinations: crate::store::destinations::list(&state.db, &caller.org.id).await?,
    })
}

/// GET /o/{org}/senders/{id}
pub async fn detail(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, id)): Path<(String, String)>,
    Query(q): Query<DetailQuery>,
) -> Result<Response, AppError> {
    let msg = match (q.saved.as_deref(), q.revoked) {
        (_, Some(_)) => "Device revoked: it can no longer connect.",
        _ if q.started.is_some() => "Stream started.",
        (Some("applied"), _) => "Settings saved and applied on the device.",
        (Some("offline"), _) => {
            "Settings saved. The device is offline and gets them when it connects."
        }
        (Some(_), _) => "Settings saved, but the device did not confirm them yet.",
        _ => "",
    };
    let page = detail_page(&state, &caller, &id, None, msg, "").await?;
    Ok(Html(page.render()?).into_response())
}

/// GET /o/{org}/senders/{id}/settings: a reload of a refused form goes back to the sender.
pub async fn settings_redirect(Path((org, id)): Path<(String, String)>) -> Redirect {
    Redirect::to(&format!("/o/{org}/senders/{id}"))
}

/// The encoder settings form.
#[derive(Deserialize)]
pub struct SettingsForm {
    input: String,
    codec: String,
    height: u32,
    fps: u32,
    min_kbps: u32,
    max_kbps: u32,
    audio: Option<String>,
}

/// POST /o/{org}/senders/{id}/settings
pub async fn save_settings(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, id)): Path<(String, String)>,
    Form(form): Form<SettingsForm>,
) -> Result<Response, AppError> {
    caller.require(Role::Operator)?;
    let sender = senders::get(&state.db, &caller.org.id, &id)
        .await?
        .ok_or(AppError::NotFound)?;
    let codec = match form.codec.as_str() {
        "h264" => Codec::H264,
        "h265" => Codec::H265,
        _ => return Err(AppError::BadRequest("codec must be h264 or h265".into())),
    };
    let settings = EncoderSettings {
        input: form.input,
        codec,
        height: form.height,
        fps: form.fps,
        min_kbps: form.min_kbps,
        max_kbps: form.max_kbps,
        audio: form.audio.is_some(),
    };
    if let Err(e) = settings.validate(&sender.inventory()) {
        let page = detail_page(&state, &caller, &id, Some(settings), "", &e).await?;
        return Ok((StatusCode::BAD_REQUEST, Html(page.render()?)).into_response());
    }
    senders::set_settings(&state.db, &caller.org.id, &id, &settings).await?;
    forget_senders(&state);
    tracing::info!(org = %caller.org.id, sender = %id, user = %caller.user.email, "encoder settings changed");
    let saved = match registry::apply_settings(&state, &id, &settings, APPLY_WAIT).await {
        Delivery::Applied => "applied",
        Delivery::Offline => "offline",
        Delivery::NoAnswer(_) => "noanswer",
        Delivery::Refused(why) => {
            let error = format!("Settings saved, but the device could not apply them: {why}");
            let page = detail_page(&state, &caller, &id, Some(settings), "", &error).await?;
            return Ok(Html(page.render()?).into_response());
        }
    };
    Ok(Redirect::to(&format!(
        "/o/{}/senders/{}?saved={saved}",
        caller.org.id, id
    ))
    .into_response())
}

/// The revocation form.
#[derive(Deserialize)]
pub struct RevokeForm {
    confirm: Option<String>,
}

/// POST /o/{org}/senders/{id}/revoke: the device is refused from now on.
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path((_, id)): Path<(String, String)>,
    Form(form): Form<RevokeForm>,
) -> Result<Response, AppError> {
    caller.require(Role::Owner)?;
    if form.confirm.is_none() {
        return Err(AppError::BadRequest(
            "tick the box to confirm the revocation".into(),
        ));
    }
    if !registry::revoke(&state, &caller.org.id, &id).await? {
        return Err(AppError::NotFound);
    }
    forget_senders(&state);
    tracing::info!(org = %caller.org.id, sender = %id, user = %caller.user.email, "device revoked");
    Ok(Redirect::to(&format!("/o/{}/senders/{}?revoked=1", caller.org.id, id)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(ago(10_000, None), "never");
        assert_eq!(ago(10_000, Some(0)), "10 s ago");
        assert_eq!(ago(600_000, Some(0)), "10 min ago");
        assert_eq!(ago(7_200_000, Some(0)), "2 h ago");
        assert_eq!(ago(0, Some(5)), "0 s ago");
    }
}
