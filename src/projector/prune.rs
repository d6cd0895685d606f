//! The pruner: deletes the rows each read model's retention no longer keeps (see
//! [`crate::retention`]), a bounded chunk per transaction, so that the projectors' commits
//! and the live streams go on between chunks. The pages they held go to SQLite's free list
//! and are reused by new rows, so a database under retention levels off; `orrery compact`
//! gives them back to the file system.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::SqlitePool;

use super::{ReadModel, Table, Window};
use crate::retention::{Class, Retention};

/// Most rows deleted per transaction.
pub const CHUNK: i64 = 2_000;

/// Fewest rows deleted per transaction.
const MIN_CHUNK: i64 = 50;

/// How long one pruning transaction may hold the writer: the projectors' commits, and so the
/// live streams, wait at most about this long for it.
const CHUNK_TIME: Duration = Duration::from_millis(2);

/// After each transaction the pruner leaves the writer alone this many times as long as it
/// held it, so it takes at most a fifth of the writer. That still deletes ~7,000 results a
/// second with their indexes, where 100 results/s of ingest need 100; measured with
/// `bench fanout --clients 2000 --rate 300 --backlog 500000`: at 10 ms and an equal pause
/// the live stream's p99 was 30–36 ms (5–6 ms without pruning), at 2 ms and 4× 7–10 ms.
const PAUSE_TIMES: u32 = 4;

/// Derived caches pruned with their read model but never hashed: (stream, class, prune SQL).
const CACHES: [(&str, Class, &str); 1] = [(
    "RESULTS",
    Class::Results,
    "DELETE FROM duration_blocks WHERE rowid IN (SELECT rowid FROM duration_blocks \
     WHERE hour < ?1 / 3600000 LIMIT ?2)",
)];

/// Rows the pruner has deleted per stream since the daemon started, and a generation that
/// moves whenever it deleted any: caches of answers made of pruned tables key on it, since
/// pruning moves no checkpoint.
#[derive(Debug, Default)]
pub struct Report {
    pruned: std::sync::Mutex<HashMap<&'static str, u64>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Report {
    fn add(&self, stream: &'static str, rows: u64) {
        *crate::sync::lock(&self.pruned).entry(stream).or_default() += rows;
    }

    /// Moves after every pass that deleted rows, once they are committed.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Rows deleted from `stream`'s read model so far.
    pub fn pruned(&self, stream: &str) -> u64 {
        crate::sync::lock(&self.pruned)
            .get(stream)
            .copied()
            .unwrap_or(0)
    }
}

/// How far back one read model reaches now, for `/ready` and `/metrics`.
#[derive(Debug, Clone)]
pub struct ModelReport {
    /// Its stream.
    pub stream: &'static str,
    /// Its retention in seconds (`None`: kept for ever).
    pub retention_secs: Option<u64>,
    /// The oldest event time it holds, Unix ms (`None`: it holds nothing).
    pub oldest_ms: Option<i64>,
    /// Event times before this are expired, Unix ms (`None`: kept for ever, or nothing
    /// projected yet).
    pub cutoff_ms: Option<i64>,
    /// Rows deleted since the daemon started.
    pub pruned_rows: u64,
}

/// Reads, per read model, its cutoff and the oldest event time it holds (a few indexed
/// lookups on the read pool), with the pruner's counts from `report`.
pub async fn survey(
    readers: &SqlitePool,
    models: &[ReadModel],
    retention: &Retention,
    report: &Report,
) -> sqlx::Result<Vec<ModelReport>> {
    let marks = high_water_marks(readers).await?;
    let mut out = Vec::with_capacity(models.len());
    for &(stream, tables) in models {
        let high_water = marks.get(stream.name).copied().unwrap_or(0);
        let class = class_of(tables);
        let oldest: Option<i64> = match oldest_query(stream.name) {
            Some(sql) => sqlx::query_scalar(sql).fetch_one(readers).await?,
            None => None,
        };
        out.push(ModelReport {
            stream: stream.name,
            retention_secs: match class {
                Some(c) => retention.of(c).map(|d| d.as_secs()),
                // Samples are pruned by `projections::heartbeats::prune_samples`.
                None if stream.name == "HEARTBEATS" => Some(retention.samples.as_secs()),
                None => None,
            },
            oldest_ms: oldest,
            // Before its first commit a read model has no mark and nothing to cut.
            cutoff_ms: class
                .filter(|_| high_water > 0)
                .and_then(|c| retention.cutoff(c, high_water)),
            pruned_rows: report.pruned(stream.name),
        });
    }
    Ok(out)
}

async fn high_water_marks(readers: &SqlitePool) -> sqlx::Result<HashMap<String, i64>> {
    Ok(
        sqlx::query_as::<_, (String, i64)>("SELECT stream, high_water_ms FROM checkpoints")
            .fetch_all(readers)
            .await?
            .into_iter()
            .collect(),
    )
}

