//! Duration blocks: how long each job's runs took, per (hour, job), packed so that
//! `/results/durations` reads a few thousand values instead of millions of rows.
//!
//! This module is the format's one home: its writer ([`insert_blocks`],
//! [`insert_blocks_from_rows`]), its compactor ([`compact_duration_blocks`]) and its reader
//! ([`job_durations`]), which keeps what it read in a [`DurationCache`] and selects
//! percentiles across sorted blocks ([`rank`]).
//!
//! # Format
//! A row of `duration_blocks` holds, for one `hour` (`finished_at / 3600000`) and `job_id`:
//! `vals`, the runs as `finished_at:ms` pairs joined by `,` (ms = `finished_at - started_at`,
//! clamped at 0); `n` and `sum_ms`; and `max_key`, the longest run as its 12-digit
//! zero-padded ms followed by its result id, so that `MAX(max_key)` finds the longest run
//! with ties going to the larger id. An (hour, job) may have several blocks until the
//! compactor merges them. Results without a job, start or finish have no duration.

pub mod cache;
pub mod rank;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};

use super::ResultEvent;
use crate::db::rows_per_statement;
pub use cache::DurationCache;
use cache::{Form, JobRuns, Runs};
use rank::{rank_index, select_sorted};

/// A row's run duration in SQL, clamped at 0 like [`run_ms`].
macro_rules! run_ms_sql {
    () => {
        "MAX(0, finished_at - started_at)"
    };
}

/// A row's `max_key` in SQL (see the format above).
macro_rules! max_key_sql {
    () => {
        concat!("printf('%012d', ", run_ms_sql!(), ") || result_id")
    };
}

/// A run's duration: finish minus start, never negative (clocks skew).
fn run_ms(started_at: i64, finished_at: i64) -> i64 {
    (finished_at - started_at).max(0)
}

/// Milliseconds in an hour.
const HOUR_MS: i64 = 3_600_000;

/// The hour bucket of a finish time, as SQLite's integer division computes it.
fn hour_of(ms: i64) -> i64 {
    ms / HOUR_MS
}

/// The hours a run finishing at `ms` changes: its block's, and the hour the reader cuts
/// (the two differ before 1970, where division truncates towards zero).
pub(super) fn hours_of(ms: i64) -> [i64; 2] {
    [hour_of(ms), ms.div_euclid(HOUR_MS)]
}

/// A `max_key` for a run of `ms` by result `id`.
fn max_key(ms: i64, id: &str) -> String {
    format!("{ms:012}{id}")
}

/// A block's `max_key` (12 zero-padded digits, then the result id) as (ms, id).
fn split_max_key(key: &str) -> (i64, &str) {
    let (ms, id) = key.split_at(key.len().min(12));
    (ms.parse().unwrap_or(0), id)
}

/// The run a result adds to the duration blocks, if it has a duration: (block hour, job,
/// ms, result id).
pub(super) fn added_run(e: &ResultEvent) -> Option<cache::AddedRun<'_>> {
    let (Some(job), Some(start), Some(finish)) = (e.job_id.as_deref(), e.started_at, e.finished_at)
    else {
        return None;
    };
    Some((hour_of(finish), job, run_ms(start, finish), &e.result_id))
}

/// One duration block under construction.
struct Block<'a> {
    hour: i64,
    job_id: &'a str,
    vals: String,
    n: i64,
    sum_ms: i64,
    max_ms: i64,
    max_id: &'a str,
}

