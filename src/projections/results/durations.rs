//! Duration blocks: how long each job's runs took, per (hour, job), packed so that
//! `/results/durations` reads a few thousand values instead of millions of rows.
//!
//! This module is the format's one home: its writer ([`insert_blocks`],
//! [`insert_blocks_from_rows`]), its compactor ([`compact_duration_blocks`]) and its reader
//! ([`job_durations`]).
//!
//! # Format
//! A row of `duration_blocks` holds, for one `hour` (`finished_at / 3600000`) and `job_id`:
//! `vals`, the runs as `finished_at:ms` pairs joined by `,` (ms = `finished_at - started_at`,
//! clamped at 0); `n` and `sum_ms`; and `max_key`, the longest run as its 12-digit
//! zero-padded ms followed by its result id, so that `MAX(max_key)` finds the longest run
//! with ties going to the larger id. An (hour, job) may have several blocks until the
//! compactor merges them. Results without a job, start or finish have no duration.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};

use super::ResultEvent;
use crate::db::rows_per_statement;

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

/// The hour bucket of a finish time, as SQLite's integer division computes it.
fn hour_of(ms: i64) -> i64 {
    ms / 3_600_000
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
        let (Some(job), Some(start), Some(finish)) =
            (e.job_id.as_deref(), e.started_at, e.finished_at)
        else {
            continue;
        };
        let ms = run_ms(start, finish);
        let hour = hour_of(finish);
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

/// Duration statistics of one job over a window (nearest-rank percentiles).
#[derive(Debug, Clone, PartialEq)]
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
    pub max_result_id: Option<String>,
}

/// Per job, the duration statistics of the results finished at or after `since` (Unix ms),
/// slowest p95 first (equal p95s in job order).
pub async fn job_durations(readers: &SqlitePool, since: i64) -> sqlx::Result<Vec<JobStats>> {
    let h0 = hour_of_window_start(since);
    // Blocks of hours after since's hour lie wholly in the window; since's own hour is
    // filtered value by value.
    // All blocks of the window in one value: rows are cheap for SQLite to concatenate and
    // dear to hand over one by one (measured: 17 ms of 28 for 5,000 blocks).
    let packed: Option<String> = sqlx::query_scalar(
        "SELECT group_concat(hour || ',' || length(CAST(job_id AS BLOB)) || ',' || job_id \
           || length(CAST(max_key AS BLOB)) || ',' || max_key \
           || length(CAST(vals AS BLOB)) || ',' || vals, '') \
         FROM duration_blocks WHERE hour >= ?1",
    )
    .bind(h0)
    .fetch_one(readers)
    .await?;
    let mut jobs: BTreeMap<String, JobDurations> = BTreeMap::new();
    for block in Blocks(packed.as_deref().unwrap_or("")) {
        let Some((hour, job, max_key, vals)) = block else {
            return Err(sqlx::Error::Decode(
                "duration blocks could not be read back".into(),
            ));
        };
        let j = jobs.entry(job.to_owned()).or_default();
        if hour > h0 {
            j.values.extend(parse_vals(vals).map(|(_, ms)| ms));
            let (ms, id) = split_max_key(max_key);
            j.offer(ms, Some(id.to_owned()));
        } else {
            for (_, ms) in parse_vals(vals).filter(|(f, _)| *f >= since) {
                j.values.push(ms);
                j.edge_max = j.edge_max.max(ms);
            }
        }
    }
    if jobs
        .values()
        .any(|j| j.edge_max >= 0 && j.edge_max >= j.max_ms)
    {
        // Some job's longest run finished in since's own hour, whose blocks are filtered
        // value by value and carry no ids: take each job's longest run there from the rows,
        // in the blocks' max_key form.
        let edge: Vec<(String, String)> = sqlx::query_as(concat!(
            "SELECT job_id, MAX(",
            max_key_sql!(),
            ") FROM execution_results \
             WHERE kind IN (SELECT kind FROM result_kinds) AND success IN (0, 1) \
             AND recorded_at >= ?1 AND recorded_at < ?2 AND finished_at >= ?1 \
             AND job_id IS NOT NULL AND started_at IS NOT NULL GROUP BY job_id"
        ))
        .bind(since)
        .bind((h0 + 1) * 3_600_000)
        .fetch_all(readers)
        .await?;
        for (job, key) in edge {
            if let Some(j) = jobs.get_mut(&job) {
                let (ms, id) = split_max_key(&key);
                j.offer(ms, Some(id.to_owned()));
            }
        }
    }
    let mut stats: Vec<JobStats> = jobs
        .into_iter()
        .filter_map(|(job_id, j)| j.stats(job_id))
        .collect();
    // Stable: equal p95s keep job order.
    stats.sort_by_key(|s| std::cmp::Reverse(s.p95_ms));
    Ok(stats)
}

/// The hour whose blocks straddle `since` (floor division, also before 1970).
fn hour_of_window_start(since: i64) -> i64 {
    since.div_euclid(3_600_000)
}

/// Durations of one job in the window.
struct JobDurations {
    values: Vec<i64>,
    max_ms: i64,
    max_id: Option<String>,
    /// Longest duration among the values of since's own hour (-1: none).
    edge_max: i64,
}

impl Default for JobDurations {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            max_ms: -1,
            max_id: None,
            edge_max: -1,
        }
    }
}

