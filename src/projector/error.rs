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
    #[error("database: {0}")]
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

/// `true` for database errors that say nothing about the data: busy, locked, out of memory,
/// I/O, full disk, pool trouble. Those are retried; others point at the event being applied.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let primary = db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .map(|c| c & 0xff);
            // SQLITE_BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL
            matches!(primary, Some(5 | 6 | 7 | 8 | 10 | 11 | 13 | 14 | 15) | None)
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        _ => false,
    }
}
