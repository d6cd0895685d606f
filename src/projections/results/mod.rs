//! `result.<kind>.<agent_id>` → `execution_results`.
//!
//! `result_id` is the identity: the first event with a given id wins and later ones are
//! no-ops, so re-published or replayed results are counted once. The read model's
//! derived tables each have their own module: [`counts`] (per-minute counts), [`durations`]
//! (duration blocks) and [`deploys`] (the deploy ledger).

pub mod counts;
pub mod deploys;
pub mod durations;
pub mod runs;

use std::collections::HashSet;
use std::sync::Arc;

use serde::Deserialize;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use crate::bus::envelope;
use crate::bus::streams::{self, StreamSpec};
use crate::bus::subjects;
use crate::db::rows_per_statement;
use crate::projector::{Message, Projection, Table};
use crate::retention::Class;
use crate::window::UnixMs;
pub use counts::count_results;
pub use deploys::{scrub_error, Deploy, DEPLOY_ERROR_MARKER};
pub use durations::{compact_duration_blocks, DurationCache};

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
    /// The alert a run answered ([`runs`]).
    #[serde(default)]
    links: Option<runs::LinksData>,
    #[serde(default)]
    run_state: Option<String>,
    #[serde(default)]
    repair: Option<String>,
    #[serde(default)]
    verified: Option<bool>,
}

/// Longest image reference accepted.
pub const MAX_REFERENCE_LEN: usize = 512;

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
    /// JetStream publish time, Unix ms: what retention judges expiry against.
    pub published_ms: i64,
    /// Stream sequence.
    pub seq: u64,
    /// Ledger fields, for `deploy` results.
    pub deploy: Option<Deploy>,
    /// The alert it answered, for runs linked to one.
    pub run: Option<runs::Run>,
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
    let run = runs::decode(d.links, d.run_state, d.repair, d.verified)?;
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
        published_ms: msg.published_ms,
        seq: msg.seq,
        deploy,
        run,
    })
}

/// The RESULTS stream's projection.
#[derive(Debug, Clone)]
pub struct ResultsProjection {
    /// Deploy ledger entries kept per workload.
    pub deploy_keep: u32,
    /// Told the hours of committed runs.
    pub durations: Arc<DurationCache>,
    /// The results' retention in ms (`None`: for ever), for the groups of runs linked to
    /// alerts ([`runs`]).
    pub retention_ms: Option<i64>,
}

impl Default for ResultsProjection {
    fn default() -> Self {
        Self {
            deploy_keep: 50,
            durations: Arc::default(),
            retention_ms: None,
        }
    }
}

impl ResultsProjection {
    /// The runs linked to alerts and the deploy ledger entries of a batch.
    async fn links_and_deploys(
        &self,
        conn: &mut SqliteConnection,
        events: &[ResultEvent],
    ) -> sqlx::Result<()> {
        let linked: Vec<runs::NewRun<'_>> = events
            .iter()
            .filter_map(|e| {
                Some(runs::NewRun {
                    result_id: &e.result_id,
                    seq: e.seq,
                    agent_id: &e.agent_id,
                    recorded_at: e.recorded_at,
                    published_ms: e.published_ms,
                    run: e.run.as_ref()?,
                })
            })
            .collect();
        runs::insert(conn, &linked, self.retention_ms).await?;
        deploys::apply(conn, events, self.deploy_keep).await
    }
}

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
        // result_ids insert nothing, so counts and duration blocks count each result once.
        let rowid_before: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(rowid), 0) FROM execution_results")
                .fetch_one(&mut *conn)
                .await?;
        let all_new = insert_rows(conn, events).await?;
        insert_kinds(conn, events).await?;
        if all_new {
            durations::insert_blocks(conn, events).await?;
            counts::add_batch(conn, events).await?;
        } else {
            // Some result_ids were known already: count what this batch actually inserted.
            if let Some(last) = events.last() {
                self.durations.inexact(last.seq);
            }
            counts::add_rows_since(conn, rowid_before).await?;
            durations::insert_blocks_from_rows(conn, rowid_before).await?;
        }
        self.links_and_deploys(conn, events).await
    }

    async fn reapply(
        &self,
        conn: &mut SqliteConnection,
        events: &[ResultEvent],
    ) -> sqlx::Result<()> {
        // Both insert each run and deploy once, by result id: a second time is a no-op.
        self.links_and_deploys(conn, events).await
    }

    fn committed(&self, events: &[ResultEvent]) {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return;
        };
        let mut runs: Vec<durations::cache::AddedRun<'_>> = Vec::new();
        let mut hours: Vec<i64> = Vec::new();
        for e in events {
            if let (Some(run), Some(finish)) = (durations::added_run(e), e.finished_at) {
                runs.push(run);
                hours.extend(durations::hours_of(finish));
            }
        }
        if runs.is_empty() {
            return;
        }
        hours.sort_unstable();
        hours.dedup();
        self.durations.committed(&durations::cache::Committed {
            first: first.seq,
            last: last.seq,
            runs,
            hours,
        });
    }

    fn tables(&self) -> &'static [Table] {
        // duration_blocks are left out: a cache of execution_results whose blocks are
        // merged in the background, at moments that differ between replicas. The deploy
        // ledger keeps its last entries per workload instead of a time.
        const TABLES: &[Table] = &[
            // Pruned kind by kind through the (kind, success, recorded_at) index.
            Table::kept(
                "execution_results",
                "result_id",
                Class::Results,
                "recorded_at >= ?1",
                "DELETE FROM execution_results WHERE rowid IN (SELECT r.rowid \
                 FROM result_kinds k JOIN execution_results r ON r.kind = k.kind \
                 AND r.success IN (0, 1) AND r.recorded_at < ?1 LIMIT ?2)",
            ),
            Table::keyed("result_kinds", "kind"),
            // A minute is kept while any of it is.
            Table::kept(
                "result_counts",
                "kind, success, minute",
                Class::Results,
                "minute >= ?1 / 60000",
                "DELETE FROM result_counts WHERE (kind, success, minute) IN (SELECT \
                 c.kind, c.success, c.minute FROM result_kinds k JOIN result_counts c \
                 ON c.kind = k.kind AND c.success IN (0, 1) AND c.minute < ?1 / 60000 \
                 LIMIT ?2)",
            ),
            Table::keyed("deploy_history", "deploy_id"),
            // Runs linked to alerts leave by their own time; their groups' figures are
            // running totals, and a group leaves once its newest run has (see `runs`).
            Table::kept(
                "alert_runs",
                "result_id",
                Class::Results,
                "recorded_at >= ?1",
                runs::PRUNE_RUNS,
            )
            .windowed_since(13),
            Table::kept(
                "alert_run_groups",
                "recurrence_key, project_id",
                Class::Results,
                "newest_recorded_at >= ?1",
                runs::PRUNE_GROUPS,
            )
            .windowed_since(13),
            Table::kept(
                "alert_run_incidents",
                "recurrence_key, project_id, incident_id",
                Class::Results,
                runs::KEEP_INCIDENTS,
                runs::PRUNE_INCIDENTS,
            )
            .windowed_since(13),
        ];
        TABLES
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
                "alert_runs",
                "alert_run_groups",
                "alert_run_incidents",
            ],
        )
        .await
    }
}

