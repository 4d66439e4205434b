//! API tokens for automation: shown once at creation, stored as a hash,
//! scoped to one organization with a role no higher than their creator's.

use serde::Serialize;

use super::accounts::Role;
use super::{new_secret, token_hash};
use crate::db::Db;
use crate::{new_id, now_ms};

/// Prefix of every API token, so leaked ones are recognizable.
pub const PREFIX: &str = "strata_";

/// A token as listed (never with its secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiToken {
    /// Id.
    pub id: String,
    /// What the owner called it.
    pub name: String,
    /// Role it grants.
    pub role: Role,
    /// Who created it.
    pub created_by: String,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// Last use, ms since the epoch.
    pub last_used_at: Option<i64>,
}

/// Who a presented token acts as.
#[derive(Debug, Clone)]
pub struct TokenIdentity {
    /// The token's id.
    pub token_id: String,
    /// Its organization.
    pub org_id: String,
    /// The user it acts for.
    pub user_id: String,
    /// That user's email.
    pub email: String,
    /// The organization's name.
    pub org_name: String,
    /// The lower of the token's role and the user's current role.
    pub role: Role,
}

/// Creates a token; returns it and its secret (to show once).
pub async fn create(
    db: &Db,
    org_id: &str,
    user_id: &str,
    name: &str,
    role: Role,
) -> sqlx::Result<(String, String)> {
    let id = new_id();
    let secret = new_secret(PREFIX);
    sqlx::query(
        "INSERT INTO api_tokens (id, org_id, user_id, name, role, token_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(org_id)
    .bind(user_id)
    .bind(name)
    .bind(role.as_str())
    .bind(token_hash(&secret))
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok((id, secret))
}

/// The organization's tokens.
pub async fn list(db: &Db, org_id: &str) -> sqlx::Result<Vec<ApiToken>> {
    let rows: Vec<(String, String, String, String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT t.id, t.name, t.role, u.email, t.created_at, t.last_used_at FROM api_tokens t \
         JOIN users u ON u.id = t.user_id WHERE t.org_id = $1 ORDER BY t.created_at DESC, t.id",
    )
    .bind(org_id)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, name, role, created_by, created_at, last_used_at)| {
            Some(ApiToken {
                id,
                name,
                role: Role::parse(&role)?,
                created_by,
                created_at,
                last_used_at,
            })
        })
        .collect())
}

/// Revokes a token; false if the organization has no such token.
pub async fn revoke(db: &Db, org_id: &str, id: &str) -> sqlx::Result<bool> {
    let r = sqlx::query("DELETE FROM api_tokens WHERE org_id = $1 AND id = $2")
        .bind(org_id)
        .bind(id)
        .execute(db)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Resolves a presented secret. A token whose user left the organization
/// resolves to nothing; one whose user was demoted is demoted with them.
pub async fn identify(db: &Db, secret: &str) -> sqlx::Result<Option<TokenIdentity>> {
    if !secret.starts_with(PREFIX) {
        return Ok(None);
    }
    #[derive(sqlx::FromRow)]
    struct Row {
        token_id: String,
        org_id: String,
        user_id: String,
        token_role: String,
        member_role: String,
        last_used: Option<i64>,
        email: String,
        org_name: String,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT t.id AS token_id, t.org_id, t.user_id, t.role AS token_role, m.role AS member_role, \
         t.last_used_at AS last_used, u.email, o.name AS org_name FROM api_tokens t \
         JOIN memberships m ON m.org_id = t.org_id AND m.user_id = t.user_id \
         JOIN users u ON u.id = t.user_id JOIN organizations o ON o.id = t.org_id \
         WHERE t.token_hash = $1",
    )
    .bind(token_hash(secret))
    .fetch_optional(db)
    .await?;
    let Some(Row {
        token_id,
        org_id,
        user_id,
        token_role,
        member_role,
        last_used,
        email,
        org_name,
    }) = row
    else {
        return Ok(None);
    };
    let (Some(a), Some(b)) = (Role::parse(&token_role), Role::parse(&member_role)) else {
        return Ok(None);
    };
    // Last use to the minute: a write per API request would serialize SQLite.
    let now = now_ms();
    if last_used.is_none_or(|t| now - t > 60_000) {
        sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(&token_id)
            .execute(db)
            .await?;
    }
    Ok(Some(TokenIdentity {
        token_id,
        org_id,
        user_id,
        email,
        org_name,
        role: a.min(b),
    }))
}
