//! SQLite: one writer connection for the projector, a read-only pool for queries.
//!
//! WAL lets readers run beside the writer, so a slow query never stalls projection and the
//! projector never waits for a request.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

/// The embedded migrations under `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Variables one statement may bind: SQLite's limit is 32,766; stay a little under it.
const MAX_BOUND_VARIABLES: usize = 32_000;

/// WAL bytes after which the background checkpointer folds the WAL into the file.
const WAL_CHECKPOINT_BYTES: i64 = 128 << 20;

/// WAL bytes after which the writer checkpoints by itself, as SQLite's autocheckpoint would:
/// the WAL's bound when the background checkpointer cannot keep up (a full-speed catch-up).
const WAL_WRITER_CHECKPOINT_BYTES: i64 = 256 << 20;

/// Projector commits waiting for one database's writer. A projector that keeps a transaction
/// open over several batches while it is behind commits as soon as another wants the writer,
/// so that its catch-up never holds up another stream's events.
#[derive(Clone, Debug, Default)]
pub struct WriterDemand(std::sync::Arc<DemandState>);

/// What [`WriterDemand`] counts and remembers.
#[derive(Debug, Default)]
struct DemandState {
    waiting: std::sync::atomic::AtomicUsize,
    /// When [`WriterDemand::wanted`] last answered yes, in ms after `origin`.
    wanted_at_ms: std::sync::atomic::AtomicU64,
    origin: std::sync::OnceLock<std::time::Instant>,
}

impl DemandState {
    fn now_ms(&self) -> u64 {
        // Offset by one so that 0 can mean "never".
        self.origin
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
            + 1
    }
}

impl WriterDemand {
    /// Begins a transaction on `writer`, counted as waiting until it has the connection.
    pub async fn begin(
        &self,
        writer: &SqlitePool,
    ) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        use std::sync::atomic::Ordering;
        /// Uncounts the waiter however the wait ends (acquired, failed or cancelled).
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.0.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.0.waiting);
        writer.begin().await
    }

    /// Whether a commit is waiting for the writer (remembered for [`Self::wanted_within`]).
    pub fn wanted(&self) -> bool {
        use std::sync::atomic::Ordering;
        let wanted = self.0.waiting.load(Ordering::Relaxed) > 0;
        if wanted {
            self.0
                .wanted_at_ms
                .store(self.0.now_ms(), Ordering::Relaxed);
        }
        wanted
    }

    /// Whether [`Self::wanted`] found a commit waiting within the last `window`: the writer
    /// is shared with a live stream, and a long write would make its events wait.
    pub fn wanted_within(&self, window: std::time::Duration) -> bool {
        let at = self
            .0
            .wanted_at_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        at != 0 && self.0.now_ms().saturating_sub(at) <= window.as_millis() as u64
    }
}

/// How many rows of `columns` bound values each fit one multi-row statement.
pub const fn rows_per_statement(columns: usize) -> usize {
    MAX_BOUND_VARIABLES / columns
}

/// The two pools over one database file.
#[derive(Clone, Debug)]
pub struct Db {
    /// Exactly one connection: SQLite has one writer, and queueing here beats SQLITE_BUSY.
    pub writer: SqlitePool,
    /// Read-only connections for the API.
    pub readers: SqlitePool,
    /// Projector commits waiting for `writer`.
    pub demand: WriterDemand,
    checkpointer: Checkpointer,
}

/// Folds the WAL into the database file from a connection of its own, so that the writer
/// never does (see [`wal_hook`]).
///
/// Why: a checkpoint run by the committing connection holds the writer, and every commit
/// and live event behind it, while it copies up to 128 MiB of pages. A passive checkpoint
/// from another connection copies the same pages while the writer goes on appending.
#[derive(Clone, Debug)]
struct Checkpointer {
    pool: SqlitePool,
    wake: std::sync::Arc<tokio::sync::Notify>,
}

