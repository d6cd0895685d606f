//! Backups to a local file: `orrery backup FILE` beside a serving daemon, `orrery restore
//! FILE` before starting one.
//!
//! A backup is what a snapshot is — `VACUUM INTO` in one read transaction, so rows and
//! checkpoints belong together while the projector keeps writing — kept as one
//! self-contained SQLite file instead of an object in a bucket. Its schema version, digest
//! and sample retention are recorded inside it, in `_orrery_backup`, which no read model
//! reads. A restore checks the digest and the schema before the file takes the database's
//! place; `serve` then catches up from the recorded checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;

use crate::digest::ReadModel;
use crate::retention::Retention;
use crate::snapshot::{describe, open_pool, scratch_dir, vacuum_into};

/// What a backup holds, as `orrery backup` and `orrery restore` print it.
#[derive(Clone, Debug, Serialize)]
pub struct BackupInfo {
    /// The backup file.
    pub file: PathBuf,
    /// Highest migration applied to the copy.
    pub schema_version: i64,
    /// Stream → last projected sequence.
    pub checkpoints: BTreeMap<String, u64>,
    /// Size of the file.
    pub bytes: u64,
    /// Wall time to copy and digest (or to check and move into place).
    pub took_ms: u64,
}

/// Why a backup was not restored: the operator must act (exit 2), nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

/// Copies the database at `database` (a serving daemon may keep writing it) to `file`,
/// with its schema version, digest and retention recorded inside.
pub async fn backup(
    database: &Path,
    file: &Path,
    read_models: &[ReadModel],
    retention: Retention,
) -> anyhow::Result<BackupInfo> {
    let started = Instant::now();
    if !database.is_file() {
        bail!(Refused(format!(
            "database {} does not exist",
            database.display()
        )));
    }
    if file.exists() {
        bail!(Refused(format!(
            "{} already exists: a backup never overwrites a file",
            file.display()
        )));
    }
    let dir = scratch_dir(file)?;
    let copy = dir.path().join("backup.db");
    vacuum_into(database, &copy).await?;
    let (schema_version, checkpoints, digest) = describe(&copy, read_models, retention).await?;
    let pool = open_pool(&copy, false).await?;
    let recorded = async {
        sqlx::query(
            "CREATE TABLE _orrery_backup (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
        )
        .execute(&pool)
        .await?;
        for (key, value) in [
            ("schema_version", schema_version.to_string()),
            ("digest", digest.to_string()),
            (
                "sample_retention_ms",
                retention.samples.as_millis().to_string(),
            ),
            ("retention", retention.encode()),
            ("release", env!("CARGO_PKG_VERSION").to_owned()),
        ] {
            sqlx::query("INSERT INTO _orrery_backup (key, value) VALUES (?, ?)")
                .bind(key)
                .bind(value)
                .execute(&pool)
                .await?;
        }
        anyhow::Ok(())
    }
    .await;
    pool.close().await;
    recorded.context("recording the backup's digest")?;
    Ok(BackupInfo {
        file: file.to_owned(),
        schema_version,
        checkpoints,
        bytes: put_in_place(&copy, file).await?,
        took_ms: started.elapsed().as_millis() as u64,
    })
}

/// Syncs the finished `copy` and renames it to `dest` (one filesystem: atomic); its size.
async fn put_in_place(copy: &Path, dest: &Path) -> anyhow::Result<u64> {
    tokio::fs::File::open(copy).await?.sync_all().await?;
    tokio::fs::rename(copy, dest)
        .await
        .with_context(|| format!("moving the backup to {}", dest.display()))?;
    Ok(tokio::fs::metadata(dest).await?.len())
}

/// Puts the backup `file` in place as the database at `database`, which must not exist,
/// once its schema is one this binary can migrate and its digest is the recorded one.
pub async fn restore(
    file: &Path,
    database: &Path,
    read_models: &[ReadModel],
) -> anyhow::Result<BackupInfo> {
    let started = Instant::now();
    if database.exists() {
        bail!(Refused(format!(
            "database {} already exists: move it away first (a restore never overwrites one)",
            database.display()
        )));
    }
    if !file.is_file() {
        bail!(Refused(format!("{} is not a file", file.display())));
    }
    let dir = scratch_dir(database)?;
    let copy = dir.path().join("restore.db");
    tokio::fs::copy(file, &copy)
        .await
        .with_context(|| format!("copying {}", file.display()))?;
    let pool = open_pool(&copy, false).await?;
    let meta: anyhow::Result<BTreeMap<String, String>> = async {
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT key, value FROM _orrery_backup")
            .fetch_all(&pool)
            .await?;
        sqlx::query("DROP TABLE _orrery_backup")
            .execute(&pool)
            .await?;
        Ok(rows.into_iter().collect())
    }
    .await;
    pool.close().await;
    let meta = meta.map_err(|e| {
        Refused(format!(
            "{} is not an Orrery backup (no readable record of its digest: {e:#})",
            file.display()
        ))
    })?;
    let field = |key: &str| {
        meta.get(key)
            .cloned()
            .ok_or_else(|| Refused(format!("{}: the backup records no {key}", file.display())))
    };
    let recorded_schema: i64 = field("schema_version")?.parse().unwrap_or(i64::MAX);
    let ours = crate::db::schema_version();
    if recorded_schema > ours {
        bail!(Refused(format!(
            "{} has schema version {recorded_schema}, newer than this orrery {} knows (schema \
             {ours}): restore it with the release that wrote it or a later one",
            file.display(),
            env!("CARGO_PKG_VERSION")
        )));
    }
    let recorded: Value = serde_json::from_str(&field("digest")?).map_err(|_| {
        Refused(format!(
            "{}: the recorded digest is unreadable",
            file.display()
        ))
    })?;
    // A backup made before every read model had a retention records samples' alone.
    let retention = match field("retention") {
        Ok(line) => Retention::decode(&line).map_err(|e| {
            Refused(format!(
                "{}: the recorded retention is unreadable: {e}",
                file.display()
            ))
        })?,
        Err(_) => Retention::keep_all(Duration::from_millis(
            field("sample_retention_ms")?.parse().unwrap_or(0),
        )),
    };
    let (schema_version, checkpoints, digest) = describe(&copy, read_models, retention).await?;
    if schema_version != recorded_schema || digest != recorded {
        bail!(Refused(format!(
            "{}: its rows do not match the digest recorded when it was taken (damaged or \
             edited); nothing was restored",
            file.display()
        )));
    }
    Ok(BackupInfo {
        file: file.to_owned(),
        schema_version,
        checkpoints,
        bytes: put_in_place(&copy, database).await?,
        took_ms: started.elapsed().as_millis() as u64,
    })
}
