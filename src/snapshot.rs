//! Snapshots: a consistent copy of the database, with its checkpoints, schema version and
//! digest, kept in a JetStream object-store bucket so that a fresh replica starts from it
//! instead of replaying every stream from its first message — which a stream with
//! `max_age` or `max_msgs` limits no longer holds.
//!
//! The bus stays the only shared store: no new component. A snapshot is `VACUUM INTO` a file
//! beside the database (one read transaction: rows and checkpoints belong together; the
//! projector keeps writing meanwhile), digested, then uploaded. A replica that starts with no
//! database takes the newest snapshot whose schema it can migrate, checks its digest against
//! the one recorded at upload, and catches up from its checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream::{self, object_store};
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;

use crate::digest::{self, ReadModel};
use crate::retention::Retention;

/// Every snapshot object's name starts with this.
const PREFIX: &str = "orrery-";
/// Metadata keys of a snapshot object.
const META_SCHEMA: &str = "orrery-schema";
const META_DIGEST: &str = "orrery-digest";
const META_RETENTION: &str = "orrery-sample-retention-ms";
/// Every read model's retention ([`Retention::encode`]); absent from snapshots made before
/// read models other than samples had one.
const META_RETENTIONS: &str = "orrery-retention";
/// How long `serve` waits for the bus before giving up on a restore and replaying instead.
pub const RESTORE_WAIT: Duration = Duration::from_secs(30);

/// Where snapshots go and how often.
#[derive(Clone, Debug)]
pub struct SnapshotConfig {
    /// The object-store bucket.
    pub bucket: String,
    /// Time between two snapshots of a serving daemon.
    pub interval: Duration,
    /// Snapshots kept in the bucket (older ones are deleted after an upload).
    pub keep: usize,
    /// Replicas of the bucket when Orrery creates it.
    pub replicas: usize,
}

/// What a snapshot holds, as `orrery snapshot` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotInfo {
    /// The object's name in the bucket.
    pub name: String,
    /// Highest migration applied to the copy.
    pub schema_version: i64,
    /// Stream → last projected sequence.
    pub checkpoints: BTreeMap<String, u64>,
    /// Size of the copy.
    pub bytes: u64,
    /// Wall time to copy, digest and upload.
    pub took_ms: u64,
}

/// The newest migration this binary knows: a snapshot from a newer schema is not restored.
pub use crate::db::schema_version;

/// Object name: time first, so that names sort oldest to newest.
fn object_name(schema: i64) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{PREFIX}{:013}-s{schema:04}-{}.db",
        crate::window::now_ms(),
        &id[..8]
    )
}

/// The schema version a snapshot name announces, `None` for objects that are not snapshots.
fn schema_of(name: &str) -> Option<i64> {
    let rest = name.strip_prefix(PREFIX)?.strip_suffix(".db")?;
    let mut parts = rest.split('-');
    let (_time, schema) = (parts.next()?, parts.next()?);
    schema.strip_prefix('s')?.parse().ok()
}

pub(crate) async fn open_pool(path: &Path, read_only: bool) -> anyhow::Result<SqlitePool> {
    let url = format!("sqlite://{}", path.display());
    let options = SqliteConnectOptions::from_str(&url)?
        .read_only(read_only)
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .with_context(|| format!("opening {}", path.display()))
}

/// Schema version, checkpoints and digest of a database file.
pub(crate) async fn describe(
    path: &Path,
    read_models: &[ReadModel],
    retention: Retention,
) -> anyhow::Result<(i64, BTreeMap<String, u64>, Value)> {
    let pool = open_pool(path, true).await?;
    let described = async {
        let mut tx = pool.begin().await?;
        let schema: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&mut *tx)
                .await
                .context("reading the schema version")?;
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT stream, last_seq FROM checkpoints")
            .fetch_all(&mut *tx)
            .await
            .context("reading checkpoints")?;
        tx.commit().await?;
        let checkpoints = rows.into_iter().map(|(s, n)| (s, n as u64)).collect();
        anyhow::Ok((schema.unwrap_or(0), checkpoints))
    }
    .await;
    pool.close().await;
    let (schema, checkpoints) = described?;
    // The copy is never written: its digest and the rows above read the same state.
    let digest = digest::digest(path, read_models, retention)
        .await
        .context("digesting")?;
    // Recorded and compared as JSON: snapshots and backups of earlier releases hold it so.
    Ok((schema, checkpoints, serde_json::to_value(digest)?))
}

