//! The database pool: SQLite (WAL) by default, PostgreSQL when the URL says
//! so, one set of queries for both through sqlx's `Any` driver.

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};

/// The pool every store function takes.
pub type Db = AnyPool;

/// Which database a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The backend a URL selects, or an error naming what is supported.
    pub fn of(url: &str) -> anyhow::Result<Backend> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            anyhow::bail!("unsupported database URL (use sqlite://PATH or postgres://...)")
        }
    }
}

/// Connects, creates the SQLite file if needed, and applies the migrations.
pub async fn connect(url: &str) -> anyhow::Result<Db> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of(url)?;
    let url = match backend {
        Backend::Sqlite if !url.contains("mode=") => {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        }
        _ => url.to_string(),
    };
    let pool = AnyPoolOptions::new()
        .max_connections(16)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    // Per-connection settings; WAL itself is stored in the file.
                    conn.execute("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL")
                        .await?;
                }
                Ok(())
            })
        })
        .connect(&url)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the database: {e}"))?;
    if backend == Backend::Sqlite {
        sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&pool)
            .await?;
    }
    sqlx::migrate!("./migrations").run(&pool).await?;
    Ok(pool)
}

/// Whether an error is a unique-constraint violation (a duplicate name or email).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}