/// Inserts the rows of `execution_results`; `true` when every result was new.
async fn insert_rows(conn: &mut SqliteConnection, events: &[ResultEvent]) -> sqlx::Result<bool> {
    // Random ids and spread times land all over both indexes of the table. Rows are written
    // in the order of the (kind, success, recorded_at) index, so that consecutive inserts
    // walk its pages forwards while they are in the CPU's cache: it costs more than the id
    // index when both take random keys (5M UUID results over 24 h: catch-up 5–14% faster
    // than in result_id order). Out of stream order, the first event of a repeated id would
    // no longer be the one written, so repeats within the batch are dropped here first.
    let mut seen: HashSet<&str> = HashSet::with_capacity(events.len());
    let mut sorted: Vec<&ResultEvent> = events
        .iter()
        .filter(|e| seen.insert(e.result_id.as_str()))
        .collect();
    let mut all_new = sorted.len() == events.len();
    sorted.sort_unstable_by(|a, b| {
        (a.kind.as_str(), a.success, a.recorded_at).cmp(&(
            b.kind.as_str(),
            b.success,
            b.recorded_at,
        ))
    });
    for chunk in sorted.chunks(rows_per_statement(10)) {
        // `OR IGNORE`, not `ON CONFLICT DO NOTHING`: with every constraint resolved by
        // ignoring, no row can abort the statement, so SQLite keeps no statement journal
        // (a copy of every page the statement dirties; measured: 40% of the time spent
        // inserting). The other constraints (NOT NULL, success in 0/1) cannot fail: `decode`
        // fills those columns from a Rust `String`, `bool` and `i64`.
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT OR IGNORE INTO execution_results (result_id, kind, agent_id, job_id, \
             exit_code, success, started_at, finished_at, recorded_at, seq) ",
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
        let inserted = q.build().execute(&mut *conn).await?.rows_affected();
        all_new &= inserted == chunk.len() as u64;
    }
    Ok(all_new)
}

/// Records the kinds a batch carries (the index the counting queries walk).
async fn insert_kinds(conn: &mut SqliteConnection, events: &[ResultEvent]) -> sqlx::Result<()> {
    // A handful of kinds per batch: a linear scan beats hashing here.
    let mut kinds: Vec<&str> = Vec::new();
    for e in events {
        if !kinds.contains(&e.kind.as_str()) {
            kinds.push(&e.kind);
        }
    }
    if kinds.is_empty() {
        return Ok(());
    }
    let mut q: QueryBuilder<Sqlite> =
        QueryBuilder::new("INSERT OR IGNORE INTO result_kinds (kind) ");
    q.push_values(&kinds, |mut b, k| {
        b.push_bind(*k);
    });
    q.build().execute(&mut *conn).await?;
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
