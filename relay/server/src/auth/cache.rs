//! Who a session or API token is, cached for a few seconds: without it every
//! page costs three extra queries (session, membership, organization list),
//! and on SQLite each query is a thread hop.
//!
//! This process drops the whole cache whenever it changes a membership, a
//! token or a password, so a change made here takes effect at once. A change
//! made by another relay process sharing the database (PostgreSQL) takes
//! effect within [`TTL`].

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

use crate::db::Db;
use crate::now_ms;
use crate::store::accounts::{self, Org, Role, User};
use crate::store::tokens::{self, TokenIdentity};
use crate::store::{sessions, token_hash};

/// How long an entry is trusted.
pub const TTL: Duration = Duration::from_secs(5);

/// A live session: the user and every organization they belong to.
#[derive(Debug)]
pub struct SessionEntry {
    /// The user.
    pub user: User,
    /// Their organizations and roles, by name.
    pub memberships: Vec<(Org, Role)>,
    /// When the session ends, ms since the epoch.
    pub expires_at: i64,
}

/// Session and token lookups with a short memory.
pub struct AuthCache {
    sessions: Cache<String, Arc<SessionEntry>>,
    tokens: Cache<String, Arc<TokenIdentity>>,
    /// Bumped by every forget: a lookup that read the database before a
    /// change must not put its answer in the cache after it.
    generation: std::sync::atomic::AtomicU64,
}

impl Default for AuthCache {
    fn default() -> Self {
        AuthCache {
            sessions: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(TTL)
                .build(),
            tokens: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(TTL)
                .build(),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl AuthCache {
    /// The live session a cookie names, if any.
    pub async fn session(&self, db: &Db, token: &str) -> sqlx::Result<Option<Arc<SessionEntry>>> {
        let key = token_hash(token);
        if let Some(e) = self.sessions.get(&key) {
            if e.expires_at > now_ms() {
                return Ok(Some(e));
            }
            self.sessions.invalidate(&key);
            return Ok(None);
        }
        let generation = self.generation();
        let Some((user, expires_at)) = sessions::user(db, token).await? else {
            return Ok(None);
        };
        let memberships = accounts::memberships_of(db, &user.id).await?;
        let entry = Arc::new(SessionEntry {
            user,
            memberships,
            expires_at,
        });
        if self.generation() == generation {
            self.sessions.insert(key, entry.clone());
        }
        Ok(Some(entry))
    }

    /// Who an API token acts as, if anyone.
    pub async fn token(&self, db: &Db, secret: &str) -> sqlx::Result<Option<Arc<TokenIdentity>>> {
        let key = token_hash(secret);
        if let Some(id) = self.tokens.get(&key) {
            return Ok(Some(id));
        }
        let generation = self.generation();
        let Some(id) = tokens::identify(db, secret).await? else {
            return Ok(None);
        };
        let id = Arc::new(id);
        if self.generation() == generation {
            self.tokens.insert(key, id.clone());
        }
        Ok(Some(id))
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Forgets one session (logout).
    pub fn forget_session(&self, token: &str) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.sessions.invalidate(&token_hash(token));
    }

    /// Forgets everything (a membership, token or password changed).
    pub fn forget_all(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.sessions.invalidate_all();
        self.tokens.invalidate_all();
    }
}
