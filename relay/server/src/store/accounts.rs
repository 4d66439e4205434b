//! Users, organizations and memberships (with roles).

use serde::{Deserialize, Serialize};

use crate::db::Db;
use crate::{new_id, now_ms};

/// What a member may do in an organization. Ordered: a higher role may do
/// everything a lower one may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees everything, changes nothing.
    Viewer,
    /// Also configures senders and destinations and starts and stops streams.
    Operator,
    /// Also manages members and API tokens.
    Owner,
}

impl Role {
    /// All roles, lowest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Owner];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Owner => "owner",
        }
    }

    /// Parses a stored or submitted name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user account.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct User {
    /// Id.
    pub id: String,
    /// Login name (lowercased email).
    pub email: String,
}

/// An organization (tenant).
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct Org {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
}

/// A user's membership as seen from the organization.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Member {
    /// The user's id.
    pub user_id: String,
    /// The user's email.
    pub email: String,
    /// Their role here.
    pub role: Role,
}

/// Normalizes and checks an email-shaped login name.
pub fn normalize_email(email: &str) -> Option<String> {
    let e = email.trim().to_lowercase();
    let ok = e.len() <= 254
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'))
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then_some(e)
}

/// Creates an organization.
pub async fn create_org(db: &Db, name: &str) -> sqlx::Result<Org> {
    let org = Org {
        id: new_id(),
        name: name.to_string(),
    };
    sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(&org.id)
        .bind(&org.name)
        .bind(now_ms())
        .execute(db)
        .await?;
    Ok(org)
}

/// Creates a user with an already-hashed password.
pub async fn create_user(db: &Db, email: &str, password_hash: &str) -> sqlx::Result<User> {
    let user = User {
        id: new_id(),
        email: email.to_string(),
    };
    sqlx::query("INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&user.id)
        .bind(&user.email)
        .bind(password_hash)
        .bind(now_ms())
        .execute(db)
        .await?;
    Ok(user)
}

/// A user and their password hash, by email.
pub async fn user_by_email(db: &Db, email: &str) -> sqlx::Result<Option<(User, String)>> {
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT id, email, password_hash FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|(id, email, hash)| (User { id, email }, hash)))
}

/// Replaces a user's password hash.
pub async fn set_password(db: &Db, user_id: &str, password_hash: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
        .bind(password_hash)
        .bind(user_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Adds a user to an organization (or changes their role if already a member).
pub async fn add_member(db: &Db, org_id: &str, user_id: &str, role: Role) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO memberships (org_id, user_id, role, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (org_id, user_id) DO UPDATE SET role = excluded.role",
    )
    .bind(org_id)
    .bind(user_id)
    .bind(role.as_str())
    .bind(now_ms())
    .execute(db)
    .await?;
    Ok(())
}

/// Why a membership change was refused.
#[derive(Debug, thiserror::Error)]
pub enum MemberChangeError {
    /// The organization would be left without an owner.
    #[error("an organization needs at least one owner")]
    LastOwner,
    /// No such member.
    #[error("no such member")]
    NotFound,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Changes a member's role (`Some`) or removes them (`None`), never leaving
/// the organization without an owner.
pub async fn change_member(
    db: &Db,
    org_id: &str,
    user_id: &str,
    role: Option<Role>,
) -> Result<(), MemberChangeError> {
    let mut tx = db.begin().await?;
    // Lock the organization first, so two owners demoting each other at once
    // cannot both see another owner left (write skew on PostgreSQL).
    sqlx::query("UPDATE organizations SET name = name WHERE id = $1")
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    let current: Option<(String,)> =
        sqlx::query_as("SELECT role FROM memberships WHERE org_id = $1 AND user_id = $2")
            .bind(org_id)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((current,)) = current else {
        return Err(MemberChangeError::NotFound);
    };
    if current == "owner" && role != Some(Role::Owner) {
        let (owners,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM memberships WHERE org_id = $1 AND role = 'owner'")
                .bind(org_id)
                .fetch_one(&mut *tx)
                .await?;
        if owners <= 1 {
            return Err(MemberChangeError::LastOwner);
        }
    }
    match role {
        Some(role) => {
            sqlx::query("UPDATE memberships SET role = $1 WHERE org_id = $2 AND user_id = $3")
                .bind(role.as_str())
                .bind(org_id)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        None => {
            sqlx::query("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2")
                .bind(org_id)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            // A removed member's tokens for this organization stop working too.
            sqlx::query("DELETE FROM api_tokens WHERE org_id = $1 AND user_id = $2")
                .bind(org_id)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The members of an organization, by email.
pub async fn members(db: &Db, org_id: &str) -> sqlx::Result<Vec<Member>> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT u.id, u.email, m.role FROM memberships m JOIN users u ON u.id = m.user_id \
         WHERE m.org_id = $1 ORDER BY u.email",
    )
    .bind(org_id)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(user_id, email, role)| {
            Some(Member {
                user_id,
                email,
                role: Role::parse(&role)?,
            })
        })
        .collect())
}

/// The organizations a user belongs to, with their role, by name.
pub async fn memberships_of(db: &Db, user_id: &str) -> sqlx::Result<Vec<(Org, Role)>> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT o.id, o.name, m.role FROM memberships m JOIN organizations o ON o.id = m.org_id \
         WHERE m.user_id = $1 ORDER BY o.name, o.id",
    )
    .bind(user_id)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, name, role)| Some((Org { id, name }, Role::parse(&role)?)))
        .collect())
}

/// A user's role in one organization, with the organization.
pub async fn role_in(db: &Db, org_id: &str, user_id: &str) -> sqlx::Result<Option<(Org, Role)>> {
    let row: Option<(String, String, String)> = sqlx::query_as(
        "SELECT o.id, o.name, m.role FROM memberships m JOIN organizations o ON o.id = m.org_id \
         WHERE m.org_id = $1 AND m.user_id = $2",
    )
    .bind(org_id)
    .bind(user_id)
    .fetch_optional(db)
    .await?;
    Ok(row.and_then(|(id, name, role)| Some((Org { id, name }, Role::parse(&role)?))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_and_parse() {
        assert!(Role::Owner > Role::Operator && Role::Operator > Role::Viewer);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("admin"), None);
    }

    #[test]
    fn emails() {
        assert_eq!(
            normalize_email(" Ann@Example.COM ").as_deref(),
            Some("ann@example.com")
        );
        for bad in ["", "ann", "@x.com", "ann@x", "a b@x.com", "ann@.com"] {
            assert_eq!(normalize_email(bad), None, "{bad}");
        }
    }
}
