//! `result.<kind>.<agent_id>` → `execution_results`.
//!
//! `result_id` is the identity: the first event with a given id wins and later ones are
//! no-ops, so re-published or replayed results are counted once.

use serde::Deserialize;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use crate::bus::envelope;
use crate::bus::streams::{self, StreamSpec};
use crate::bus::subjects;
use crate::projector::{Message, Projection};
use crate::window::UnixMs;

/// Longest `result_id` / `job_id` accepted.
pub const MAX_ID_LEN: usize = 256;

/// The `data` of a result event.
#[derive(Debug, Deserialize)]
struct ResultData {
    result_id: String,
    #[serde(default)]
    job_id: Option<String>,
    #[serde(default)]
    exit_code: Option<i64>,
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    started_at: Option<UnixMs>,
    #[serde(default)]
    finished_at: Option<UnixMs>,
    #[serde(default)]
    workload_id: Option<String>,
    #[serde(default)]
    reference: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    /// Read only to log it: deploy errors can carry registry credentials.
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// What the deploy ledger records of a `result.deploy.*` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deploy {
    /// The workload deployed.
    pub workload_id: String,
    /// The (pinned) image reference.
    pub reference: Option<String>,
    /// `deploy` or `rollback`.
    pub reason: String,
}

/// Longest image reference accepted.
pub const MAX_REFERENCE_LEN: usize = 512;
/// What a failed deploy's error reads as, wherever it is shown.
pub const DEPLOY_ERROR_MARKER: &str = "deploy failed (see server logs)";

/// A validated execution result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultEvent {
    /// Identity of the result.
    pub result_id: String,
    /// Subject kind token (traffic, file, email, job, deploy…).
    pub kind: String,
    /// Reporting agent (subject token).
    pub agent_id: String,
    /// The job that produced it.
    pub job_id: Option<String>,
    /// Process exit code, when reported.
    pub exit_code: Option<i64>,
    /// Reported `success`, else `exit_code == 0`.
    pub success: bool,
    /// Start time, Unix ms.
    pub started_at: Option<i64>,
    /// Finish time, Unix ms.
    pub finished_at: Option<i64>,
    /// The row's time: finished_at, else envelope time, else publish time.
    pub recorded_at: i64,
    /// Stream sequence.
    pub seq: u64,
    /// Ledger fields, for `deploy` results.
    pub deploy: Option<Deploy>,
}

/// Validates one result message.
pub fn decode(msg: &Message<'_>) -> Result<ResultEvent, String> {
    let [_, kind, agent_id] = subjects::split::<3>(msg.subject, "result").ok_or_else(|| {
        format!(
            "subject must be result.<kind>.<agent_id> with tokens of {}",
            subjects::TOKEN_FORM
        )
    })?;
    let env = envelope::decode::<ResultData>(msg.payload)?;
    let d = env.data;
    if d.result_id.is_empty() || d.result_id.len() > MAX_ID_LEN {
        return Err(format!(
            "data.result_id must be 1 to {MAX_ID_LEN} characters"
        ));
    }
    if d.job_id.as_ref().is_some_and(|j| j.len() > MAX_ID_LEN) {
        return Err(format!(
            "data.job_id must be at most {MAX_ID_LEN} characters"
        ));
    }
    if d.exit_code.is_some_and(|c| i32::try_from(c).is_err()) {
        return Err("data.exit_code is out of the 32-bit range".into());
    }
    let success = match (d.success, d.exit_code) {
        (Some(s), _) => s,
        (None, Some(code)) => code == 0,
        (None, None) => return Err("data needs `success` or `exit_code`".into()),
    };
    let deploy = if kind == "deploy" {
        let workload_id = d
            .workload_id
            .filter(|w| subjects::is_token(w))
            .ok_or_else(|| {
                format!(
                    "a deploy result needs data.workload_id of {}",
                    subjects::TOKEN_FORM
                )
            })?;
        if d.reference
            .as_ref()
            .is_some_and(|r| r.len() > MAX_REFERENCE_LEN)
        {
            return Err(format!(
                "data.reference must be at most {MAX_REFERENCE_LEN} bytes"
            ));
        }
        let reason = d.reason.unwrap_or_else(|| "deploy".to_owned());
        if reason != "deploy" && reason != "rollback" {
            return Err("data.reason must be deploy or rollback".into());
        }
        if let Some(error) = &d.error {
            tracing::debug!(result_id = %d.result_id, workload_id, %error, "deploy error text");
        }
        Some(Deploy {
            workload_id,
            reference: d.reference,
            reason,
        })
    } else {
        None
    };
    let started_at = d.started_at.map(|t| t.0);
    let finished_at = d.finished_at.map(|t| t.0);
    Ok(ResultEvent {
        result_id: d.result_id,
        kind: kind.to_owned(),
        agent_id: agent_id.to_owned(),
        job_id: d.job_id,
        exit_code: d.exit_code,
        success,
        started_at,
        finished_at,
        recorded_at: finished_at.or(env.time_ms).unwrap_or(msg.published_ms),
        seq: msg.seq,
        deploy,
    })
}

