//! Committing a batch: its rows, dead letters, gap and checkpoint in one SQLite
//! transaction; the reset `orrery rebuild` starts from; the gaps recorded on the way.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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

/// How many batches' worth of messages one transaction takes at most while the stream holds
/// more: 262,144 messages at the default `--batch-size`.
///
/// With random keys nearly every row dirties an index page of its own, and a commit writes
/// every dirtied page: the more rows one commit carries, the more of them share a page.
/// Measured with a model of the results writer (5M random UUID results, 16 KiB pages):
/// 46k rows/s committing every 32,768 rows, 107k committing every 262,144.
pub(super) const BATCHES_PER_TX: usize = 8;
/// Longest a transaction stays open over several batches, so that the checkpoint `/ready`
/// reports moves at least this often during a catch-up.
pub(super) const MAX_TX_TIME: Duration = Duration::from_secs(3);
/// Most payload bytes one transaction takes over several batches: their decoded events are
/// kept until the commit, for the live listeners.
pub(super) const MAX_TX_BYTES: usize = 64 << 20;

/// A transaction kept open over several batches while the projector is behind.
pub(super) struct Open<E> {
    tx: sqlx::Transaction<'static, Sqlite>,
    began: Instant,
    messages: usize,
    bytes: usize,
    /// The batches written in it, in stream order: what the commit makes visible.
    written: Vec<Batch<E>>,
}

/// What a commit task left.
pub(super) enum Step<E> {
    /// The transaction committed.
    Committed(Committed),
    /// The batch is written and the transaction left open for the next one.
    Open(Open<E>),
}

/// Writes a batch into the open transaction (or a new one), then commits unless the stream
/// holds more and the transaction may take more: it commits when the batch leaves nothing
/// behind it (an event published alone is committed at once), at [`BATCHES_PER_TX`]
/// batches' worth, [`MAX_TX_BYTES`] or [`MAX_TX_TIME`], or when another projection waits for the writer. With no batch it commits
/// what `open` holds.
pub(super) async fn commit_task<P: Projection>(
    projection: Arc<P>,
    writer: SqlitePool,
    demand: crate::db::WriterDemand,
    shared: Arc<Shared>,
    batch: Option<Batch<P::Event>>,
    open: Option<Open<P::Event>>,
) -> Result<Step<P::Event>, ProjectorError> {
    let mut open = match open {
        Some(open) => open,
        None => Open {
            tx: demand.begin(&writer).await?,
            began: Instant::now(),
            messages: 0,
            bytes: 0,
            written: Vec::new(),
        },
    };
    if let Some(mut batch) = batch {
        let stream = shared.stream.name;
        if let Some(refused) = write(&*projection, &mut open.tx, stream, &mut batch, false).await? {
            // One event the database refuses must not hold back the rest: write the batches
            // before it again, whole, then this one event by event (no savepoint is kept
            // on the way: SQLite copies every page a savepoint's statements touch).
            tracing::debug!(error = %refused, "batch apply failed; isolating the bad events");
            open.tx.rollback().await?;
            open.tx = demand.begin(&writer).await?;
            for earlier in &mut open.written {
                if let Some(e) = write(&*projection, &mut open.tx, stream, earlier, false).await? {
                    return Err(e.into());
                }
            }
            write(&*projection, &mut open.tx, stream, &mut batch, true).await?;
        }
        let behind = batch.behind;
        open.messages += batch.metas.len();
        open.bytes += batch.raw.iter().map(|m| m.payload.len()).sum::<usize>();
        if batch.dead.is_empty() {
            // Only a dead letter's message is read again (to log it once committed).
            batch.raw = Vec::new();
        }
        open.written.push(batch);
        if stays_open(
            behind,
            open.messages,
            shared.tx_messages,
            open.bytes,
            open.began.elapsed(),
            demand.wanted(),
        ) {
            return Ok(Step::Open(open));
        }
    }
    let Open {
        tx, began, written, ..
    } = open;
    tx.commit().await?;
    let c = &shared.counters;
    c.commit_seconds.observe(began.elapsed().as_secs_f64());
    let mut committed = Committed {
        messages: 0,
        dead_lettered: 0,
        checkpoint: 0,
    };
    for batch in &written {
        c.batch_sizes.observe(batch.metas.len() as f64);
        projection.committed(&batch.events);
        for (i, reason) in &batch.dead {
            let m = batch.message(*i);
            tracing::warn!(stream = shared.stream.name, seq = m.seq, subject = m.subject, %reason,
                "message dead-lettered");
        }
        committed.messages += batch.metas.len();
        committed.dead_lettered += batch.dead.len();
        committed.checkpoint = batch.last().seq;
    }
    if committed.messages == 0 {
        // An open transaction always holds a batch; nothing else reaches here empty.
        return Ok(Step::Committed(committed));
    }
    shared.progress.send_replace(committed.checkpoint);
    c.messages
        .fetch_add(committed.messages as u64, Ordering::Relaxed);
    c.dead_letters
        .fetch_add(committed.dead_lettered as u64, Ordering::Relaxed);
    c.batches.fetch_add(written.len() as u64, Ordering::Relaxed);
    Ok(Step::Committed(committed))
}

