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