impl JobDurations {
    /// Keeps the longest run, ties going to the larger result id.
    fn offer(&mut self, ms: i64, id: Option<String>) {
        if ms > self.max_ms || (ms == self.max_ms && id > self.max_id) {
            self.max_ms = ms;
            self.max_id = id;
        }
    }

    /// The statistics, or `None` when no run fell in the window.
    fn stats(mut self, job_id: String) -> Option<JobStats> {
        let min_ms = *self.values.iter().min()?;
        let count = self.values.len();
        let sum: i64 = self.values.iter().sum();
        Some(JobStats {
            job_id,
            count,
            min_ms,
            p50_ms: select_rank(&mut self.values, 0.50),
            p95_ms: select_rank(&mut self.values, 0.95),
            p99_ms: select_rank(&mut self.values, 0.99),
            max_ms: self.max_ms,
            mean_ms: sum as f64 / count as f64,
            max_result_id: self.max_id,
        })
    }
}

/// Reads packed duration blocks: `hour,len,job_id len,max_key len,vals` repeated, lengths
/// in bytes. Yields `None` (and stops) on a malformed record.
struct Blocks<'a>(&'a str);

impl<'a> Blocks<'a> {
    fn field(&mut self) -> Option<&'a str> {
        let (len, rest) = self.0.split_once(',')?;
        let len: usize = len.parse().ok()?;
        let value = rest.get(..len)?;
        self.0 = &rest[len..];
        Some(value)
    }

    fn record(&mut self) -> Option<(i64, &'a str, &'a str, &'a str)> {
        let (hour, rest) = self.0.split_once(',')?;
        self.0 = rest;
        let hour = hour.parse().ok()?;
        Some((hour, self.field()?, self.field()?, self.field()?))
    }
}

impl<'a> Iterator for Blocks<'a> {
    type Item = Option<(i64, &'a str, &'a str, &'a str)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let record = self.record();
        if record.is_none() {
            self.0 = "";
        }
        Some(record)
    }
}

/// The `finished_at:ms` pairs of a block's `vals`.
fn parse_vals(vals: &str) -> impl Iterator<Item = (i64, i64)> + '_ {
    vals.split(',').filter_map(|pair| {
        let (f, ms) = pair.split_once(':')?;
        Some((f.parse().ok()?, ms.parse().ok()?))
    })
}

/// Nearest-rank percentile of sorted values.
pub fn nearest_rank(sorted: &[i64], p: f64) -> i64 {
    sorted[rank_index(sorted.len(), p)]
}

/// The 0-based index of the nearest rank of `p` among `n` values: ceil(p·n) − 1, computed in
/// integers so that 0.95 × 20 is exactly 19.
fn rank_index(n: usize, p: f64) -> usize {
    let percent = (p * 100.0).round() as usize;
    ((percent * n).div_ceil(100)).clamp(1, n) - 1
}

/// The nearest-rank percentile of unsorted values, in linear time (reorders them).
pub fn select_rank(values: &mut [i64], p: f64) -> i64 {
    let i = rank_index(values.len(), p);
    *values.select_nth_unstable(i).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_matches_hand_computed_values() {
        let v: Vec<i64> = (1..=10).map(|x| x * 10).collect();
        assert_eq!(nearest_rank(&v, 0.50), 50);
        assert_eq!(nearest_rank(&v, 0.95), 100);
        assert_eq!(nearest_rank(&v, 0.10), 10);
        assert_eq!(nearest_rank(&[7], 0.99), 7);
        let v: Vec<i64> = (1..=200).collect();
        assert_eq!(nearest_rank(&v, 0.99), 198);
        assert_eq!(nearest_rank(&v, 0.95), 190);
    }

    #[test]
    fn selection_agrees_with_sorting() {
        let mut v: Vec<i64> = (0..1_000).map(|i| (i * 7_919) % 1_009).collect();
        let mut sorted = v.clone();
        sorted.sort_unstable();
        for p in [0.5, 0.95, 0.99] {
            assert_eq!(select_rank(&mut v, p), nearest_rank(&sorted, p));
        }
        assert_eq!(rank_index(20, 0.95), 18, "ceil(19) - 1, no float drift");
        assert_eq!(split_max_key("000000000500b-500"), (500, "b-500"));
        let pairs: Vec<(i64, i64)> = parse_vals("10:5,20:0").collect();
        assert_eq!(pairs, [(10, 5), (20, 0)]);
        let packed = "7,3,a,b15,000000000005r,13,1:58,5,job\u{e9}13,00000000000113,0:19,9,short";
        let blocks: Vec<_> = Blocks(packed).collect();
        assert_eq!(
            blocks,
            [
                Some((7, "a,b", "000000000005r,1", "1:5")),
                Some((8, "job\u{e9}", "0000000000011", "0:1")),
                None,
            ],
            "lengths are bytes; a bad record stops the reading"
        );
    }

    #[test]
    fn the_writer_and_the_reader_agree_on_max_key() {
        assert_eq!(max_key(500, "b-500"), "000000000500b-500");
        assert_eq!(split_max_key(&max_key(7, "r")), (7, "r"));
        assert_eq!(run_ms(10, 4), 0, "a finish before the start counts as 0 ms");
    }
}