/// The bucket, created (compressed, `replicas` copies) when missing.
async fn bucket(
    js: &jetstream::Context,
    config: &SnapshotConfig,
) -> anyhow::Result<object_store::ObjectStore> {
    if let Ok(store) = js.get_object_store(&config.bucket).await {
        return Ok(store);
    }
    js.create_object_store(object_store::Config {
        bucket: config.bucket.clone(),
        description: Some("Orrery database snapshots".into()),
        num_replicas: config.replicas,
        compression: true,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating object store {}", config.bucket))
}

/// Copies the database at `database` (a serving daemon may keep writing it), digests the
/// copy and uploads it; then deletes all but the newest `keep` snapshots.
pub async fn take(
    database: &Path,
    js: &jetstream::Context,
    config: &SnapshotConfig,
    read_models: &[ReadModel],
    retention: Retention,
) -> anyhow::Result<SnapshotInfo> {
    let started = Instant::now();
    if !database.exists() {
        bail!("database {} does not exist", database.display());
    }
    let dir = scratch_dir(database)?;
    let copy = dir.path().join("snapshot.db");
    vacuum_into(database, &copy).await?;
    let (schema_version, checkpoints, digest) = describe(&copy, read_models, retention).await?;

    let store = bucket(js, config).await?;
    let name = object_name(schema_version);
    let bytes = tokio::fs::metadata(&copy).await?.len();
    let mut file = tokio::fs::File::open(&copy).await?;
    let metadata = HashMap::from([
        (META_SCHEMA.to_owned(), schema_version.to_string()),
        (META_DIGEST.to_owned(), digest.to_string()),
        (
            META_RETENTION.to_owned(),
            retention.samples.as_millis().to_string(),
        ),
        (META_RETENTIONS.to_owned(), retention.encode()),
    ]);
    store
        .put(
            object_store::ObjectMetadata {
                name: name.clone(),
                description: Some(format!("checkpoints {checkpoints:?}")),
                metadata,
                ..Default::default()
            },
            &mut file,
        )
        .await
        .with_context(|| format!("uploading {name} to {}", config.bucket))?;
    prune(&store, config.keep).await?;
    Ok(SnapshotInfo {
        name,
        schema_version,
        checkpoints,
        bytes,
        took_ms: started.elapsed().as_millis() as u64,
    })
}

/// Copies `database` to `copy` in one read transaction (rows and checkpoints belong
/// together), on a connection of its own: a serving daemon's writer keeps writing. The copy
/// has the page size new databases get ([`crate::db::PAGE_SIZE`]), so restoring a backup of
/// an older database also gives it the faster layout.
pub(crate) async fn vacuum_into(database: &Path, copy: &Path) -> anyhow::Result<()> {
    let source = open_pool(database, false).await?;
    let vacuumed = async {
        let mut conn = source.acquire().await?;
        // On a database that exists this changes nothing but what VACUUM INTO writes.
        sqlx::query(&format!("PRAGMA page_size = {}", crate::db::PAGE_SIZE))
            .execute(&mut *conn)
            .await?;
        sqlx::query("VACUUM INTO ?")
            .bind(copy.to_string_lossy().into_owned())
            .execute(&mut *conn)
            .await
    }
    .await;
    source.close().await;
    vacuumed.context("copying the database (VACUUM INTO)")?;
    Ok(())
}

/// A scratch directory beside the database: same filesystem, so a restore is one rename.
pub(crate) fn scratch_dir(database: &Path) -> anyhow::Result<tempfile::TempDir> {
    let parent = match database.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    tempfile::Builder::new()
        .prefix(".orrery-snapshot-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a scratch directory in {}", parent.display()))
}

/// Snapshot objects in the bucket, oldest first.
async fn list(store: &object_store::ObjectStore) -> anyhow::Result<Vec<object_store::ObjectInfo>> {
    let mut all: Vec<_> = store
        .list()
        .await
        .context("listing snapshots")?
        .try_filter(|info| futures::future::ready(!info.deleted && schema_of(&info.name).is_some()))
        .try_collect()
        .await
        .context("listing snapshots")?;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

async fn prune(store: &object_store::ObjectStore, keep: usize) -> anyhow::Result<()> {
    let all = list(store).await?;
    for old in all.iter().take(all.len().saturating_sub(keep)) {
        store
            .delete(&old.name)
            .await
            .with_context(|| format!("deleting old snapshot {}", old.name))?;
    }
    Ok(())
}

/// Restores the newest snapshot this binary can use into `database`, which must not exist:
/// newest first, a snapshot whose schema is newer than this binary's, or whose digest does
/// not match the one recorded at upload, is skipped with a warning. `None` when the bucket
/// holds no usable snapshot.
pub async fn restore(
    database: &Path,
    js: &jetstream::Context,
    bucket_name: &str,
    read_models: &[ReadModel],
) -> anyhow::Result<Option<SnapshotInfo>> {
    let started = Instant::now();
    if database.exists() {
        bail!("database {} already exists", database.display());
    }
    // A missing bucket means no snapshot yet; any other failure (a timeout) is an error, not
    // a reason to replay everything.
    match js.get_stream(format!("OBJ_{bucket_name}")).await {
        Ok(_) => {}
        Err(e) if crate::bus::streams::is_not_found(&e) => {
            tracing::info!(bucket = bucket_name, "no snapshot bucket yet");
            return Ok(None);
        }
        Err(e) => return Err(e).context("opening the snapshot bucket"),
    }
    let store = js
        .get_object_store(bucket_name)
        .await
        .context("opening the snapshot bucket")?;
    let ours = schema_version();
    for info in list(&store).await?.into_iter().rev() {
        let name = info.name.clone();
        match restore_one(&store, info, database, read_models, ours).await {
            Ok(mut restored) => {
                restored.took_ms = started.elapsed().as_millis() as u64;
                return Ok(Some(restored));
            }
            Err(error) => {
                tracing::warn!(
                    snapshot = name,
                    error = format!("{error:#}"),
                    "snapshot skipped"
                )
            }
        }
    }
    Ok(None)
}

async fn restore_one(
    store: &object_store::ObjectStore,
    info: object_store::ObjectInfo,
    database: &Path,
    read_models: &[ReadModel],
    ours: i64,
) -> anyhow::Result<SnapshotInfo> {
    let schema: i64 = info
        .metadata
        .get(META_SCHEMA)
        .and_then(|v| v.parse().ok())
        .context("no schema version recorded")?;
    if schema > ours {
        bail!("schema {schema} is newer than this binary's {ours}");
    }
    let recorded: Value = info
        .metadata
        .get(META_DIGEST)
        .and_then(|v| serde_json::from_str(v).ok())
        .context("no digest recorded")?;
    let retention = match info.metadata.get(META_RETENTIONS) {
        Some(line) => Retention::decode(line).context("the recorded retention")?,
        None => info
            .metadata
            .get(META_RETENTION)
            .and_then(|v| v.parse().ok())
            .map(|ms| Retention::keep_all(Duration::from_millis(ms)))
            .context("no sample retention recorded")?,
    };

    let dir = scratch_dir(database)?;
    let copy = dir.path().join("restore.db");
    let mut object = store.get(&info.name).await.context("downloading")?;
    let mut file = tokio::fs::File::create(&copy).await?;
    // The client checks the object's SHA-256 once the last chunk is read.
    tokio::io::copy(&mut object, &mut file)
        .await
        .context("downloading")?;
    file.sync_all().await?;
    drop(file);
    let downloaded = Instant::now();
    let (schema_version, checkpoints, digest) = describe(&copy, read_models, retention)
        .await
        .context("reading the copy")?;
    tracing::info!(
        snapshot = info.name,
        bytes = info.size,
        verify_ms = downloaded.elapsed().as_millis() as u64,
        "snapshot downloaded and digested"
    );
    if schema_version != schema {
        bail!("the copy's schema {schema_version} is not the recorded {schema}");
    }
    if digest != recorded {
        bail!("the copy's digest differs from the one recorded at upload");
    }
    tokio::fs::rename(&copy, database)
        .await
        .with_context(|| format!("moving the snapshot to {}", database.display()))?;
    Ok(SnapshotInfo {
        name: info.name,
        schema_version,
        checkpoints,
        bytes: info.size as u64,
        took_ms: 0,
    })
}

/// Until shutdown: a snapshot every `config.interval`, the first one an interval after start.
pub async fn take_forever(
    database: PathBuf,
    js: jetstream::Context,
    config: SnapshotConfig,
    read_models: std::sync::Arc<[ReadModel]>,
    retention: Retention,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(config.interval) => {}
        }
        let taken = tokio::select! {
            _ = cancel.cancelled() => return,
            taken = take(&database, &js, &config, &read_models, retention) => taken,
        };
        match taken {
            Ok(info) => tracing::info!(
                snapshot = info.name,
                bytes = info.bytes,
                took_ms = info.took_ms,
                "snapshot written"
            ),
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "snapshot failed; will retry at the next interval"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_copy_of_an_old_database_gets_the_new_page_size_and_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.db");
        let made = crate::db::made_by_an_earlier_release(&old).await;
        sqlx::query("CREATE TABLE t (x INTEGER PRIMARY KEY, y TEXT)")
            .execute(&made)
            .await
            .unwrap();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) \
             INSERT INTO t SELECT i, hex(randomblob(40)) FROM n",
        )
        .execute(&made)
        .await
        .unwrap();
        async fn page_size(pool: &SqlitePool) -> i64 {
            sqlx::query_scalar("SELECT page_size FROM pragma_page_size")
                .fetch_one(pool)
                .await
                .unwrap()
        }
        assert_eq!(page_size(&made).await, 4_096);
        let digest = "SELECT COUNT(*), SUM(x), group_concat(y) FROM (SELECT * FROM t ORDER BY x)";
        let before: (i64, i64, String) = sqlx::query_as(digest).fetch_one(&made).await.unwrap();

        let copy = dir.path().join("copy.db");
        vacuum_into(&old, &copy).await.unwrap();
        let copied = open_pool(&copy, true).await.unwrap();
        assert_eq!(page_size(&copied).await, i64::from(crate::db::PAGE_SIZE));
        let after: (i64, i64, String) = sqlx::query_as(digest).fetch_one(&copied).await.unwrap();
        assert_eq!(before, after);
        // The source keeps its own pages.
        assert_eq!(page_size(&made).await, 4_096);
        copied.close().await;
        made.close().await;
    }

    #[test]
    fn names_sort_by_time_and_carry_their_schema() {
        let a = object_name(7);
        std::thread::sleep(Duration::from_millis(2));
        let b = object_name(12);
        assert!(a < b, "{a} {b}");
        assert_eq!(schema_of(&a), Some(7));
        assert_eq!(schema_of(&b), Some(12));
        for other in [
            "",
            "orrery-",
            "orrery-1-s.db",
            "other-1-s0001-x.db",
            "orrery-1-0001-x.db",
        ] {
            assert_eq!(schema_of(other), None, "{other}");
        }
    }

    #[test]
    fn this_binary_knows_its_schema() {
        assert!(schema_version() >= 8);
    }
}