/// Whether a transaction that has taken `messages` (of at most `max_messages`) and `bytes`
/// over `elapsed` stays open for the next batch: only while the stream holds more (`behind`)
/// and no other commit waits.
fn stays_open(
    behind: bool,
    messages: usize,
    max_messages: usize,
    bytes: usize,
    elapsed: Duration,
    writer_wanted: bool,
) -> bool {
    behind
        && messages < max_messages
        && bytes < MAX_TX_BYTES
        && elapsed < MAX_TX_TIME
        && !writer_wanted
}

/// Writes a batch with its dead letters, gap and checkpoint into `conn`. `Ok(Some(e))` when
/// the database refused it whole (not a transient fault): `conn` must then be rolled back.
/// With `isolate` each event is written in a savepoint of its own, and those refused are
/// dead-lettered.
async fn write<P: Projection>(
    projection: &P,
    conn: &mut SqliteConnection,
    stream: &str,
    batch: &mut Batch<P::Event>,
    isolate: bool,
) -> Result<Option<sqlx::Error>, ProjectorError> {
    if isolate {
        let mut applied = Vec::with_capacity(batch.events.len());
        for (ev, &i) in batch.events.iter().zip(&batch.origins) {
            let mut sp = sqlx::Connection::begin(&mut *conn).await?;
            match guarded(projection.apply(&mut sp, std::slice::from_ref(ev))).await {
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
    } else {
        match guarded(projection.apply(&mut *conn, &batch.events)).await {
            Ok(()) => {}
            Err(e) if error::is_transient(&e) => return Err(e.into()),
            Err(e) => return Ok(Some(e)),
        }
    }
    insert_dead_letters(projection, conn, stream, batch).await?;
    if let Some((first, last)) = batch.gap {
        sqlx::query(
            "INSERT OR IGNORE INTO stream_gaps (stream, first_seq, last_seq, detected_at) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(stream)
        .bind(first as i64)
        .bind(last as i64)
        .bind(crate::window::now_ms())
        .execute(&mut *conn)
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
    .execute(&mut *conn)
    .await?;
    Ok(None)
}

/// Runs an `apply`; a panic in it (a bug meeting its event) is caught like a refusal:
/// isolated to the event that causes it, which is dead-lettered, instead of failing the step
/// for ever.
async fn guarded(apply: impl std::future::Future<Output = sqlx::Result<()>>) -> sqlx::Result<()> {
    std::panic::AssertUnwindSafe(apply)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(sqlx::Error::Protocol("applying it panicked".into())))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_stays_open_only_while_behind_and_within_every_bound() {
        let second = Duration::from_secs(1);
        let max = 8_000;
        assert!(stays_open(true, 1_000, max, 1 << 20, second, false));
        // Caught up: an event published alone is committed at once.
        assert!(!stays_open(false, 1, max, 100, Duration::ZERO, false));
        // Each bound alone ends it.
        assert!(!stays_open(true, max, max, 1 << 20, second, false));
        assert!(!stays_open(true, 1_000, max, MAX_TX_BYTES, second, false));
        assert!(!stays_open(true, 1_000, max, 1 << 20, MAX_TX_TIME, false));
        assert!(!stays_open(true, 1_000, max, 1 << 20, second, true));
        // Just under them all it goes on.
        assert!(stays_open(
            true,
            max - 1,
            max,
            MAX_TX_BYTES - 1,
            MAX_TX_TIME - Duration::from_millis(1),
            false
        ));
    }
}