impl Checkpointer {
    /// Opens its connection and starts it; the writer's hook wakes it through `wake`.
    async fn start(path: &Path, wake: std::sync::Arc<tokio::sync::Notify>) -> anyhow::Result<Self> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options(path)?)
            .await
            .context("opening the checkpointer's connection")?;
        let this = Self { pool, wake };
        tokio::spawn(this.clone().run());
        Ok(this)
    }

    /// Until its pool is closed: a passive checkpoint each time the writer's hook asks.
    async fn run(self) {
        loop {
            self.wake.notified().await;
            if self.pool.is_closed() {
                return;
            }
            // PASSIVE copies what it can without waiting on the writer or readers, and never
            // invokes the busy handler.
            match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&self.pool)
                .await
            {
                Ok((_, log, done)) => tracing::trace!(pages = log, folded = done, "checkpoint"),
                Err(error) => tracing::debug!(%error, "background checkpoint failed"),
            }
        }
    }

    async fn stop(&self) {
        self.pool.close().await;
        self.wake.notify_one();
    }
}

/// What [`wal_hook`] is given: whom to wake, and the WAL lengths in this database's pages.
#[derive(Debug)]
struct HookState {
    wake: std::sync::Arc<tokio::sync::Notify>,
    checkpoint_pages: std::ffi::c_int,
    writer_pages: std::ffi::c_int,
}

impl HookState {
    fn new(wake: std::sync::Arc<tokio::sync::Notify>, page_size: i64) -> Self {
        let pages =
            |bytes: i64| std::ffi::c_int::try_from(bytes / page_size.max(512)).unwrap_or(i32::MAX);
        Self {
            wake,
            checkpoint_pages: pages(WAL_CHECKPOINT_BYTES),
            writer_pages: pages(WAL_WRITER_CHECKPOINT_BYTES),
        }
    }
}

/// SQLite's WAL hook on the writer connection, called after each commit with the WAL's
/// length in pages: wakes the [`Checkpointer`] past [`WAL_CHECKPOINT_BYTES`], and checkpoints
/// on the writer itself past [`WAL_WRITER_CHECKPOINT_BYTES`] (what autocheckpoint, which this
/// hook replaces, does at every commit past its limit).
///
/// # Safety
/// `arg` must point to a live [`HookState`]; `db` and `name` are SQLite's own.
unsafe extern "C" fn wal_hook(
    arg: *mut std::ffi::c_void,
    db: *mut libsqlite3_sys::sqlite3,
    name: *const std::ffi::c_char,
    pages: std::ffi::c_int,
) -> std::ffi::c_int {
    // SAFETY: `install_wal_hook` leaks the state it passes, so it outlives the connection.
    let state = unsafe { &*(arg as *const HookState) };
    if pages >= state.writer_pages {
        // SAFETY: `db` and `name` are valid for the duration of the hook, which may
        // checkpoint (SQLite's own autocheckpoint hook does exactly this).
        unsafe {
            libsqlite3_sys::sqlite3_wal_checkpoint_v2(
                db,
                name,
                libsqlite3_sys::SQLITE_CHECKPOINT_PASSIVE,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    } else if pages >= state.checkpoint_pages {
        state.wake.notify_one();
    }
    libsqlite3_sys::SQLITE_OK
}

/// Installs [`wal_hook`] on a new writer connection, waking `wake`.
async fn install_wal_hook(
    conn: &mut sqlx::SqliteConnection,
    wake: std::sync::Arc<tokio::sync::Notify>,
) -> Result<(), sqlx::Error> {
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut *conn)
        .await?;
    let mut handle = conn.lock_handle().await?;
    // Leaked on purpose: SQLite keeps the pointer as long as the connection lives, and a
    // writer connection is opened once per daemon (again only after a failure).
    let arg = Box::into_raw(Box::new(HookState::new(wake, page_size))) as *mut std::ffi::c_void;
    // SAFETY: the handle is this connection's, locked for the call; `arg` stays valid.
    unsafe {
        libsqlite3_sys::sqlite3_wal_hook(handle.as_raw_handle().as_ptr(), Some(wal_hook), arg);
    }
    Ok(())
}

/// The page size of a database this daemon creates. SQLite's default is 4 KiB; results,
/// alerts and samples arrive with random keys, so each insert lands on a page of its own,
/// and at 16 KiB that is a quarter as many pages to find, split and write for the same rows
/// (measured with `bench ingest --realistic`; see the README). A database keeps the page size
/// it was created with.
pub const PAGE_SIZE: u32 = 16_384;

/// The writer's page cache unless `--cache-mib` says otherwise, in MiB. A transaction over
/// several batches (see the projector) gains only while the pages it dirties stay cached:
/// `orrery bench ingest --events 5000000 --realistic` measured 46k events/s at 128 MiB, 96k
/// at 256 and 99k at 512, with a peak RSS of 529, 689 and 972 MiB.
pub const DEFAULT_CACHE_MIB: u32 = 256;

fn options(path: &Path) -> anyhow::Result<SqliteConnectOptions> {
    let url = format!("sqlite://{}", path.display());
    Ok(SqliteConnectOptions::from_str(&url)
        .with_context(|| format!("database path {}", path.display()))?
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .pragma("temp_store", "memory"))
}

/// The database file is damaged (SQLite says CORRUPT or NOTADB): `orrery rebuild` sets it
/// aside and rebuilds it from the bus.
#[derive(Debug, thiserror::Error)]
#[error(
    "the database file {path} is damaged ({detail}); the bus holds every event: run \
     `orrery rebuild` (it keeps the damaged file beside the new one)"
)]
pub struct Corrupt {
    /// The file.
    pub path: std::path::PathBuf,
    /// SQLite's words.
    pub detail: String,
}

