//! `orrery digest`: proof that replicas agree. Per read model, the checkpoint and a SHA-256
//! of its rows in key order (every column, with its type), read in one read transaction so
//! that rows and checkpoints belong together. Nothing replica-specific goes in — no host,
//! no time of the request — so replicas at the same checkpoints answer byte for byte the
//! same, and so does a replica after `orrery rebuild`.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use sqlx::{Row, SqliteConnection, TypeInfo, ValueRef};

use crate::bus::streams::StreamSpec;
use crate::projector::{load_checkpoint, Table};

/// What the digest covers of one read model: its stream and its tables.
pub type ReadModel = (StreamSpec, &'static [Table]);

/// Tables more than one read model writes (hashed once, on their own).
const SHARED: [Table; 1] = [Table::keyed("workloads", "workload_id")];

/// The digest of every read model in `read_models`, in that order, with samples kept for
/// `retention` (see [`Table::window`]).
pub async fn digest(
    conn: &mut SqliteConnection,
    read_models: &[ReadModel],
    retention: Duration,
) -> sqlx::Result<Value> {
    let retention_ms = retention.as_millis() as i64;
    let mut models = Vec::with_capacity(read_models.len());
    for (stream, tables) in read_models {
        let checkpoint = load_checkpoint(&mut *conn, stream.name).await?;
        let mut all = Sha256::new();
        let mut hashed = Vec::with_capacity(tables.len() + 1);
        for table in tables.iter() {
            let (rows, sha) = hash_table(conn, table, retention_ms).await?;
            all.update(sha.as_bytes());
            hashed.push(json!({"table": table.name, "rows": rows, "sha256": sha}));
        }
        let (rows, sha) = hash_dead_letters(conn, stream.name).await?;
        all.update(sha.as_bytes());
        hashed.push(json!({"table": "dead_letters", "rows": rows, "sha256": sha}));
        models.push(json!({
            "stream": stream.name,
            "checkpoint": checkpoint,
            "sha256": hex(&all.finalize()),
            "tables": hashed,
        }));
    }
    let mut shared = Vec::new();
    for table in &SHARED {
        let (rows, sha) = hash_table(conn, table, retention_ms).await?;
        shared.push(json!({"table": table.name, "rows": rows, "sha256": sha}));
    }
    Ok(json!({"read_models": models, "shared": shared}))
}

async fn hash_table(
    conn: &mut SqliteConnection,
    table: &Table,
    retention_ms: i64,
) -> sqlx::Result<(u64, String)> {
    // Names come from code, never from input.
    let sql = match table.window {
        Some(window) => format!(
            "SELECT * FROM {} WHERE {window} ORDER BY {}",
            table.name, table.key
        ),
        None => format!("SELECT * FROM {} ORDER BY {}", table.name, table.key),
    };
    let mut query = sqlx::query(&sql);
    if table.window.is_some() {
        query = query.bind(retention_ms);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    Ok(hash_rows(&rows))
}

async fn hash_dead_letters(
    conn: &mut SqliteConnection,
    stream: &str,
) -> sqlx::Result<(u64, String)> {
    // Without `id`: an insertion counter, not part of what was projected.
    let rows = sqlx::query(
        "SELECT stream, seq, subject, reason, payload, received_at FROM dead_letters \
         WHERE stream = ?1 ORDER BY seq",
    )
    .bind(stream)
    .fetch_all(&mut *conn)
    .await?;
    Ok(hash_rows(&rows))
}

/// Hashes rows column by column, each value tagged with its type and, for text and blobs,
/// its length, so that no two different tables of values hash alike by concatenation.
fn hash_rows(rows: &[sqlx::sqlite::SqliteRow]) -> (u64, String) {
    let mut h = Sha256::new();
    for row in rows {
        h.update([0xff]);
        for i in 0..row.len() {
            let Ok(raw) = row.try_get_raw(i) else {
                h.update([0xfe]);
                continue;
            };
            if raw.is_null() {
                h.update([0]);
                continue;
            }
            match raw.type_info().name() {
                "INTEGER" => {
                    h.update([1]);
                    h.update(row.try_get::<i64, _>(i).unwrap_or_default().to_le_bytes());
                }
                "REAL" => {
                    h.update([2]);
                    h.update(
                        row.try_get::<f64, _>(i)
                            .unwrap_or_default()
                            .to_bits()
                            .to_le_bytes(),
                    );
                }
                "TEXT" => {
                    let text: &str = row.try_get(i).unwrap_or_default();
                    h.update([3]);
                    h.update((text.len() as u64).to_le_bytes());
                    h.update(text.as_bytes());
                }
                _ => {
                    let blob: &[u8] = row.try_get(i).unwrap_or_default();
                    h.update([4]);
                    h.update((blob.len() as u64).to_le_bytes());
                    h.update(blob);
                }
            }
        }
    }
    (rows.len() as u64, hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
