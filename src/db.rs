//! SQLite: one writer connection for the projector, a read-only pool for queries.
//!
//! WAL lets readers run beside the writer, so a slow query never stalls projection and the
//! projector never waits for a request.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

/// The embedded migrations under `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Variables one statement may bind: SQLite's limit is 32,766; stay a little under it.
const MAX_BOUND_VARIABLES: usize = 32_000;

/// How many rows of `columns` bound values each fit one multi-row statement.
pub const fn rows_per_statement(columns: usize) -> usize {
    MAX_BOUND_VARIABLES / columns
}

/// The two pools over one database file.
#[derive(Clone, Debug)]
pub struct Db {
    /// Exactly one connection: SQLite has one writer, and queueing here beats SQLITE_BUSY.
    pub writer: SqlitePool,
    /// Read-only connections for the API.
    pub readers: SqlitePool,
}

fn options(path: &Path) -> anyhow::Result<SqliteConnectOptions> {
    let url = format!("sqlite://{}", path.display());
    Ok(SqliteConnectOptions::from_str(&url)
        .with_context(|| format!("database path {}", path.display()))?
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .pragma("temp_store", "memory"))
}

/// Opens (creating if needed) and migrates the database.
#[tracing::instrument(skip_all, fields(path = %path.display()))]
pub async fn open(path: &Path, readers: u32) -> anyhow::Result<Db> {
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(120))
        .connect_with(
            options(path)?
                .create_if_missing(true)
                // A large page cache keeps the indexes of the hot tables in memory.
                .pragma("cache_size", "-131072"),
        )
        .await
        .with_context(|| format!("opening database {}", path.display()))?;
    MIGRATOR
        .run(&writer)
        .await
        .context("running database migrations")?;
    let readers = SqlitePoolOptions::new()
        .max_connections(readers)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options(path)?.read_only(true))
        .await
        .context("opening read-only database pool")?;
    Ok(Db { writer, readers })
}

impl Db {
    /// Closes both pools, letting WAL checkpoint cleanly.
    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}