/// The RESULTS stream's projection.
#[derive(Debug, Clone, Copy)]
pub struct ResultsProjection {
    /// Deploy ledger entries kept per workload.
    pub deploy_keep: u32,
}

impl Default for ResultsProjection {
    fn default() -> Self {
        Self { deploy_keep: 50 }
    }
}

/// Replaces `data.error` in a payload about to be dead-lettered.
pub fn scrub_error(payload: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let error = v.get_mut("data")?.get_mut("error")?;
    *error = serde_json::Value::String(DEPLOY_ERROR_MARKER.to_owned());
    Some(v.to_string().into_bytes())
}

/// Columns bound per row; SQLite allows 32766 variables per statement.
const COLUMNS: usize = 10;
const ROWS_PER_STATEMENT: usize = 32_000 / COLUMNS;

impl Projection for ResultsProjection {
    type Event = ResultEvent;

    fn stream(&self) -> StreamSpec {
        streams::RESULTS
    }

    fn decode(&self, msg: &Message<'_>) -> Result<ResultEvent, String> {
        decode(msg)
    }

    fn dead_letter_payload<'a>(&self, payload: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        match scrub_error(payload) {
            Some(scrubbed) => std::borrow::Cow::Owned(scrubbed),
            None => std::borrow::Cow::Borrowed(payload),
        }
    }

    async fn apply(&self, conn: &mut SqliteConnection, events: &[ResultEvent]) -> sqlx::Result<()> {
        // Rows this batch inserts get rowids above the current largest; duplicates of known
        // result_ids insert nothing, so the duration blocks count each result once.
        let rowid_before: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(rowid), 0) FROM execution_results")
                .fetch_one(&mut *conn)
                .await?;
        let mut all_new = true;
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO execution_results (result_id, kind, agent_id, job_id, exit_code, \
                 success, started_at, finished_at, recorded_at, seq) ",
            );
            q.push_values(chunk, |mut b, e| {
                b.push_bind(e.result_id.as_str())
                    .push_bind(e.kind.as_str())
                    .push_bind(e.agent_id.as_str())
                    .push_bind(e.job_id.as_deref())
                    .push_bind(e.exit_code)
                    .push_bind(e.success)
                    .push_bind(e.started_at)
                    .push_bind(e.finished_at)
                    .push_bind(e.recorded_at)
                    .push_bind(e.seq as i64);
            });
            q.push(" ON CONFLICT (result_id) DO NOTHING");
            let inserted = q.build().execute(&mut *conn).await?.rows_affected();
            all_new &= inserted == chunk.len() as u64;
        }
        // A handful of kinds per batch: a linear scan beats hashing here.
        let mut kinds: Vec<&str> = Vec::new();
        for e in events {
            if !kinds.contains(&e.kind.as_str()) {
                kinds.push(&e.kind);
            }
        }
        if !kinds.is_empty() {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT OR IGNORE INTO result_kinds (kind) ");
            q.push_values(&kinds, |mut b, k| {
                b.push_bind(*k);
            });
            q.build().execute(&mut *conn).await?;
        }
        if all_new {
            insert_duration_blocks(conn, events).await?;
            upsert_counts(conn, events).await?;
        } else {
            sqlx::query(
                "INSERT INTO result_counts (kind, success, minute, n) \
                 SELECT kind, success, recorded_at / 60000, COUNT(*) FROM execution_results \
                 WHERE rowid > ?1 GROUP BY kind, success, recorded_at / 60000 \
                 ON CONFLICT (kind, success, minute) DO UPDATE SET n = n + excluded.n",
            )
            .bind(rowid_before)
            .execute(&mut *conn)
            .await?;
            // Some result_ids were known already: let SQLite build the blocks from the rows
            // this batch actually inserted.
            sqlx::query(
                "INSERT INTO duration_blocks (hour, job_id, vals, n, sum_ms, max_key) \
                 SELECT finished_at / 3600000, job_id, \
                   group_concat(finished_at || ':' || MAX(0, finished_at - started_at), ','), \
                   COUNT(*), SUM(MAX(0, finished_at - started_at)), \
                   MAX(printf('%012d', MAX(0, finished_at - started_at)) || result_id) \
                 FROM execution_results \
                 WHERE rowid > ?1 AND job_id IS NOT NULL AND started_at IS NOT NULL \
                   AND finished_at IS NOT NULL \
                 GROUP BY finished_at / 3600000, job_id",
            )
            .bind(rowid_before)
            .execute(&mut *conn)
            .await?;
        }
        apply_deploys(conn, events, self.deploy_keep).await
    }

    async fn reset(&self, conn: &mut SqliteConnection) -> sqlx::Result<()> {
        super::delete_all(
            conn,
            &[
                "execution_results",
                "result_kinds",
                "result_counts",
                "duration_blocks",
                "deploy_history",
            ],
        )
        .await
    }
}