/// The database file cannot be written (read-only file, directory or filesystem): nothing
/// could be projected, so the daemon refuses to start.
#[derive(Debug, thiserror::Error)]
#[error(
    "the database file {path} cannot be written ({detail}): make the file, its -wal and \
     -shm files and its directory writable by this user, on a filesystem mounted read-write"
)]
pub struct Unwritable {
    /// The file.
    pub path: std::path::PathBuf,
    /// SQLite's words.
    pub detail: String,
}

/// The database was migrated by a newer Orrery than this one: its schema has migrations this
/// binary does not know, and running on it could misread or damage what they added.
#[derive(Debug, thiserror::Error)]
#[error(
    "the database file {path} has schema version {database}, newer than this orrery {release} \
     knows (schema {binary}): run the release that wrote it or a later one; to go back to \
     this release, restore a backup taken before the upgrade or rebuild a new file from the bus"
)]
pub struct TooNew {
    /// The file.
    pub path: std::path::PathBuf,
    /// The newest migration the file has.
    pub database: i64,
    /// The newest migration this binary has.
    pub binary: i64,
    /// This binary's version.
    pub release: &'static str,
}

/// The newest schema version this binary knows (its last migration).
pub fn schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// The newest migration recorded in the database, if it has been migrated at all.
async fn recorded_schema(pool: &sqlx::SqlitePool) -> anyhow::Result<Option<i64>> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(pool)
    .await?;
    if !exists {
        return Ok(None);
    }
    Ok(
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?,
    )
}

/// The message of the first SQLite error in a chain whose primary code is one of `codes`.
fn sqlite_error(error: &anyhow::Error, codes: &[i32]) -> Option<String> {
    error.chain().find_map(|e| {
        let db = e.downcast_ref::<sqlx::Error>()?.as_database_error()?;
        let code = db.code()?.parse::<i32>().ok()? & 0xff;
        codes.contains(&code).then(|| db.message().to_owned())
    })
}

/// Opens (creating if needed) and migrates the database; a damaged file is a [`Corrupt`],
/// one that cannot be written an [`Unwritable`], one migrated by a newer release [`TooNew`].
pub async fn open(path: &Path, readers: u32) -> anyhow::Result<Db> {
    open_with(path, readers, DEFAULT_CACHE_MIB).await
}

/// [`open`] with a writer's page cache of `cache_mib` MiB.
pub async fn open_with(path: &Path, readers: u32, cache_mib: u32) -> anyhow::Result<Db> {
    let e = match open_checked(path, readers, cache_mib).await {
        Ok(db) => return Ok(db),
        Err(e) => e,
    };
    let path = path.to_owned();
    // CORRUPT, NOTADB; READONLY, IOERR (a write refused by the filesystem).
    if let Some(detail) = sqlite_error(&e, &[11, 26]) {
        return Err(Corrupt { path, detail }.into());
    }
    if let Some(detail) = sqlite_error(&e, &[8, 10]) {
        return Err(Unwritable { path, detail }.into());
    }
    Err(e)
}

