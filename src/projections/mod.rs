//! One module per read model: events in, SQL out, nothing else. [`roster`] lists them all.
//!
//! Apply functions take the batch's transaction, call no network, read no clock and draw no
//! randomness, so a replay gives the same rows.

pub mod alerts;
pub mod heartbeats;
pub mod results;
mod roster;
pub mod topology;
pub mod work_items;
pub mod workloads;

pub use roster::{read_models, roster, Listeners};

/// Empties `tables` (for a projection's `reset`); names come from code, never from input.
pub(crate) async fn delete_all(
    conn: &mut sqlx::SqliteConnection,
    tables: &[&str],
) -> sqlx::Result<()> {
    for table in tables {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Key pairs looked up per statement: a row-value `IN` list stays short.
const PAIRS_PER_STATEMENT: usize = 400;

/// For each of `keys` (sorted, without repeats) that `select` finds, the time it reads.
/// `select` is a query of three columns — the pair and a time — ending in
/// `(a, b) IN (`, which this completes; names come from code, never from input. The map
/// borrows the batch's own strings, not the rows read.
pub(crate) async fn times_of_pairs<'k>(
    conn: &mut sqlx::SqliteConnection,
    select: &str,
    keys: &[(&'k str, &'k str)],
) -> sqlx::Result<std::collections::HashMap<(&'k str, &'k str), i64>> {
    values_of_pairs(conn, select, keys, |(x, y, at): (String, String, i64)| {
        ((x, y), at)
    })
    .await
}

/// For each of `keys` (sorted, without repeats) that `select` finds, what `split` makes of
/// its row: the pair it names and the value kept. `select` ends in `(a, b) IN (`, as for
/// [`times_of_pairs`].
pub(crate) async fn values_of_pairs<'k, R, V>(
    conn: &mut sqlx::SqliteConnection,
    select: &str,
    keys: &[(&'k str, &'k str)],
    split: impl Fn(R) -> ((String, String), V),
) -> sqlx::Result<std::collections::HashMap<(&'k str, &'k str), V>>
where
    R: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
{
    let mut found = std::collections::HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(PAIRS_PER_STATEMENT) {
        let mut q: sqlx::QueryBuilder<sqlx::Sqlite> = sqlx::QueryBuilder::new(select);
        q.push_values(chunk, |mut b, (x, y)| {
            b.push_bind(*x).push_bind(*y);
        });
        q.push(")");
        let rows: Vec<R> = q.build_query_as().fetch_all(&mut *conn).await?;
        for row in rows {
            let ((x, y), value) = split(row);
            if let Ok(i) = keys.binary_search(&(x.as_str(), y.as_str())) {
                found.insert(keys[i], value);
            }
        }
    }
    Ok(found)
}