/// Writes one duration block per (hour, job) of a batch whose results are all new.
pub(super) async fn insert_blocks(
    conn: &mut SqliteConnection,
    events: &[ResultEvent],
) -> sqlx::Result<()> {
    let mut blocks: Vec<Block<'_>> = Vec::new();
    let mut index: HashMap<(i64, &str), usize> = HashMap::new();
    for e in events {
        let Some((hour, job, ms, _)) = added_run(e) else {
            continue;
        };
        let finish = e.finished_at.unwrap_or_default();
        let i = *index.entry((hour, job)).or_insert_with(|| {
            blocks.push(Block {
                hour,
                job_id: job,
                vals: String::new(),
                n: 0,
                sum_ms: 0,
                max_ms: -1,
                max_id: "",
            });
            blocks.len() - 1
        });
        let b = &mut blocks[i];
        if b.n > 0 {
            b.vals.push(',');
        }
        let _ = write!(b.vals, "{finish}:{ms}");
        b.n += 1;
        b.sum_ms += ms;
        if ms > b.max_ms || (ms == b.max_ms && e.result_id.as_str() > b.max_id) {
            b.max_ms = ms;
            b.max_id = &e.result_id;
        }
    }
    for chunk in blocks.chunks(rows_per_statement(6)) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO duration_blocks (hour, job_id, vals, n, sum_ms, max_key) ",
        );
        q.push_values(chunk, |mut row, b| {
            row.push_bind(b.hour)
                .push_bind(b.job_id)
                .push_bind(b.vals.as_str())
                .push_bind(b.n)
                .push_bind(b.sum_ms)
                .push_bind(max_key(b.max_ms, b.max_id));
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Writes the blocks of the `execution_results` rows after `rowid_before`: for a batch that
/// repeated known result ids, SQLite builds the blocks from the rows it actually inserted.
pub(super) async fn insert_blocks_from_rows(
    conn: &mut SqliteConnection,
    rowid_before: i64,
) -> sqlx::Result<()> {
    sqlx::query(concat!(
        "INSERT INTO duration_blocks (hour, job_id, vals, n, sum_ms, max_key) \
         SELECT finished_at / 3600000, job_id, \
           group_concat(finished_at || ':' || ",
        run_ms_sql!(),
        ", ','), COUNT(*), SUM(",
        run_ms_sql!(),
        "), MAX(",
        max_key_sql!(),
        ") FROM execution_results \
         WHERE rowid > ?1 AND job_id IS NOT NULL AND started_at IS NOT NULL \
           AND finished_at IS NOT NULL \
         GROUP BY finished_at / 3600000, job_id"
    ))
    .bind(rowid_before)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Merges the duration blocks of up to `max_groups` (hour, job) pairs that have more than one
/// block into a single block each, one short transaction per pair so the projector is never
/// held back for long; returns the pairs merged.
pub async fn compact_duration_blocks(writer: &SqlitePool, max_groups: i64) -> sqlx::Result<u64> {
    let groups: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT hour, job_id, MAX(rowid) FROM duration_blocks \
         GROUP BY hour, job_id HAVING COUNT(*) > 1 LIMIT ?1",
    )
    .bind(max_groups)
    .fetch_all(writer)
    .await?;
    for (hour, job, upto) in &groups {
        let mut tx = writer.begin().await?;
        sqlx::query(
            "INSERT INTO duration_blocks (hour, job_id, vals, n, sum_ms, max_key) \
             SELECT hour, job_id, group_concat(vals, ','), SUM(n), SUM(sum_ms), MAX(max_key) \
             FROM duration_blocks WHERE hour = ?1 AND job_id = ?2 AND rowid <= ?3 \
             GROUP BY hour, job_id",
        )
        .bind(hour)
        .bind(job)
        .bind(upto)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM duration_blocks WHERE hour = ?1 AND job_id = ?2 AND rowid <= ?3")
            .bind(hour)
            .bind(job)
            .bind(upto)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(groups.len() as u64)
}

/// Duration statistics of one job over a window (nearest-rank percentiles); also the items
/// of the `/api/v1/results/durations` answer, as they are.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = JobDurations)]
pub struct JobStats {
    /// The job.
    pub job_id: String,
    /// Runs in the window.
    pub count: usize,
    /// Shortest run, ms.
    pub min_ms: i64,
    /// Median, ms.
    pub p50_ms: i64,
    /// 95th percentile, ms.
    pub p95_ms: i64,
    /// 99th percentile, ms.
    pub p99_ms: i64,
    /// Longest run, ms.
    pub max_ms: i64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// The result id of the longest run (ties: the larger id).
    pub max_result_id: String,
}

/// Per job, the duration statistics of the results finished at or after `since` (Unix ms),
/// slowest p95 first (equal p95s in job order).
///
/// The window is read in three parts: the hour `since` falls in, from the results (cut at
/// `since`, with ids for the longest run); the whole hours after it and before `now`'s,
/// merged into one sorted block per job; and the hours from `now`'s on, which still receive
/// runs. Each comes from `cache` when it holds it and is kept there when read, so a repeated
/// query reads only what changed.
pub async fn job_durations(
    readers: &SqlitePool,
    cache: &DurationCache,
    since: i64,
    now: i64,
) -> sqlx::Result<Vec<JobStats>> {
    let Hours {
        h0,
        first,
        last,
        open,
    } = Hours::of(since, now);
    // Right after a start, every dashboard asks for the same window at once: one request
    // reads what is missing while the others wait, then they all answer from memory
    // (without it, 8 clients right after catch-up over 500k results measured p99 704 ms).
    let building = if is_cold(cache, since, now) {
        Some(cache.build().await)
    } else {
        None
    };
    // After the wait: what the request ahead kept is no older than this.
    let ticket = cache.ticket();
    let mut whole: Vec<Arc<Runs>> = Vec::new();
    if first <= last {
        let merged = match cache.merged(first, last) {
            Some(m) => m,
            None => {
                cache.count_read();
                let hours = hours_with_runs(readers, first, last).await?;
                let parts = whole_hours(readers, cache, &hours).await?;
                let m = Arc::new(merge(&parts));
                cache.keep_merged(first, last, ticket, m.clone());
                m
            }
        };
        whole.push(merged);
    }
    let later = hours_with_runs(readers, open, i64::MAX).await?;
    whole.extend(whole_hours(readers, cache, &later).await?);
    let edge = match cache.hour(h0, Form::Rows) {
        Some(e) => e,
        None => {
            cache.count_read();
            let e = Arc::new(read_rows(readers, h0).await?);
            cache.keep_rows(h0, ticket, e.clone());
            e
        }
    };
    drop(building);

    let mut jobs: BTreeMap<&str, Window<'_>> = BTreeMap::new();
    for part in &whole {
        for (job, runs) in part.iter() {
            let w = jobs.entry(job).or_default();
            if let (Some(&low), Some((ms, id))) = (runs.ms.first(), &runs.max) {
                w.blocks.push(&runs.ms);
                w.sum += runs.sum_ms;
                w.min = w.min.min(low);
                w.offer(*ms, id);
            }
        }
    }
    for (job, runs) in edge.iter() {
        let w = jobs.entry(job).or_default();
        for ((&ms, &finished), id) in runs.ms.iter().zip(&runs.finished).zip(&runs.ids) {
            if finished >= since {
                w.cut.push(ms);
                w.sum += ms;
                w.min = w.min.min(ms);
                w.offer(ms, id);
            }
        }
    }
    let mut stats: Vec<JobStats> = jobs
        .into_iter()
        .filter_map(|(job, w)| w.stats(job))
        .collect();
    // Stable: equal p95s keep job order.
    stats.sort_by_key(|s| std::cmp::Reverse(s.p95_ms));
    Ok(stats)
}

/// The hours of a window: the one it starts in (`h0`, read from the results), the whole
/// hours after it (`first..=last`, merged) and the open hour on (`open`, still receiving).
struct Hours {
    h0: i64,
    first: i64,
    last: i64,
    open: i64,
}

impl Hours {
    fn of(since: i64, now: i64) -> Self {
        let h0 = hour_of_window_start(since);
        let open = now.div_euclid(HOUR_MS).max(h0 + 1);
        Self {
            h0,
            first: h0 + 1,
            last: open - 1,
            open,
        }
    }
}

/// Whether the window from `since` to `now` misses its merged whole hours or its start hour
/// in `cache` (what a request would read from the database).
fn is_cold(cache: &DurationCache, since: i64, now: i64) -> bool {
    let Hours {
        h0, first, last, ..
    } = Hours::of(since, now);
    (first <= last && cache.merged(first, last).is_none()) || cache.hour(h0, Form::Rows).is_none()
}

/// Reads the window from `since` to `now` into `cache` if it is cold; a warm one costs
/// nothing (its open hour is read by the requests that need it).
pub async fn warm(
    readers: &SqlitePool,
    cache: &DurationCache,
    since: i64,
    now: i64,
) -> sqlx::Result<()> {
    if is_cold(cache, since, now) {
        job_durations(readers, cache, since, now).await?;
    }
    Ok(())
}

/// The hour whose blocks straddle `since` (floor division, also before 1970).
fn hour_of_window_start(since: i64) -> i64 {
    since.div_euclid(HOUR_MS)
}

/// The hours in `first..=last` that hold duration blocks.
async fn hours_with_runs(readers: &SqlitePool, first: i64, last: i64) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT DISTINCT hour FROM duration_blocks WHERE hour >= ?1 AND hour <= ?2 ORDER BY hour",
    )
    .bind(first)
    .bind(last)
    .fetch_all(readers)
    .await
}

/// The runs of whole `hours`, from the cache or else from the blocks (then kept).
async fn whole_hours(
    readers: &SqlitePool,
    cache: &DurationCache,
    hours: &[i64],
) -> sqlx::Result<Vec<Arc<Runs>>> {
    let mut out = Vec::with_capacity(hours.len());
    let mut missing = Vec::new();
    for &hour in hours {
        match cache.hour(hour, Form::Blocks) {
            Some(runs) => out.push(runs),
            None => missing.push(hour),
        }
    }
    if !missing.is_empty() {
        let (through, read) = read_blocks(readers, &missing).await?;
        for (hour, runs) in read {
            let runs = Arc::new(runs);
            cache.keep_blocks(hour, through, runs.clone());
            out.push(runs);
        }
    }
    Ok(out)
}

/// Reads the blocks of `hours`: per hour and job, the sorted durations and longest run;
/// with the results stream's checkpoint they were read at (they hold every run up to it).
async fn read_blocks(
    readers: &SqlitePool,
    hours: &[i64],
) -> sqlx::Result<(u64, BTreeMap<i64, Runs>)> {
    let list = serde_json::to_string(hours).map_err(|e| sqlx::Error::Encode(e.into()))?;
    // All blocks in one value: rows are cheap for SQLite to concatenate and dear to hand
    // over one by one (measured: 17 ms of 28 for 5,000 blocks). One statement reads the
    // checkpoint and the blocks from the same snapshot.
    let (through, packed): (Option<i64>, Option<String>) = sqlx::query_as(
        "SELECT (SELECT last_seq FROM checkpoints WHERE stream = ?2), \
           group_concat(hour || ',' || length(CAST(job_id AS BLOB)) || ',' || job_id \
           || length(CAST(max_key AS BLOB)) || ',' || max_key \
           || length(CAST(vals AS BLOB)) || ',' || vals, '') \
         FROM duration_blocks WHERE hour IN (SELECT value FROM json_each(?1))",
    )
    .bind(list)
    .bind(crate::bus::streams::RESULTS.name)
    .fetch_one(readers)
    .await?;
    let mut hours: BTreeMap<i64, Runs> = BTreeMap::new();
    let mut packed = Packed(packed.as_deref().unwrap_or(""));
    while !packed.is_empty() {
        let (hour, job, max_key, vals) = packed
            .block()
            .ok_or_else(|| unreadable("duration blocks"))?;
        let runs = hours
            .entry(hour)
            .or_default()
            .entry(job.to_owned())
            .or_default();
        for (_, ms) in parse_vals(vals) {
            runs.ms.push(ms);
            runs.sum_ms += ms;
        }
        let (ms, id) = split_max_key(max_key);
        runs.offer_max(ms, id);
    }
    for runs in hours.values_mut().flat_map(|h| h.values_mut()) {
        runs.ms.sort_unstable();
    }
    Ok((through.map_or(0, |t| t.max(0) as u64), hours))
}

/// Reads every run that finished in `hour` from the results, with finish times and ids.
async fn read_rows(readers: &SqlitePool, hour: i64) -> sqlx::Result<Runs> {
    // `recorded_at` is `finished_at` for every result with a duration; the kind and success
    // terms let SQLite range over the (kind, success, recorded_at) index.
    let packed: Option<String> = sqlx::query_scalar(concat!(
        "SELECT group_concat(length(CAST(job_id AS BLOB)) || ',' || job_id \
           || length(CAST(result_id AS BLOB)) || ',' || result_id \
           || finished_at || ',' || ",
        run_ms_sql!(),
        " || ',', '') FROM execution_results \
         WHERE kind IN (SELECT kind FROM result_kinds) AND success IN (0, 1) \
           AND recorded_at >= ?1 AND recorded_at < ?2 AND finished_at >= ?1 \
           AND finished_at < ?2 AND job_id IS NOT NULL AND started_at IS NOT NULL"
    ))
    .bind(hour.saturating_mul(HOUR_MS))
    .bind(hour.saturating_add(1).saturating_mul(HOUR_MS))
    .fetch_one(readers)
    .await?;
    let mut rows: BTreeMap<&str, Vec<(i64, i64, &str)>> = BTreeMap::new();
    let mut packed = Packed(packed.as_deref().unwrap_or(""));
    while !packed.is_empty() {
        let (job, id, finished, ms) = packed.row().ok_or_else(|| unreadable("results"))?;
        rows.entry(job).or_default().push((ms, finished, id));
    }
    Ok(rows
        .into_iter()
        .map(|(job, mut runs)| {
            runs.sort_unstable();
            let mut r = JobRuns::default();
            for (ms, finished, id) in runs {
                r.ms.push(ms);
                r.finished.push(finished);
                r.ids.push(id.into());
                r.sum_ms += ms;
            }
            (job.to_owned(), r)
        })
        .collect())
}

fn unreadable(what: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("{what} could not be read back").into())
}

