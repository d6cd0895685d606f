//! Committing a batch: its rows, dead letters, gap and checkpoint in one SQLite
//! transaction; the reset `orrery rebuild` starts from; the gaps recorded on the way.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::FutureExt;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use tokio::time::Instant;

use super::{error, Batch, Committed, Outcome, Projection, ProjectorError, Shared};
use crate::db::rows_per_statement;

impl From<Committed> for Outcome {
    fn from(c: Committed) -> Self {
        Outcome::Applied {
            messages: c.messages,
            dead_lettered: c.dead_lettered,
            checkpoint: c.checkpoint,
        }
    }
}

/// Commits a batch, then publishes its checkpoint and counts it.
pub(super) async fn commit_task<P: Projection>(
    projection: Arc<P>,
    writer: SqlitePool,
    shared: Arc<Shared>,
    mut batch: Batch<P::Event>,
) -> Result<Committed, ProjectorError> {
    let started = Instant::now();
    commit(&*projection, &writer, shared.stream.name, &mut batch).await?;
    shared
        .counters
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    shared.counters.batch_sizes.observe(batch.raw.len() as f64);
    projection.committed(&batch.events);
    let last = batch.last().seq;
    shared.progress.send_replace(last);
    let c = &shared.counters;
    c.messages
        .fetch_add(batch.raw.len() as u64, Ordering::Relaxed);
    c.dead_letters
        .fetch_add(batch.dead.len() as u64, Ordering::Relaxed);
    c.batches.fetch_add(1, Ordering::Relaxed);
    for (i, reason) in &batch.dead {
        let m = batch.message(*i);
        tracing::warn!(stream = shared.stream.name, seq = m.seq, subject = m.subject, %reason,
            "message dead-lettered");
    }
    Ok(Committed {
        messages: batch.raw.len(),
        dead_lettered: batch.dead.len(),
        checkpoint: last,
    })
}

/// Applies a batch with its dead letters and checkpoint in one transaction.
async fn commit<P: Projection>(
    projection: &P,
    writer: &SqlitePool,
    stream: &str,
    batch: &mut Batch<P::Event>,
) -> Result<(), ProjectorError> {
    let mut tx = writer.begin().await?;
    // A panic in `apply` (a bug meeting its event) is caught like a refusal: isolated to the
    // event that causes it, which is dead-lettered, instead of failing the step for ever.
    let applied = std::panic::AssertUnwindSafe(projection.apply(&mut tx, &batch.events))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(sqlx::Error::Protocol("applying the batch panicked".into())));
    match applied {
        Ok(()) => {}
        Err(e) if error::is_transient(&e) => return Err(e.into()),
        Err(e) => {
            // One event the database refuses must not hold back the rest: redo the batch
            // one event per savepoint and dead-letter the ones that fail.
            tracing::debug!(error = %e, "batch apply failed; isolating the bad events");
            tx.rollback().await?;
            tx = writer.begin().await?;
            let mut applied = Vec::with_capacity(batch.events.len());
            for (ev, &i) in batch.events.iter().zip(&batch.origins) {
                let mut sp = sqlx::Connection::begin(&mut *tx).await?;
                let one = std::panic::AssertUnwindSafe(
                    projection.apply(&mut sp, std::slice::from_ref(ev)),
                )
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(sqlx::Error::Protocol("applying it panicked".into())));
                match one {
                    Ok(()) => {
                        sp.commit().await?;
                        applied.push(true);
                    }
                    Err(e) if error::is_transient(&e) => return Err(e.into()),
                    Err(e) => {
                        sp.rollback().await?;
                        batch.dead.push((i, format!("cannot apply: {e}")));
                        applied.push(false);
                    }
                }
            }
            // Only applied events may reach live listeners after the commit.
            let mut keep = applied.iter();
            batch.events.retain(|_| *keep.next().unwrap_or(&false));
            let mut keep = applied.iter();
            batch.origins.retain(|_| *keep.next().unwrap_or(&false));
        }
    }
    insert_dead_letters(projection, &mut tx, stream, batch).await?;
    if let Some((first, last)) = batch.gap {
        sqlx::query(
            "INSERT OR IGNORE INTO stream_gaps (stream, first_seq, last_seq, detected_at) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(stream)
        .bind(first as i64)
        .bind(last as i64)
        .bind(crate::window::now_ms())
        .execute(&mut *tx)
        .await?;
    }
    let last = batch.last();
    // Every message counts, dead letters too: the mark depends on the stream alone.
    let high_water = batch.metas.iter().map(|m| m.published_ms).max();
    sqlx::query(
        "INSERT INTO checkpoints (stream, last_seq, updated_at, high_water_ms) \
         VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (stream) DO UPDATE SET last_seq = excluded.last_seq, \
         updated_at = excluded.updated_at, \
         high_water_ms = MAX(checkpoints.high_water_ms, excluded.high_water_ms)",
    )
    .bind(stream)
    .bind(last.seq as i64)
    .bind(last.published_ms)
    .bind(high_water.unwrap_or(last.published_ms))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn insert_dead_letters<P: Projection>(
    projection: &P,
    conn: &mut SqliteConnection,
    stream: &str,
    batch: &Batch<P::Event>,
) -> sqlx::Result<()> {
    for chunk in batch.dead.chunks(rows_per_statement(6)) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT OR IGNORE INTO dead_letters (stream, seq, subject, reason, payload, received_at) ",
        );
        q.push_values(chunk, |mut b, (i, reason)| {
            let m = batch.message(*i);
            b.push_bind(stream)
                .push_bind(m.seq as i64)
                .push_bind(m.subject)
                .push_bind(reason.as_str())
                .push_bind(projection.dead_letter_payload(m.payload).into_owned())
                .push_bind(m.published_ms);
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Resets a projection for `orrery rebuild`: its rows, its dead letters and its checkpoint go
/// in one transaction, so a crash mid-reset leaves either the old state or an empty one.
pub async fn reset<P: Projection>(projection: &P, writer: &SqlitePool) -> sqlx::Result<()> {
    let stream = projection.stream().name;
    let mut tx = writer.begin().await?;
    projection.reset(&mut tx).await?;
    sqlx::query("DELETE FROM dead_letters WHERE stream = ?")
        .bind(stream)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM checkpoints WHERE stream = ?")
        .bind(stream)
        .execute(&mut *tx)
        .await?;
    // A replay from the first message leaves nothing to read again.
    for table in ["stream_gaps", "stream_rereads"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE stream = ?"))
            .bind(stream)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// A range of a stream a projection never saw, because the stream no longer held it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    /// The stream.
    pub stream: String,
    /// First sequence missing.
    pub first_seq: u64,
    /// Last sequence missing.
    pub last_seq: u64,
}

impl Gap {
    /// Messages in the range.
    pub fn events(&self) -> u64 {
        self.last_seq - self.first_seq + 1
    }
}

/// Every recorded gap, by stream and sequence.
pub async fn load_gaps<'e>(executor: impl sqlx::SqliteExecutor<'e>) -> sqlx::Result<Vec<Gap>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT stream, first_seq, last_seq FROM stream_gaps ORDER BY stream, first_seq",
    )
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(stream, first, last)| Gap {
            stream,
            first_seq: first as u64,
            last_seq: (last as u64).max(first as u64),
        })
        .collect())
}