/// Adds a batch of new results to the per-minute counts.
async fn upsert_counts(conn: &mut SqliteConnection, events: &[ResultEvent]) -> sqlx::Result<()> {
    let mut counts: std::collections::HashMap<(&str, bool, i64), i64> = Default::default();
    for e in events {
        *counts
            .entry((e.kind.as_str(), e.success, e.recorded_at / 60_000))
            .or_default() += 1;
    }
    let rows: Vec<_> = counts.into_iter().collect();
    for chunk in rows.chunks(32_000 / 4) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO result_counts (kind, success, minute, n) ");
        q.push_values(chunk, |mut b, ((kind, success, minute), n)| {
            b.push_bind(*kind)
                .push_bind(*success)
                .push_bind(*minute)
                .push_bind(*n);
        });
        q.push(" ON CONFLICT (kind, success, minute) DO UPDATE SET n = n + excluded.n");
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Exactly how many results were recorded in `from..=to` (Unix ms), optionally of one kind
/// and outcome: whole minutes from `result_counts`, the two partial minutes at the edges
/// from the (kind, success, recorded_at) index.
pub async fn count_results(
    readers: &sqlx::SqlitePool,
    kind: Option<&str>,
    success: Option<bool>,
    from: i64,
    to: i64,
) -> sqlx::Result<i64> {
    if to < from {
        return Ok(0);
    }
    // Whole minutes [first, last) lie inside the window; the rest is counted row by row.
    let first = from.div_euclid(60_000) + i64::from(from.rem_euclid(60_000) != 0);
    let last = (to + 1).div_euclid(60_000);
    let kinds = if kind.is_some() {
        "k.kind = ?1"
    } else {
        "k.kind IN (SELECT kind FROM result_kinds)"
    };
    let outcome = if success.is_some() {
        "success = ?2"
    } else {
        "success IN (0, 1)"
    };
    let rows = |lo: &str, hi: &str| {
        format!(
            "(SELECT COALESCE(SUM((SELECT COUNT(*) FROM execution_results r \
               WHERE r.kind = k.kind AND r.{outcome} AND r.recorded_at >= {lo} \
               AND r.recorded_at <= {hi})), 0) \
             FROM (SELECT kind FROM result_kinds) k WHERE {kinds})"
        )
    };
    let sql = if first < last {
        format!(
            "SELECT (SELECT COALESCE(SUM(n), 0) FROM result_counts k \
               WHERE {kinds} AND k.{outcome} AND k.minute >= ?5 AND k.minute < ?6) \
             + {} + {}",
            rows("?3", "?5 * 60000 - 1"),
            rows("?6 * 60000", "?4"),
        )
    } else {
        format!("SELECT {}", rows("?3", "?4"))
    };
    sqlx::query_scalar(&sql)
        .bind(kind)
        .bind(success)
        .bind(from)
        .bind(to)
        .bind(first)
        .bind(last)
        .fetch_one(readers)
        .await
}

/// The hour bucket of a finish time, as SQLite's integer division computes it.
fn hour_of(ms: i64) -> i64 {
    ms / 3_600_000
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
async fn insert_duration_blocks(
    conn: &mut SqliteConnection,
    events: &[ResultEvent],
) -> sqlx::Result<()> {
    use std::fmt::Write as _;
    let mut blocks: Vec<Block<'_>> = Vec::new();
    let mut index: std::collections::HashMap<(i64, &str), usize> = Default::default();
    for e in events {
        let (Some(job), Some(start), Some(finish)) =
            (e.job_id.as_deref(), e.started_at, e.finished_at)
        else {
            continue;
        };
        let ms = (finish - start).max(0);
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
    for chunk in blocks.chunks(32_000 / 6) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO duration_blocks (hour, job_id, vals, n, sum_ms, max_key) ",
        );
        q.push_values(chunk, |mut row, b| {
            row.push_bind(b.hour)
                .push_bind(b.job_id)
                .push_bind(b.vals.as_str())
                .push_bind(b.n)
                .push_bind(b.sum_ms)
                .push_bind(format!("{:012}{}", b.max_ms, b.max_id));
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Merges the duration blocks of up to `max_groups` (hour, job) pairs that have more than one
/// block into a single block each, one short transaction per pair so the projector is never
/// held back for long; returns the pairs merged.
pub async fn compact_duration_blocks(
    writer: &sqlx::SqlitePool,
    max_groups: i64,
) -> sqlx::Result<u64> {
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

/// Records deploy results in the ledger and keeps the newest `keep` per workload.
async fn apply_deploys(
    conn: &mut SqliteConnection,
    events: &[ResultEvent],
    keep: u32,
) -> sqlx::Result<()> {
    let deploys: Vec<(&ResultEvent, &Deploy)> = events
        .iter()
        .filter_map(|e| e.deploy.as_ref().map(|d| (e, d)))
        .collect();
    if deploys.is_empty() {
        return Ok(());
    }
    for chunk in deploys.chunks(32_000 / 9) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO deploy_history (deploy_id, workload_id, agent_id, reference, reason, \
             success, error_marker, recorded_at, seq) ",
        );
        q.push_values(chunk, |mut b, (e, d)| {
            b.push_bind(e.result_id.as_str())
                .push_bind(d.workload_id.as_str())
                .push_bind(e.agent_id.as_str())
                .push_bind(d.reference.as_deref())
                .push_bind(d.reason.as_str())
                .push_bind(e.success)
                .push_bind((!e.success).then_some(DEPLOY_ERROR_MARKER))
                .push_bind(e.recorded_at)
                .push_bind(e.seq as i64);
        });
        q.push(" ON CONFLICT (deploy_id) DO NOTHING");
        q.build().execute(&mut *conn).await?;
    }
    let mut workloads: Vec<&str> = deploys
        .iter()
        .map(|(_, d)| d.workload_id.as_str())
        .collect();
    workloads.sort_unstable();
    workloads.dedup();
    crate::projections::heartbeats::insert_workloads(conn, &workloads).await?;
    for w in workloads {
        sqlx::query(
            "DELETE FROM deploy_history WHERE workload_id = ?1 AND deploy_id NOT IN \
             (SELECT deploy_id FROM deploy_history WHERE workload_id = ?1 \
              ORDER BY recorded_at DESC, seq DESC LIMIT ?2)",
        )
        .bind(w)
        .bind(i64::from(keep))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg<'a>(subject: &'a str, payload: &'a [u8]) -> Message<'a> {
        Message {
            seq: 7,
            subject,
            payload,
            published_ms: 1_000,
        }
    }

    #[test]
    fn success_comes_from_success_or_exit_code() {
        let a = decode(&msg(
            "result.traffic.a1",
            br#"{"id":"e","data":{"result_id":"r","exit_code":3}}"#,
        ))
        .unwrap();
        assert!(!a.success);
        let b = decode(&msg(
            "result.traffic.a1",
            br#"{"id":"e","data":{"result_id":"r","exit_code":3,"success":true}}"#,
        ))
        .unwrap();
        assert!(b.success);
        let c = decode(&msg(
            "result.traffic.a1",
            br#"{"id":"e","data":{"result_id":"r"}}"#,
        ));
        assert!(c.unwrap_err().contains("success"));
    }

    #[test]
    fn row_time_prefers_finished_then_envelope_then_publish() {
        let p = br#"{"id":"e","time":"1970-01-01T00:00:02Z","data":{"result_id":"r","success":true,"finished_at":"1970-01-01T00:00:03Z"}}"#;
        assert_eq!(decode(&msg("result.job.a", p)).unwrap().recorded_at, 3_000);
        let p =
            br#"{"id":"e","time":"1970-01-01T00:00:02Z","data":{"result_id":"r","success":true}}"#;
        assert_eq!(decode(&msg("result.job.a", p)).unwrap().recorded_at, 2_000);
        let p = br#"{"id":"e","data":{"result_id":"r","success":true}}"#;
        assert_eq!(decode(&msg("result.job.a", p)).unwrap().recorded_at, 1_000);
    }

    #[test]
    fn rejects_hostile_input_with_a_reason() {
        let long_id = format!(
            r#"{{"id":"e","data":{{"result_id":"{}","success":true}}}}"#,
            "x".repeat(300)
        );
        let cases: Vec<(&str, &[u8])> = vec![
            ("result.traffic.a", b"{ this is not json"),
            ("result.traffic.a", b"[1,2,3]"),
            ("result.traffic.a", b"\x00\x01\xff"),
            ("result.traffic.a", br#"{"id":"e","data":{"success":true}}"#),
            (
                "result.traffic.a",
                br#"{"id":"e","data":{"result_id":5,"success":true}}"#,
            ),
            (
                "result.traffic.a",
                br#"{"id":"e","data":{"result_id":"r","exit_code":"0"}}"#,
            ),
            (
                "result.traffic.a",
                br#"{"id":"e","data":{"result_id":"r","exit_code":99999999999}}"#,
            ),
            (
                "result.traffic.a",
                br#"{"id":"e","data":{"result_id":"r","success":true,"finished_at":"soon"}}"#,
            ),
            ("result.traffic.a", long_id.as_bytes()),
            (
                "result.traffic",
                br#"{"id":"e","data":{"result_id":"r","success":true}}"#,
            ),
            (
                "result.traffic.a.b",
                br#"{"id":"e","data":{"result_id":"r","success":true}}"#,
            ),
        ];
        for (subject, payload) in cases {
            let err = decode(&msg(subject, payload)).unwrap_err();
            assert!(!err.is_empty(), "{subject} {payload:?}");
        }
    }
}