/// Merges the runs of several hours into one sorted block per job.
fn merge(parts: &[Arc<Runs>]) -> Runs {
    let mut merged = Runs::new();
    for part in parts {
        for (job, runs) in part.iter() {
            let m = merged.entry(job.clone()).or_default();
            m.ms.extend_from_slice(&runs.ms);
            m.sum_ms += runs.sum_ms;
            if let Some((ms, id)) = &runs.max {
                m.offer_max(*ms, id);
            }
        }
    }
    for m in merged.values_mut() {
        m.ms.sort_unstable();
    }
    merged
}

/// One job's runs in the window: sorted blocks, the cut hour's durations, and totals.
struct Window<'a> {
    blocks: Vec<&'a [i64]>,
    /// Durations of the hour `since` falls in, from `since` on (ascending: cut from a
    /// sorted hour).
    cut: Vec<i64>,
    sum: i64,
    min: i64,
    max: Option<(i64, &'a str)>,
}

impl Default for Window<'_> {
    fn default() -> Self {
        Self {
            blocks: Vec::new(),
            cut: Vec::new(),
            sum: 0,
            min: i64::MAX,
            max: None,
        }
    }
}

impl<'a> Window<'a> {
    /// Keeps the longest run, ties going to the larger result id.
    fn offer(&mut self, ms: i64, id: &'a str) {
        if self.max.is_none_or(|(m, i)| ms > m || (ms == m && id > i)) {
            self.max = Some((ms, id));
        }
    }

