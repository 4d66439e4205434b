//! Streams: one per broadcast of a sender, live or ended, with the health of
//! each destination it was forwarded to.

use serde::Serialize;

use crate::db::Db;
use crate::{new_id, now_ms};

/// A stream as listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Stream {
    /// Id.
    pub id: String,
    /// The sender.
    pub sender_id: String,
    /// Its name.
    pub sender_name: String,
    /// starting, live, stopping, ended, failed.
    pub state: String,
    /// Start, ms since the epoch.
    pub started_at: i64,
    /// End, ms since the epoch.
    pub ended_at: Option<i64>,
    /// Why it ended.
    pub end_reason: Option<String>,
}

/// One destination of a stream.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct StreamOutput {
    /// The stream.
    pub stream_id: String,
    /// Destination name at the time.
    pub destination_name: String,
    /// connecting, live, reconnecting, failed, stopped.
    pub state: String,
    /// Bytes forwarded.
    pub bytes: i64,
    /// Reconnections so far.
    pub reconnects: i64,
    /// Last error, if any.
    pub last_error: Option<String>,
}

/// The organization's streams, live ones first, then the most recent.
pub async fn list(db: &Db, org_id: &str, limit: i64) -> sqlx::Result<Vec<Stream>> {
    sqlx::query_as(
        "SELECT st.id, st.sender_id, se.name AS sender_name, st.state, st.started_at, st.ended_at, st.end_reason \
         FROM streams st JOIN senders se ON se.id = st.sender_id WHERE st.org_id = $1 \
         ORDER BY CASE WHEN st.ended_at IS NULL THEN 0 ELSE 1 END, st.started_at DESC LIMIT $2",
    )
    .bind(org_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The outputs of the organization's streams listed by [`list`].
pub async fn outputs(db: &Db, org_id: &str, limit: i64) -> sqlx::Result<Vec<StreamOutput>> {
    sqlx::query_as(
        "SELECT o.stream_id, o.destination_name, o.state, o.bytes, o.reconnects, o.last_error \
         FROM stream_outputs o JOIN streams st ON st.id = o.stream_id WHERE st.org_id = $1 \
         AND o.stream_id IN (SELECT id FROM streams WHERE org_id = $1 \
           ORDER BY CASE WHEN ended_at IS NULL THEN 0 ELSE 1 END, started_at DESC LIMIT $2) \
         ORDER BY o.destination_name",
    )
    .bind(org_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Opens a stream record for a sender with its destinations (the stream
/// lifecycle calls this when it starts a receiver).
pub async fn create(
    db: &Db,
    org_id: &str,
    sender_id: &str,
    destinations: &[(String, String)],
) -> sqlx::Result<String> {
    let id = new_id();
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO streams (id, org_id, sender_id, state, started_at) VALUES ($1, $2, $3, 'starting', $4)")
        .bind(&id)
        .bind(org_id)
        .bind(sender_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
    for (dest_id, dest_name) in destinations {
        sqlx::query("INSERT INTO stream_outputs (stream_id, destination_id, destination_name, state) VALUES ($1, $2, $3, 'connecting')")
            .bind(&id)
            .bind(dest_id)
            .bind(dest_name)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE senders SET current_stream_id = $1 WHERE org_id = $2 AND id = $3")
        .bind(&id)
        .bind(org_id)
        .bind(sender_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// Closes a stream record.
pub async fn finish(
    db: &Db,
    org_id: &str,
    stream_id: &str,
    state: &str,
    reason: &str,
) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE streams SET state = $1, ended_at = $2, end_reason = $3 WHERE org_id = $4 AND id = $5")
        .bind(state)
        .bind(now_ms())
        .bind(reason)
        .bind(org_id)
        .bind(stream_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE senders SET current_stream_id = NULL WHERE org_id = $1 AND current_stream_id = $2",
    )
    .bind(org_id)
    .bind(stream_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Records the worker of a starting stream.
pub async fn set_worker(
    db: &Db,
    stream_id: &str,
    ports: &[u16],
    pid: u32,
    dir: &str,
) -> sqlx::Result<()> {
    let ports = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    sqlx::query("UPDATE streams SET ports = $1, worker_pid = $2, worker_dir = $3 WHERE id = $4")
        .bind(ports)
        .bind(i64::from(pid))
        .bind(dir)
        .bind(stream_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Moves a stream to another state (starting -> live).
pub async fn set_state(db: &Db, stream_id: &str, state: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE streams SET state = $1 WHERE id = $2 AND ended_at IS NULL")
        .bind(state)
        .bind(stream_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Updates one output's health from the worker's stats.
pub async fn set_output(
    db: &Db,
    stream_id: &str,
    destination_id: &str,
    state: &str,
    bytes: i64,
    reconnects: i64,
    last_error: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE stream_outputs SET state = $1, bytes = $2, reconnects = $3, last_error = COALESCE($4, last_error) \
         WHERE stream_id = $5 AND destination_id = $6",
    )
    .bind(state)
    .bind(bytes)
    .bind(reconnects)
    .bind(last_error)
    .bind(stream_id)
    .bind(destination_id)
    .execute(db)
    .await?;
    Ok(())
}

/// A stream that has not ended, with its worker (for re-adoption).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Unfinished {
    /// Stream id.
    pub id: String,
    /// Organization.
    pub org_id: String,
    /// Sender.
    pub sender_id: String,
    /// RIST ports, comma-separated.
    pub ports: Option<String>,
    /// Worker process id.
    pub worker_pid: Option<i64>,
    /// Worker directory.
    pub worker_dir: Option<String>,
}

/// Every stream that has not ended, in any organization.
pub async fn unfinished(db: &Db) -> sqlx::Result<Vec<Unfinished>> {
    sqlx::query_as(
        "SELECT id, org_id, sender_id, ports, worker_pid, worker_dir FROM streams WHERE ended_at IS NULL",
    )
    .fetch_all(db)
    .await
}

/// The organization's stream, if it has not ended: (sender id, state).
pub async fn live_of(
    db: &Db,
    org_id: &str,
    stream_id: &str,
) -> sqlx::Result<Option<(String, String)>> {
    sqlx::query_as(
        "SELECT sender_id, state FROM streams WHERE org_id = $1 AND id = $2 AND ended_at IS NULL",
    )
    .bind(org_id)
    .bind(stream_id)
    .fetch_optional(db)
    .await
}
