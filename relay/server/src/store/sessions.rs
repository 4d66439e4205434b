//! Browser sessions: a random token in an HttpOnly cookie, its SHA-256 in the
//! database, a fixed lifetime.

use super::accounts::User;
use super::{new_secret, token_hash};
use crate::db::Db;
use crate::now_ms;

/// Starts a session and returns the cookie value (the only copy of the secret).
pub async fn create(db: &Db, user_id: &str, hours: u32) -> sqlx::Result<String> {
    let token = new_secret("");
    let now = now_ms();
    sqlx::query("INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(token_hash(&token))
        .bind(user_id)
        .bind(now)
        .bind(now + i64::from(hours) * 3_600_000)
        .execute(db)
        .await?;
    Ok(token)
}

/// The user a live session belongs to, and when the session expires.
pub async fn user(db: &Db, token: &str) -> sqlx::Result<Option<(User, i64)>> {
    let row: Option<(String, String, i64)> = sqlx::query_as(
        "SELECT u.id, u.email, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id \
         WHERE s.token_hash = $1 AND s.expires_at > $2",
    )
    .bind(token_hash(token))
    .bind(now_ms())
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(id, email, exp)| (User { id, email }, exp)))
}

/// Ends a session.
pub async fn delete(db: &Db, token: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
        .bind(token_hash(token))
        .execute(db)
        .await?;
    Ok(())
}

/// Ends every session of a user (after a password change).
pub async fn delete_all_of(db: &Db, user_id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(user_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Removes expired sessions; returns how many.
pub async fn purge_expired(db: &Db) -> sqlx::Result<u64> {
    Ok(sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
        .bind(now_ms())
        .execute(db)
        .await?
        .rows_affected())
}