    /// The statistics, or `None` when no run fell in the window.
    fn stats(self, job_id: &str) -> Option<JobStats> {
        let (max_ms, max_id) = self.max?;
        let mut blocks = self.blocks;
        blocks.push(&self.cut);
        let count: usize = blocks.iter().map(|b| b.len()).sum();
        let at = |p: f64| select_sorted(&blocks, rank_index(count, p));
        Some(JobStats {
            job_id: job_id.to_owned(),
            count,
            min_ms: self.min,
            p50_ms: at(0.50)?,
            p95_ms: at(0.95)?,
            p99_ms: at(0.99)?,
            max_ms,
            mean_ms: self.sum as f64 / count as f64,
            max_result_id: max_id.to_owned(),
        })
    }
}

/// Reads the packed values of [`read_blocks`] and [`read_rows`]: integers ended by `,` and
/// strings as their length in bytes, `,`, then the bytes.
struct Packed<'a>(&'a str);

impl<'a> Packed<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn int(&mut self) -> Option<i64> {
        let (n, rest) = self.0.split_once(',')?;
        self.0 = rest;
        n.parse().ok()
    }

    fn field(&mut self) -> Option<&'a str> {
        let (len, rest) = self.0.split_once(',')?;
        let len: usize = len.parse().ok()?;
        let value = rest.get(..len)?;
        self.0 = &rest[len..];
        Some(value)
    }

    /// `hour,` then job id, max_key and vals.
    fn block(&mut self) -> Option<(i64, &'a str, &'a str, &'a str)> {
        Some((self.int()?, self.field()?, self.field()?, self.field()?))
    }

    /// Job id and result id, then `finished_at,ms,`.
    fn row(&mut self) -> Option<(&'a str, &'a str, i64, i64)> {
        Some((self.field()?, self.field()?, self.int()?, self.int()?))
    }
}