#[tracing::instrument(skip_all, fields(path = %path.display()))]
async fn open_checked(path: &Path, readers: u32, cache_mib: u32) -> anyhow::Result<Db> {
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let hook_wake = std::sync::Arc::clone(&wake);
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(120))
        // The WAL is checkpointed every 128 MiB instead of SQLite's 4 MiB: a batch of
        // heartbeats dirties pages all over the per-agent index, and a checkpoint writes
        // each page once however many commits changed it. Measured with `bench query` (1M
        // heartbeats, 10,000 agents): 75–78k → 100–106k events/s. And off the writer
        // (`Checkpointer`): measured with `bench fanout --clients 2000 --rate 300
        // --backlog 500000`, the live stream's p99 went from 38 to 4 ms, and from 143–164
        // to 21–35 ms while a month of results was pruned.
        .after_connect(move |conn, _| {
            let wake = std::sync::Arc::clone(&hook_wake);
            Box::pin(install_wal_hook(conn, wake))
        })
        .after_release(|conn, _| Box::pin(still_clean(conn)))
        .connect_with(
            options(path)?
                .create_if_missing(true)
                .page_size(PAGE_SIZE)
                // A large page cache keeps the indexes of the hot tables in memory, and the
                // pages a transaction dirties there until its commit writes each once.
                .pragma("cache_size", format!("-{}", u64::from(cache_mib) * 1024)),
        )
        .await
        .with_context(|| format!("opening database {}", path.display()))?;
    let binary = schema_version();
    if let Some(database) = recorded_schema(&writer).await? {
        if database > binary {
            writer.close().await;
            return Err(TooNew {
                path: path.to_owned(),
                database,
                binary,
                release: env!("CARGO_PKG_VERSION"),
            }
            .into());
        }
    }
    MIGRATOR
        .run(&writer)
        .await
        .context("running database migrations")?;
    // With nothing to migrate, a read-only file opens and reads fine and fails at the first
    // commit: write its header once (the same value) so that it fails here, by name.
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&writer)
        .await?;
    sqlx::query(&format!("PRAGMA user_version = {version}"))
        .execute(&writer)
        .await
        .context("writing to the database")?;
    // No full integrity check here: it reads the whole file at every start. A damaged header
    // or schema fails above; damage deeper in is found by the query that meets it.
    let readers = SqlitePoolOptions::new()
        .max_connections(readers)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options(path)?.read_only(true))
        .await
        .context("opening read-only database pool")?;
    let checkpointer = Checkpointer::start(path, wake).await?;
    Ok(Db {
        writer,
        readers,
        demand: WriterDemand::default(),
        checkpointer,
    })
}

/// Whether the writer connection may be reused: no transaction open, neither as sqlx counts
/// them nor as SQLite has them.
///
/// Why: when SQLite rolls a transaction back by itself (SQLITE_FULL, SQLITE_IOERR…), sqlx's
/// later ROLLBACK fails and its depth counter stays at 1; its next `begin()` then opens a
/// SAVEPOINT, and a failure inside that one leaves SQLite holding an orphan transaction into
/// which every later "commit" (a RELEASE of an inner savepoint) silently goes — reported as
/// success, never durable. Measured on a full tmpfs: checkpoints advanced in memory while the
/// file stayed behind. A connection that fails this check is closed; the pool opens a fresh
/// one, and the projector retries from the checkpoint on disk.
async fn still_clean(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::{Connection, Executor};
    if conn.is_in_transaction() {
        tracing::warn!("the writer connection is left inside a transaction; reopening it");
        return Ok(false);
    }
    // BEGIN fails inside an open transaction; otherwise it costs next to nothing.
    if conn.execute("BEGIN").await.is_err() {
        tracing::warn!("SQLite holds a transaction sqlx lost track of; reopening the writer");
        return Ok(false);
    }
    conn.execute("ROLLBACK").await?;
    Ok(true)
}

/// Moves a damaged database (and its WAL and shared-memory files) aside to
/// `<file>.damaged-<unix seconds>`; returns the new name of the main file.
pub fn set_aside(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    let stamp = crate::window::now_ms() / 1000;
    let mut moved = None;
    for suffix in ["", "-wal", "-shm"] {
        let from = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let to =
                std::path::PathBuf::from(format!("{}.damaged-{stamp}{suffix}", path.display()));
            std::fs::rename(&from, &to)
                .with_context(|| format!("moving {} aside", from.display()))?;
            moved.get_or_insert(to);
        }
    }
    moved.with_context(|| format!("{} does not exist", path.display()))
}

