//! `orrery digest`: proof that replicas agree. Per read model, the checkpoint and a SHA-256
//! of its rows in key order (every column, with its type), read in one read transaction so
//! that rows and checkpoints belong together. Nothing replica-specific goes in — no host,
//! no time of the request — so replicas at the same checkpoints answer byte for byte the
//! same, and so does a replica after `orrery rebuild`.
//!
//! It reads through its own read-only rusqlite connection on a blocking thread: walking
//! millions of rows through sqlx's async row channel took 6 s per million results; a
//! prepared-statement loop takes a fraction of that, and the daemon's pools stay free.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use utoipa::ToSchema;

use crate::projector::{Table, Window};
use crate::retention::{Class, Retention};

pub use crate::projector::ReadModel;

/// A digest as [`digest`] makes it: what `/api/v1/admin/digest` and `orrery digest` show.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    /// Per read model, in the order of the read models.
    pub read_models: Vec<ModelDigest>,
    /// Tables several read models write, hashed on their own.
    pub shared: Vec<TableDigest>,
}

/// One read model's digest.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelDigest {
    /// Its stream.
    pub stream: String,
    /// The sequence its rows reflect.
    pub checkpoint: i64,
    /// SHA-256 over its tables' hashes.
    pub sha256: String,
    /// Per table (its dead letters last).
    pub tables: Vec<TableDigest>,
}

/// One table's digest.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TableDigest {
    /// Table name.
    pub table: String,
    /// Rows hashed.
    pub rows: u64,
    /// SHA-256 of its rows.
    pub sha256: String,
}

impl TableDigest {
    fn new(table: &str, rows: u64, sha256: String) -> Self {
        Self {
            table: table.to_owned(),
            rows,
            sha256,
        }
    }
}

/// Tables more than one read model writes (hashed once, on their own).
const SHARED: [Table; 1] = [Table::keyed("workloads", "workload_id")];

/// The digest of every read model in `read_models`, in that order, of the database file at
/// `path`, of the rows `retention` keeps (see [`Table::window`]).
pub async fn digest(
    path: &Path,
    read_models: &[ReadModel],
    retention: Retention,
) -> anyhow::Result<Digest> {
    let path: PathBuf = path.to_owned();
    let read_models = read_models.to_vec();
    tokio::task::spawn_blocking(move || digest_blocking(&path, &read_models, retention))
        .await
        .context("the digest task failed")?
}

fn digest_blocking(
    path: &Path,
    read_models: &[ReadModel],
    retention: Retention,
) -> anyhow::Result<Digest> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // One read transaction: the rows and the checkpoints belong together.
    conn.execute_batch("BEGIN")?;
    // A copy made before retention (schema 10 or older: a snapshot or backup being
    // verified before it is migrated) has no mark; it kept everything anyway.
    let marked: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('checkpoints') \
         WHERE name = 'high_water_ms')",
        [],
        |r| r.get(0),
    )?;
    // The digest definitions are those of the database's own schema (see
    // `Table::window_since`); a file without migrations is read as of this binary's.
    let schema: i64 = conn
        .query_row(
            "SELECT MAX(version) FROM _sqlx_migrations WHERE success",
            [],
            |r| r.get(0),
        )
        .unwrap_or(i64::MAX);
    let checkpoint_sql = if marked {
        "SELECT last_seq, high_water_ms FROM checkpoints WHERE stream = ?1"
    } else {
        "SELECT last_seq, 0 FROM checkpoints WHERE stream = ?1"
    };
    let mut models = Vec::with_capacity(read_models.len());
    for (stream, tables) in read_models {
        let (checkpoint, high_water): (i64, i64) = conn
            .query_row(checkpoint_sql, [stream.name], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok((0, 0)),
                e => Err(e),
            })?;
        let mut all = Sha256::new();
        let mut hashed = Vec::with_capacity(tables.len() + 1);
        for table in tables.iter() {
            let (rows, sha) = hash_table(&conn, table, &retention, high_water, schema)?;
            all.update(sha.as_bytes());
            hashed.push(TableDigest::new(table.name, rows, sha));
        }
        // Without `id`: an insertion counter, not part of what was projected.
        let (rows, sha) = hash_query(
            &conn,
            "SELECT stream, seq, subject, reason, payload, received_at FROM dead_letters \
             WHERE stream = ?1 AND received_at >= ?2 ORDER BY seq",
            rusqlite::params![
                stream.name,
                retention
                    .cutoff(Class::DeadLetters, high_water)
                    .unwrap_or(i64::MIN)
            ],
        )?;
        all.update(sha.as_bytes());
        hashed.push(TableDigest::new("dead_letters", rows, sha));
        models.push(ModelDigest {
            stream: stream.name.to_owned(),
            checkpoint,
            sha256: hex(&all.finalize()),
            tables: hashed,
        });
    }
    let mut shared = Vec::new();
    for table in &SHARED {
        let (rows, sha) = hash_table(&conn, table, &retention, 0, schema)?;
        shared.push(TableDigest::new(table.name, rows, sha));
    }
    conn.execute_batch("COMMIT")?;
    Ok(Digest {
        read_models: models,
        shared,
    })
}