/// The `finished_at:ms` pairs of a block's `vals`.
fn parse_vals(vals: &str) -> impl Iterator<Item = (i64, i64)> + '_ {
    vals.split(',').filter_map(|pair| {
        let (f, ms) = pair.split_once(':')?;
        Some((f.parse().ok()?, ms.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_read_back_as_written() {
        assert_eq!(split_max_key("000000000500b-500"), (500, "b-500"));
        let pairs: Vec<(i64, i64)> = parse_vals("10:5,20:0").collect();
        assert_eq!(pairs, [(10, 5), (20, 0)]);
        let mut packed =
            Packed("7,3,a,b15,000000000005r,13,1:58,5,job\u{e9}13,00000000000113,0:19,9,short");
        assert_eq!(packed.block(), Some((7, "a,b", "000000000005r,1", "1:5")));
        assert_eq!(
            packed.block(),
            Some((8, "job\u{e9}", "0000000000011", "0:1")),
            "lengths are bytes"
        );
        assert_eq!(packed.block(), None, "a short record is refused");
        let mut rows = Packed("1,j3,r-110,4,20,0,");
        assert_eq!(rows.row(), Some(("j", "r-1", 10, 4)));
        assert_eq!(rows.row(), None, "a length past the end is refused");
        assert!(Packed("x,").int().is_none());
    }

    #[test]
    fn the_writer_and_the_reader_agree_on_max_key() {
        assert_eq!(max_key(500, "b-500"), "000000000500b-500");
        assert_eq!(split_max_key(&max_key(7, "r")), (7, "r"));
        assert_eq!(run_ms(10, 4), 0, "a finish before the start counts as 0 ms");
    }
}
