//! Projector failures and which of them are worth retrying.

/// Why a projection step failed. Every variant is retried from the checkpoint; nothing was
/// committed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    /// NATS or JetStream refused or went away.
    #[error("bus: {what}: {source}")]
    Bus {
        /// The step that failed.
        what: &'static str,
        /// The client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The ordered consumer's message stream ended.
    #[error("bus: the consumer stream ended")]
    ConsumerEnded,
    /// SQLite failed (busy, I/O, full disk…).
    #[error("database: {0}{hint}", hint = hint(.0))]
    Database(#[from] sqlx::Error),
}

impl ProjectorError {
    /// Wraps a bus error with the step that produced it.
    pub fn bus(what: &'static str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Bus {
            what,
            source: e.into(),
        }
    }
}

/// The primary SQLite result code of a database error.
fn primary_code(e: &sqlx::Error) -> Option<i32> {
    let db = e.as_database_error()?;
    Some(db.code()?.parse::<i32>().ok()? & 0xff)
}

/// What an operator can do about a fault of the file or the disk, appended to its error
/// (SQLite's own words, "disk I/O error", do not say where to look).
fn hint(e: &sqlx::Error) -> &'static str {
    match primary_code(e) {
        Some(8) => " — the database is read-only: make the file and its directory writable",
        Some(10) => {
            " — the database file could not be written: check that the file and its directory \
             are writable (permissions, an immutable attribute, a filesystem remounted \
             read-only) and that the disk is healthy"
        }
        Some(13) => " — the disk is full: free space or give the database a larger volume",
        Some(14) => {
            " — the database file cannot be opened: check its directory exists and is writable"
        }
        _ => "",
    }
}

/// `true` for database errors that say nothing about the data: busy, locked, out of memory,
/// I/O, full disk, pool trouble. Those are retried; others point at the event being applied.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        // SQLITE_BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL
        sqlx::Error::Database(_) => {
            matches!(
                primary_code(e),
                Some(5 | 6 | 7 | 8 | 10 | 11 | 13 | 14 | 15) | None
            )
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        _ => false,
    }
}