/// `orrery compact`: rewrites the database at `path` without the free pages the pruner left
/// (SQLite reuses them for new rows, so a file under retention stops growing, but it never
/// shrinks by itself); its size before and after.
///
/// Why not auto-vacuum: its pointer-map pages are written at every page allocation, and
/// measured with `orrery bench ingest` (1M realistic results) the projector caught up 3–10%
/// slower with `auto_vacuum = INCREMENTAL`.
pub async fn compact(path: &Path) -> anyhow::Result<(u64, u64)> {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
    if !path.is_file() {
        anyhow::bail!("database {} does not exist", path.display());
    }
    let before = size(path) + size(&wal);
    let db = open(path, 1).await?;
    let compacted = sqlx::query("VACUUM").execute(&db.writer).await;
    db.close().await;
    compacted.context("compacting (is a daemon still using the file?)")?;
    Ok((before, size(path) + size(&wal)))
}

impl Db {
    /// Closes both pools, letting WAL checkpoint cleanly.
    pub async fn close(&self) {
        self.readers.close().await;
        self.checkpointer.stop().await;
        // The WAL may hold up to 256 MiB of commits (see `WAL_WRITER_CHECKPOINT_BYTES`): fold it
        // into the main file, so that a stopped daemon leaves one self-contained file (a
        // copy or backup of it alone is complete, and damage to it is seen at the next
        // start rather than masked by pages still in the WAL).
        let folded: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.writer)
            .await;
        match folded {
            Ok((0, _, _)) => {}
            Ok((_, log, done)) => tracing::warn!(
                pages = log,
                folded = done,
                "the WAL could not be folded into the database at stop (another process has it open); it will be at the next start"
            ),
            Err(error) => tracing::warn!(%error, "folding the WAL into the database at stop failed"),
        }
        self.writer.close().await;
    }
}

/// Opens a new database at `path` as releases before [`PAGE_SIZE`] made theirs: SQLite's
/// default 4 KiB pages, in WAL mode.
#[cfg(test)]
pub(crate) async fn made_by_an_earlier_release(path: &Path) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
                .expect("a test path")
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal),
        )
        .await
        .expect("a scratch database")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_database_has_large_pages_and_an_old_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let page_size = |db: Db| async move {
            let size: i64 = sqlx::query_scalar("PRAGMA page_size")
                .fetch_one(&db.writer)
                .await
                .unwrap();
            db.close().await;
            size
        };
        let new = dir.path().join("new.db");
        assert_eq!(page_size(open(&new, 1).await.unwrap()).await, 16_384);

        let old = dir.path().join("old.db");
        let made = made_by_an_earlier_release(&old).await;
        sqlx::query("CREATE TABLE t (x)")
            .execute(&made)
            .await
            .unwrap();
        made.close().await;
        assert_eq!(page_size(open(&old, 1).await.unwrap()).await, 4_096);
    }

    #[test]
    fn wal_limits_are_bytes_whatever_the_page_size() {
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let small = HookState::new(wake.clone(), 4_096);
        assert_eq!(
            (small.checkpoint_pages, small.writer_pages),
            (32_768, 65_536)
        );
        let large = HookState::new(wake.clone(), 16_384);
        assert_eq!(
            (large.checkpoint_pages, large.writer_pages),
            (8_192, 16_384)
        );
        // A nonsense page size cannot divide by zero or overflow.
        let odd = HookState::new(wake, 0);
        assert_eq!(odd.checkpoint_pages, 262_144);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_is_folded_into_the_file_off_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.db");
        let db = open(&path, 1).await.unwrap();
        sqlx::query("CREATE TABLE blobs (b BLOB)")
            .execute(&db.writer)
            .await
            .unwrap();
        let file = || std::fs::metadata(&path).unwrap().len();
        let before = file();
        // 140 commits of 1 MiB: past the checkpointer's 128 MiB, short of the 256 MiB past
        // which the writer would checkpoint by itself. Only a checkpoint writes the file.
        for _ in 0..140 {
            sqlx::query("INSERT INTO blobs VALUES (randomblob(1048576))")
                .execute(&db.writer)
                .await
                .unwrap();
        }
        let limit = std::time::Instant::now() + Duration::from_secs(20);
        while file() < before + 128 * 1024 * 1024 {
            assert!(
                std::time::Instant::now() < limit,
                "the WAL was never folded in: the file has {} bytes",
                file()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        db.close().await;
    }
}