/// The main table of each read model and the expression of its event time, for the oldest
/// kept time that `/ready` and the metrics report.
fn oldest_query(stream: &str) -> Option<&'static str> {
    Some(match stream {
        // The index gives each kind's oldest at once.
        "RESULTS" => {
            "SELECT MIN((SELECT MIN(recorded_at) FROM execution_results r \
             WHERE r.kind = k.kind AND r.success = s.v)) \
             FROM result_kinds k, (SELECT 0 AS v UNION ALL SELECT 1) s"
        }
        "ALERTS" => "SELECT (SELECT received_at FROM alert_events ORDER BY seq LIMIT 1)",
        "TOPOLOGY" => {
            "SELECT MIN(updated_at) FROM topology_mutations WHERE state IN ('applied', 'failed')"
        }
        "WORKITEMS" => "SELECT MIN(recorded_at) FROM work_item_history",
        "HEARTBEATS" => "SELECT MIN(at) FROM system_stats_samples",
        _ => return None,
    })
}

/// The class of a read model's main table, if it has a retention.
fn class_of(tables: &[Table]) -> Option<Class> {
    tables.iter().find_map(|t| match t.window {
        Some(Window::Kept { class, .. }) => Some(class),
        _ => None,
    })
}

/// One pass: for every read model, deletes what its retention no longer keeps (chunk by
/// chunk, yielding between); counts in `report`. Returns rows deleted.
pub async fn prune_once(
    writer: &SqlitePool,
    readers: &SqlitePool,
    models: &[ReadModel],
    retention: &Retention,
    report: &Report,
    cancel: &tokio_util::sync::CancellationToken,
) -> sqlx::Result<u64> {
    let marks = high_water_marks(readers).await?;
    let mut total = 0u64;
    for &(stream, tables) in models {
        let high_water = marks.get(stream.name).copied().unwrap_or(0);
        let mut deleted = 0u64;
        let mut statements: Vec<(i64, &str, Option<&str>)> = Vec::new();
        for table in tables {
            if let Some(Window::Kept { class, prune, .. }) = table.window {
                if let Some(cutoff) = retention.cutoff(class, high_water) {
                    statements.push((cutoff, prune, None));
                }
            }
        }
        for (cache_stream, class, prune) in CACHES {
            if cache_stream == stream.name {
                if let Some(cutoff) = retention.cutoff(class, high_water) {
                    statements.push((cutoff, prune, None));
                }
            }
        }
        if let Some(cutoff) = retention.cutoff(Class::DeadLetters, high_water) {
            statements.push((
                cutoff,
                "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters \
                 WHERE stream = ?3 AND received_at < ?1 LIMIT ?2)",
                Some(stream.name),
            ));
        }
        for (cutoff, sql, bound_stream) in statements {
            let n = delete_in_chunks(writer, sql, cutoff, bound_stream, Some(cancel), |n| {
                // Counted as committed, so a long pass shows its progress in the metrics.
                report.add(stream.name, n)
            })
            .await?;
            deleted += n;
            if cancel.is_cancelled() {
                return Ok(total + deleted);
            }
        }
        total += deleted;
    }
    if total > 0 {
        report
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
    Ok(total)
}

/// Runs the delete `sql` (`?1` the cutoff, `?2` a row count, `?3` `stream` if given) a
/// transaction at a time until one deletes fewer rows than asked, or `cancel` fires; tells
/// `on_chunk` each transaction's count and returns the total.
///
/// Transactions are sized to hold the writer about [`CHUNK_TIME`] (random keys make a row
/// cost anything from microseconds to a page read), starting small, and the writer is then
/// left alone [`PAUSE_TIMES`] as long as it was held, so that projecting always gets most
/// of it.
pub async fn delete_in_chunks(
    writer: &SqlitePool,
    sql: &str,
    cutoff: i64,
    stream: Option<&str>,
    cancel: Option<&tokio_util::sync::CancellationToken>,
    mut on_chunk: impl FnMut(u64),
) -> sqlx::Result<u64> {
    let mut chunk = MIN_CHUNK;
    let mut deleted = 0;
    while !cancel.is_some_and(|c| c.is_cancelled()) {
        let mut q = sqlx::query(sql).bind(cutoff).bind(chunk);
        if let Some(name) = stream {
            q = q.bind(name);
        }
        let started = std::time::Instant::now();
        let n = q.execute(writer).await?.rows_affected();
        let held = started.elapsed();
        deleted += n;
        on_chunk(n);
        if n < chunk as u64 {
            break;
        }
        chunk = if held > CHUNK_TIME {
            (chunk / 2).max(MIN_CHUNK)
        } else if held < CHUNK_TIME / 2 {
            (chunk * 2).min(CHUNK)
        } else {
            chunk
        };
        tokio::time::sleep(held * PAUSE_TIMES).await;
    }
    Ok(deleted)
}

/// How often the pruner looks.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Until `cancel`: a pruning pass every [`PRUNE_EVERY`].
pub async fn prune_forever(
    writer: SqlitePool,
    readers: SqlitePool,
    models: Vec<ReadModel>,
    retention: Retention,
    report: std::sync::Arc<Report>,
    on_pruned: impl Fn() + Send + 'static,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        match prune_once(&writer, &readers, &models, &retention, &report, &cancel).await {
            Ok(0) => {}
            Ok(n) => {
                on_pruned();
                tracing::info!(deleted = n, "pruned rows past their retention");
            }
            Err(error) => tracing::warn!(%error, "pruning failed; will retry"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