/// Hashes the rows of `table` that `retention` keeps once its stream reached `high_water`,
/// in a database of schema version `schema`.
fn hash_table(
    conn: &Connection,
    table: &Table,
    retention: &Retention,
    high_water: i64,
    schema: i64,
) -> anyhow::Result<(u64, String)> {
    let window = table.window.filter(|_| schema >= table.window_since);
    let (condition, param) = match window {
        Some(Window::Samples(condition)) => {
            (Some(condition), crate::retention::millis(retention.samples))
        }
        Some(Window::Kept { class, keep, .. }) => match retention.cutoff(class, high_water) {
            Some(cutoff) => (Some(keep), cutoff),
            None => (None, 0),
        },
        None => (None, 0),
    };
    // Names come from code, never from input.
    match condition {
        Some(condition) => hash_query(
            conn,
            &format!(
                "SELECT * FROM {} WHERE {condition} ORDER BY {}",
                table.name, table.key
            ),
            rusqlite::params![param],
        ),
        None => hash_query(
            conn,
            &format!("SELECT * FROM {} ORDER BY {}", table.name, table.key),
            rusqlite::params![],
        ),
    }
}

/// Hashes the rows of `sql` column by column, each value tagged with its storage class and,
/// for text and blobs, its length, so that no two different tables of values hash alike by
/// concatenation. Rows are streamed: a table of millions is never held in memory.
fn hash_query(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> anyhow::Result<(u64, String)> {
    let mut stmt = conn
        .prepare(sql)
        .with_context(|| format!("preparing `{sql}`"))?;
    let columns = stmt.column_count();
    let mut rows = stmt.query(params)?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(row) = rows.next()? {
        n += 1;
        h.update([0xff]);
        for i in 0..columns {
            match row.get_ref(i)? {
                ValueRef::Null => h.update([0]),
                ValueRef::Integer(v) => {
                    h.update([1]);
                    h.update(v.to_le_bytes());
                }
                ValueRef::Real(v) => {
                    h.update([2]);
                    h.update(v.to_bits().to_le_bytes());
                }
                ValueRef::Text(text) => {
                    h.update([3]);
                    h.update((text.len() as u64).to_le_bytes());
                    h.update(text);
                }
                ValueRef::Blob(blob) => {
                    h.update([4]);
                    h.update((blob.len() as u64).to_le_bytes());
                    h.update(blob);
                }
            }
        }
    }
    Ok((n, hex(&h.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::streams::RESULTS;

    const TABLES: [Table; 1] = [Table::keyed("t", "k")];

    /// A database with the tables the digest reads and `rows` in `t` (inserted in order).
    fn database(dir: &Path, name: &str, rows: &[(&str, rusqlite::types::Value)]) -> PathBuf {
        let path = dir.join(name);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE checkpoints (stream TEXT PRIMARY KEY, last_seq INTEGER,
                 high_water_ms INTEGER);
             CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, stream TEXT, seq INTEGER,
                 subject TEXT, reason TEXT, payload BLOB, received_at INTEGER);
             CREATE TABLE workloads (workload_id TEXT PRIMARY KEY);
             CREATE TABLE t (k TEXT PRIMARY KEY, v);
             INSERT INTO checkpoints VALUES ('RESULTS', 7, 0);",
        )
        .unwrap();
        for (k, v) in rows {
            conn.execute("INSERT INTO t VALUES (?1, ?2)", rusqlite::params![k, v])
                .unwrap();
        }
        path
    }

    fn digest_of(path: &Path) -> serde_json::Value {
        let digest = digest_blocking(
            path,
            &[(RESULTS, &TABLES)],
            Retention::keep_all(Duration::from_secs(60)),
        );
        serde_json::to_value(digest.unwrap()).unwrap()
    }

    #[test]
    fn equal_rows_hash_alike_and_any_difference_shows() {
        use rusqlite::types::Value::{Blob, Integer, Null, Real, Text};
        let dir = tempfile::tempdir().unwrap();
        let base = [("a", Integer(1)), ("b", Text("x".into())), ("c", Null)];
        let reference = digest_of(&database(dir.path(), "ref.db", &base));
        assert_eq!(reference["read_models"][0]["checkpoint"], 7);
        assert_eq!(reference["read_models"][0]["tables"][0]["rows"], 3);

        // Insertion order does not matter: rows are read in key order.
        let mut reversed = base.clone();
        reversed.reverse();
        assert_eq!(
            digest_of(&database(dir.path(), "rev.db", &reversed)),
            reference
        );

        // A changed value, type, row or split between columns does.
        let variants: [&[(&str, rusqlite::types::Value)]; 6] = [
            &[("a", Integer(2)), ("b", Text("x".into())), ("c", Null)],
            &[
                ("a", Text("1".into())),
                ("b", Text("x".into())),
                ("c", Null),
            ],
            &[("a", Real(1.0)), ("b", Text("x".into())), ("c", Null)],
            &[("a", Integer(1)), ("b", Blob(b"x".to_vec())), ("c", Null)],
            &[("a", Integer(1)), ("b", Text("x".into()))],
            &[("a", Integer(1)), ("bx", Text(String::new())), ("c", Null)],
        ];
        for (i, rows) in variants.iter().enumerate() {
            let other = digest_of(&database(dir.path(), &format!("v{i}.db"), rows));
            assert_ne!(
                other["read_models"][0]["sha256"], reference["read_models"][0]["sha256"],
                "variant {i} hashed like the reference"
            );
        }
    }
}
