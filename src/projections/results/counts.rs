//! `result_counts`: results per (kind, success, minute), kept by the projection so that the
//! failure badge and fleet health count whole minutes instead of rows.

use std::collections::HashMap;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::ResultEvent;
use crate::db::rows_per_statement;

/// Adds a batch of new results to the per-minute counts.
pub(super) async fn add_batch(
    conn: &mut SqliteConnection,
    events: &[ResultEvent],
) -> sqlx::Result<()> {
    let mut counts: HashMap<(&str, bool, i64), i64> = HashMap::new();
    for e in events {
        *counts
            .entry((e.kind.as_str(), e.success, e.recorded_at / 60_000))
            .or_default() += 1;
    }
    let rows: Vec<_> = counts.into_iter().collect();
    for chunk in rows.chunks(rows_per_statement(4)) {
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

/// Adds the `execution_results` rows after `rowid_before` to the per-minute counts (for a
/// batch that repeated known result ids).
pub(super) async fn add_rows_since(
    conn: &mut SqliteConnection,
    rowid_before: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO result_counts (kind, success, minute, n) \
         SELECT kind, success, recorded_at / 60000, COUNT(*) FROM execution_results \
         WHERE rowid > ?1 GROUP BY kind, success, recorded_at / 60000 \
         ON CONFLICT (kind, success, minute) DO UPDATE SET n = n + excluded.n",
    )
    .bind(rowid_before)
    .execute(&mut *conn)
    .await?;
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
