//! `result.deploy.*` → the deploy ledger (`deploy_history`): the newest N deploys per
//! workload. A failed deploy's error text can carry registry credentials, so it is never
//! stored: rows, answers and dead letters carry [`DEPLOY_ERROR_MARKER`] instead.

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::ResultEvent;
use crate::db::rows_per_statement;
use crate::projections::workloads;

/// What a failed deploy's error reads as, wherever it is shown.
pub const DEPLOY_ERROR_MARKER: &str = "deploy failed (see server logs)";

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

/// Replaces `data.error` in a payload about to be dead-lettered.
pub fn scrub_error(payload: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let error = v.get_mut("data")?.get_mut("error")?;
    *error = serde_json::Value::String(DEPLOY_ERROR_MARKER.to_owned());
    Some(v.to_string().into_bytes())
}

/// Records deploy results in the ledger and keeps the newest `keep` per workload.
pub(super) async fn apply(
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
    for chunk in deploys.chunks(rows_per_statement(9)) {
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
    let mut touched: Vec<&str> = deploys
        .iter()
        .map(|(_, d)| d.workload_id.as_str())
        .collect();
    touched.sort_unstable();
    touched.dedup();
    workloads::insert(conn, &touched).await?;
    for w in touched {
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
