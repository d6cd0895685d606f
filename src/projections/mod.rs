//! One module per read model: events in, SQL out, nothing else.

pub mod alerts;
pub mod heartbeats;
pub mod results;
pub mod topology;

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
