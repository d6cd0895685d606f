//! `workloads`: every workload id Orrery has seen, written by two read models — heartbeats
//! (a container's `workload_id`) and the deploy ledger (a deploy's `workload_id`). It only
//! ever grows; a rebuild of either stream refills what that stream names, and no projection's
//! `reset` empties it, since the other may still hold rows that name its workloads.
//!
//! Its one writer and its one reader live here.

use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};

use crate::db::rows_per_statement;

/// Records workloads as known.
pub async fn insert(conn: &mut SqliteConnection, ids: &[&str]) -> sqlx::Result<()> {
    for chunk in ids.chunks(rows_per_statement(1)) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT OR IGNORE INTO workloads (workload_id) ");
        q.push_values(chunk, |mut b, w| {
            b.push_bind(*w);
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Whether workload `id` was ever seen.
pub async fn exists(readers: &SqlitePool, id: &str) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM workloads WHERE workload_id = ?")
        .bind(id)
        .fetch_optional(readers)
        .await?;
    Ok(found.is_some())
}
