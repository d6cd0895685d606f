//! The engine: batch → one SQLite transaction (read-model rows + dead letters + checkpoint) →
//! commit.
//!
//! Each stream is read by an *ordered* pull consumer starting at `checkpoint + 1`. Ordered
//! consumers need no acks: the checkpoint in SQLite, committed in the same transaction as the
//! batch's effect, is the only record of progress. That gives exactly-once effect — a crash
//! before commit replays the batch, a crash after it resumes past it — and measured about
//! 2.3× faster than explicit per-message acks.
//!
//! While the stream holds more than has arrived, one transaction takes several batches (see
//! `commit::stays_open`): with random keys a commit writes about a page per row, and the
//! more rows one commit carries, the more of them share a page. Each batch still moves the
//! checkpoint in the same transaction, so a crash replays at most what that transaction took.
//!
//! [`Projector::project_next_batch`] is the single step; [`Projector::run`] loops it with
//! capped backoff. Tests and `orrery rebuild` drive the same step.

mod any;
mod commit;
mod error;
pub mod prune;
mod reread;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, StreamExt};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use sqlx::{SqliteConnection, SqlitePool};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::streams::StreamSpec;
pub use crate::retention::Window;
use crate::window::to_unix_ms;
pub use any::{AnyProjection, Drive};
use commit::{commit_task, Open, Step};
pub use commit::{load_gaps, reset, Gap};
pub use error::ProjectorError;

/// Most payload bytes collected into one batch, whatever `batch_size` allows: a batch of
/// large messages (alerts carry whole webhook bodies) must not hold gigabytes in memory.
const MAX_BATCH_BYTES: usize = 32 << 20;
/// How long one step waits for a first message before reporting [`Outcome::Idle`].
const IDLE_POLL: Duration = Duration::from_millis(500);
/// How long the consumer may stay silent before the stream is asked whether it holds
/// messages the consumer has not delivered.
const STALL_CHECK: Duration = Duration::from_secs(3);

/// One message as a projection sees it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// JetStream stream sequence.
    pub seq: u64,
    /// Full subject.
    pub subject: &'a str,
    /// Raw body.
    pub payload: &'a [u8],
    /// JetStream publish time, Unix ms: the fallback event time.
    pub published_ms: i64,
}

/// A table of a read model as `orrery digest` hashes it: every column, rows in key order.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    /// Table name.
    pub name: &'static str,
    /// The `ORDER BY` of its key.
    pub key: &'static str,
    /// For tables with a retention (so that replicas differ for a while in their oldest
    /// rows, until each one's pruner gets to them): which rows are hashed and pruned.
    pub window: Option<Window>,
    /// The schema version that gave the table its window: a database of an older schema (a
    /// snapshot or backup being verified before it is migrated) is hashed whole, as the
    /// release that wrote it and recorded its digest hashed it.
    pub window_since: i64,
}

impl Table {
    /// A table hashed whole, in `key` order.
    pub const fn keyed(name: &'static str, key: &'static str) -> Self {
        Self {
            name,
            key,
            window: None,
            window_since: 0,
        }
    }

    /// A table of a read model with a retention: `keep` and `prune` as in [`Window::Kept`].
    pub const fn kept(
        name: &'static str,
        key: &'static str,
        class: crate::retention::Class,
        keep: &'static str,
        prune: &'static str,
    ) -> Self {
        Self {
            name,
            key,
            window: Some(Window::Kept { class, keep, prune }),
            window_since: 0,
        }
    }

    /// This table, with a window that schema `version` gave it.
    pub const fn windowed_since(self, version: i64) -> Self {
        Self {
            window_since: version,
            ..self
        }
    }
}

/// One read model as `orrery digest` and the pruner see it: its stream and its tables.
pub type ReadModel = (StreamSpec, &'static [Table]);

/// A read model fed by one stream: decode is pure, apply touches only the transaction.
pub trait Projection: Send + Sync + 'static {
    /// A validated event, ready to apply.
    type Event: Send + Sync + 'static;

    /// The stream this projection consumes.
    fn stream(&self) -> StreamSpec;

    /// Validates a message; `Err` holds the reason it goes to `dead_letters`.
    fn decode(&self, msg: &Message<'_>) -> Result<Self::Event, String>;

    /// Writes a batch of events. Must read no clock, draw no randomness and do no I/O besides
    /// `conn`, so that a replay gives the same rows.
    fn apply(
        &self,
        conn: &mut SqliteConnection,
        events: &[Self::Event],
    ) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// What is kept in `dead_letters` of a message that failed to decode; projections of
    /// streams that carry secrets redact it here.
    fn dead_letter_payload<'a>(&self, payload: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        std::borrow::Cow::Borrowed(payload)
    }

    /// Called after a batch's transaction committed, in stream order, with the events it
    /// applied; the place to notify live listeners. Must not block.
    fn committed(&self, _events: &[Self::Event]) {}

    /// Its tables as `orrery digest` hashes them: what replicas at the same checkpoint must
    /// hold identically (derived caches that depend on timing are left out).
    fn tables(&self) -> &'static [Table];

    /// Re-applies events already projected, for the parts of them an older release did not
    /// keep (see [`reread`]): must add nothing twice. Most projections have none.
    fn reapply(
        &self,
        _conn: &mut SqliteConnection,
        _events: &[Self::Event],
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Deletes every row this projection wrote (for `orrery rebuild`).
    fn reset(&self, conn: &mut SqliteConnection) -> impl Future<Output = sqlx::Result<()>> + Send;
}

/// What one step did; the daemon loop and tests branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A batch was committed.
    Applied {
        /// Messages in the batch (projected, skipped and dead-lettered).
        messages: usize,
        /// Of those, how many went to `dead_letters`.
        dead_lettered: usize,
        /// The committed checkpoint.
        checkpoint: u64,
    },
    /// A batch was collected and its commit started; nothing finished committing yet.
    Started {
        /// Messages in the batch.
        messages: usize,
    },
    /// Nothing arrived within the idle poll.
    Idle,
    /// Shutdown was requested and nothing is left in flight.
    Stopped,
}

/// Counters exported on `/metrics`, one set per stream: atomics read at scrape time, and two
/// histograms observed once per batch (never per message).
#[derive(Debug)]
pub struct Counters {
    /// Messages whose effect was committed (including dead-lettered ones).
    pub messages: AtomicU64,
    /// Messages stored in `dead_letters`.
    pub dead_letters: AtomicU64,
    /// Committed batches.
    pub batches: AtomicU64,
    /// Failed steps (retried).
    pub errors: AtomicU64,
    /// Consumers reopened because they went silent with messages left in the stream.
    pub stalls: AtomicU64,
    /// Messages committed per second, as last sampled (see `app`'s sampler).
    pub rate: AtomicU64,
    /// Messages the stream held past the last one read, as JetStream counted them when it
    /// delivered it: how far behind the projector is reading (0 once it has read the tail).
    pub pending: AtomicU64,
    /// Why the last step failed, until a batch commits again (`/ready` reports it).
    pub failure: std::sync::Mutex<Option<String>>,
    /// Messages per committed batch.
    pub batch_sizes: Histogram,
    /// Seconds from a transaction's start to its commit (several batches while behind).
    pub commit_seconds: Histogram,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            messages: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            failure: std::sync::Mutex::new(None),
            // 1, 2, 4 … 8192 messages (the largest batch size is 65536: the top bucket is +Inf).
            batch_sizes: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            // 0.1 ms … 3.3 s.
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        }
    }
}

/// A live view of one projection's progress, shared with the API.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The stream.
    pub stream: StreamSpec,
    /// Last committed stream sequence.
    pub checkpoint: watch::Receiver<u64>,
    /// Throughput and error counters.
    pub counters: Arc<Counters>,
}

/// Where a message sits in its stream.
#[derive(Debug, Clone, Copy)]
struct Meta {
    seq: u64,
    published_ms: i64,
}

/// A decoded batch that owns its raw messages, so it can be committed on another task while
/// the next batch is collected.
struct Batch<E> {
    raw: Vec<jetstream::Message>,
    metas: Vec<Meta>,
    events: Vec<E>,
    /// For each event, the index of its message in `raw`.
    origins: Vec<usize>,
    /// Messages to store in `dead_letters`: index in `raw` and reason.
    dead: Vec<(usize, String)>,
    /// Sequences right before this batch the stream no longer held (first, last).
    gap: Option<(u64, u64)>,
    /// Whether the stream held more messages past this batch when it was delivered.
    behind: bool,
}

impl<E> Batch<E> {
    fn message(&self, i: usize) -> Message<'_> {
        Message {
            seq: self.metas[i].seq,
            subject: self.raw[i].subject.as_str(),
            payload: &self.raw[i].payload,
            published_ms: self.metas[i].published_ms,
        }
    }

    fn last(&self) -> Meta {
        *self.metas.last().expect("batches are never empty")
    }

    /// Cuts the batch into batches of at most `max` messages, in stream order. Each carries
    /// its events and dead letters; the gap stays with the first, and every one but the
    /// last says the stream holds more, as it does.
    fn split(self, max: usize) -> Vec<Batch<E>> {
        let max = max.max(1);
        if self.raw.len() <= max {
            return vec![self];
        }
        let Batch {
            raw,
            metas,
            events,
            origins,
            dead,
            gap,
            behind,
        } = self;
        let parts = raw.len().div_ceil(max);
        let mut out: Vec<Batch<E>> = Vec::with_capacity(parts);
        let mut raw = raw.into_iter();
        let mut metas = metas.into_iter();
        for k in 0..parts {
            let raw: Vec<_> = raw.by_ref().take(max).collect();
            let metas: Vec<_> = metas.by_ref().take(max).collect();
            out.push(Batch {
                raw,
                metas,
                events: Vec::new(),
                origins: Vec::new(),
                dead: Vec::new(),
                gap: if k == 0 { gap } else { None },
                behind: if k + 1 == parts { behind } else { true },
            });
        }
        // Events and dead letters are in message order: each goes to its message's part.
        for (ev, i) in events.into_iter().zip(origins) {
            let part = &mut out[i / max];
            part.events.push(ev);
            part.origins.push(i % max);
        }
        for (i, reason) in dead {
            out[i / max].dead.push((i % max, reason));
        }
        out
    }
}

/// Most messages one write holds the writer for while another projection's commits have
/// been waiting for it lately: a batch is then written in parts of this size, with a chance
/// for the waiting commit between them (~20 ms of results at 5M rows, where a whole batch
/// of 32,768 held the live stream's events for over half a second).
const SHARED_WRITE_MESSAGES: usize = 2048;
/// How long a commit found waiting keeps batches cut into parts.
const SHARED_WRITER_MEMORY: Duration = Duration::from_secs(5);

/// What a committed batch did.
#[derive(Debug, Clone, Copy)]
struct Committed {
    messages: usize,
    dead_lettered: usize,
    checkpoint: u64,
}

/// A batch's commit, running on its own task.
type CommitTask<E> = JoinHandle<Result<Step<E>, ProjectorError>>;

/// Where the previous batch's commit stands while the next batch is collected.
enum Commit<E> {
    /// Nothing is committing.
    Idle,
    /// Still committing.
    Running(CommitTask<E>),
    /// Finished while the next batch was being collected.
    Done(Result<Step<E>, ProjectorError>),
}

/// State the commit task updates after each commit.
#[derive(Debug)]
struct Shared {
    stream: StreamSpec,
    /// Most messages one transaction takes over several batches.
    tx_messages: usize,
    progress: watch::Sender<u64>,
    counters: Arc<Counters>,
}

/// Capped exponential backoff after the `failures`-th failure in a row (counted here).
fn retry_delay(failures: &mut u32) -> Duration {
    let delay = Duration::from_millis((100u64 << (*failures).min(6)).min(5_000));
    *failures = failures.saturating_add(1);
    delay
}

/// An ordered consumer's messages of `stream` from sequence `start` (or the first the stream
/// still holds).
async fn ordered_from(
    js: &jetstream::Context,
    stream: &str,
    start: u64,
) -> Result<consumer::pull::Ordered, ProjectorError> {
    js.get_stream_no_info(stream)
        .await
        .map_err(|e| ProjectorError::bus("opening stream", e))?
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| ProjectorError::bus("creating ordered consumer", e))?
        .messages()
        .await
        .map_err(|e| ProjectorError::bus("starting consumer", e))
}

/// Decodes one message; a decoder bug costs one dead letter, not the whole projection.
fn decode_guarded<P: Projection>(projection: &P, msg: &Message<'_>) -> Result<P::Event, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| projection.decode(msg)))
        .unwrap_or_else(|_| Err("the decoder panicked on this message".to_owned()))
}

/// Drives one [`Projection`] from its stream into SQLite.
///
/// Two stages overlap: while batch *k* commits on its own task, batch *k + 1* is collected
/// and decoded. A batch counts as projected only once its commit returns.
pub struct Projector<P: Projection> {
    projection: Arc<P>,
    js: jetstream::Context,
    writer: SqlitePool,
    batch_size: usize,
    batch_wait: Duration,
    /// Last committed stream sequence.
    checkpoint: u64,
    /// Last sequence handed to a commit; equals `checkpoint` when nothing is in flight.
    position: u64,
    consumer: Option<consumer::pull::Ordered>,
    in_flight: Option<CommitTask<P::Event>>,
    /// The transaction left open over the batches written so far (see [`Step::Open`]).
    open: Option<Open<P::Event>>,
    /// Parts of a decoded batch still to commit, in order (see [`SHARED_WRITE_MESSAGES`]).
    queued: std::collections::VecDeque<Batch<P::Event>>,
    /// Commits waiting for the writer, this projector's among them.
    demand: crate::db::WriterDemand,
    shared: Arc<Shared>,
    /// Since when the consumer has delivered nothing (for the stall check).
    idle_since: Option<Instant>,
}

/// Loads a stream's committed checkpoint (0 when it has none).
pub async fn load_checkpoint<'e>(
    executor: impl sqlx::SqliteExecutor<'e>,
    stream: &str,
) -> sqlx::Result<u64> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM checkpoints WHERE stream = ?")
        .bind(stream)
        .fetch_optional(executor)
        .await?;
    Ok(seq.unwrap_or(0) as u64)
}

impl<P: Projection> Projector<P> {
    /// Prepares a projector resuming from the stored checkpoint.
    pub async fn new(
        projection: P,
        js: jetstream::Context,
        writer: SqlitePool,
        batch_size: usize,
        batch_wait: Duration,
    ) -> sqlx::Result<Self> {
        let stream = projection.stream();
        let checkpoint = load_checkpoint(&writer, stream.name).await?;
        let (progress, _) = watch::channel(checkpoint);
        Ok(Self {
            projection: Arc::new(projection),
            js,
            writer,
            batch_size,
            batch_wait,
            checkpoint,
            position: checkpoint,
            consumer: None,
            in_flight: None,
            open: None,
            queued: std::collections::VecDeque::new(),
            demand: crate::db::WriterDemand::default(),
            idle_since: None,
            shared: Arc::new(Shared {
                stream,
                tx_messages: batch_size.saturating_mul(commit::BATCHES_PER_TX),
                progress,
                counters: Arc::default(),
            }),
        })
    }

    /// This projector, counting its commits in `demand` and committing early when another
    /// commit counted there waits for the writer (projectors sharing a database share it).
    pub fn sharing_demand(mut self, demand: crate::db::WriterDemand) -> Self {
        self.demand = demand;
        self
    }

    /// A handle that follows this projector's checkpoint.
    pub fn progress(&self) -> Progress {
        Progress {
            stream: self.shared.stream,
            checkpoint: self.shared.progress.subscribe(),
            counters: self.shared.counters.clone(),
        }
    }

    /// The last committed stream sequence.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Loops [`Self::project_next_batch`] until `cancel` fires, retrying failures with capped
    /// exponential backoff from the last checkpoint.
    pub async fn run(mut self, cancel: CancellationToken) {
        let stream = self.shared.stream.name;
        let mut failures: u32 = 0;
        // What an older release did not keep comes first: a rebuild would have it before
        // anything newer.
        while !cancel.is_cancelled() {
            match reread::run(
                self.projection.as_ref(),
                &self.js,
                &self.writer,
                self.batch_size,
                &cancel,
            )
            .await
            {
                Ok(()) => break,
                Err(error) => {
                    self.set_failure(Some(error.to_string()));
                    let delay = retry_delay(&mut failures);
                    tracing::warn!(stream, %error, "reading the stream again failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.set_failure(None);
        failures = 0;
        loop {
            match self.project_next_batch(&cancel).await {
                Ok(Outcome::Stopped) => break,
                Ok(outcome) => {
                    failures = 0;
                    // A commit, or a consumer with nothing left to give, proves the fault
                    // gone; a step that merely started a commit says nothing about the disk.
                    if matches!(outcome, Outcome::Applied { .. } | Outcome::Idle) {
                        self.set_failure(None);
                    }
                }
                Err(error) => {
                    self.shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                    self.set_failure(Some(error.to_string()));
                    let delay = retry_delay(&mut failures);
                    tracing::warn!(stream, %error, retry_in_ms = delay.as_millis() as u64,
                        "projection step failed; resuming from checkpoint");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::info!(stream, checkpoint = self.checkpoint, "projector stopped");
    }

    fn set_failure(&self, failure: Option<String>) {
        *crate::sync::lock(&self.shared.counters.failure) = failure;
    }

    async fn open_consumer(&mut self) -> Result<&mut consumer::pull::Ordered, ProjectorError> {
        if self.consumer.is_none() {
            let name = self.shared.stream.name;
            let messages = ordered_from(&self.js, name, self.position + 1).await?;
            tracing::debug!(
                stream = name,
                from = self.position + 1,
                "ordered consumer started"
            );
            self.consumer = Some(messages);
        }
        Ok(self.consumer.as_mut().expect("just set"))
    }

    /// Collects the next batch of up to `batch_size` messages (and [`MAX_BATCH_BYTES`]) —
    /// group commit:
    /// - while the previous batch commits, it takes every message that arrives until that
    ///   commit is done (`commit` turns [`Commit::Done`]), so batches grow exactly as long as
    ///   commits take;
    /// - with nothing committing, it waits up to [`IDLE_POLL`] for a first message, then
    ///   takes what is ready (and what arrives within `batch_wait`, 0 by default): an event
    ///   published alone is committed at once.
    async fn collect(
        &mut self,
        cancel: &CancellationToken,
        commit: &mut Commit<P::Event>,
    ) -> Result<Vec<jetstream::Message>, ProjectorError> {
        let batch_size = self.batch_size;
        let batch_wait = self.batch_wait;
        // Creating a consumer is a request that can wait out a timeout while NATS is away;
        // shutdown must not wait for it.
        let consumer = tokio::select! {
            _ = cancel.cancelled() => return Ok(Vec::new()),
            consumer = self.open_consumer() => consumer?,
        };
        let mut batch = Vec::with_capacity(batch_size.min(4096));
        let mut bytes = 0;
        let mut failure = None;
        let mut linger_until: Option<Instant> = None;
        while failure.is_none() && batch.len() < batch_size && bytes < MAX_BATCH_BYTES {
            let next = match consumer.next().now_or_never() {
                Some(next) => next,
                None if cancel.is_cancelled() => break,
                None => match commit {
                    Commit::Running(task) => tokio::select! {
                        biased;
                        _ = cancel.cancelled() => break,
                        joined = task => {
                            *commit = Commit::Done(joined.unwrap_or_else(|join| {
                                Err(ProjectorError::bus("commit task", join))
                            }));
                            // Take what is ready, then commit it.
                            continue;
                        }
                        next = consumer.next() => next,
                    },
                    // A batch was written into a transaction left open for more: wait for
                    // the next, which the stream said it holds.
                    Commit::Done(Ok(Step::Open(_))) if batch.is_empty() => tokio::select! {
                        _ = cancel.cancelled() => break,
                        next = tokio::time::timeout(IDLE_POLL, consumer.next()) => match next {
                            Err(_) => break,
                            Ok(next) => next,
                        },
                    },
                    // A commit just finished: report it now, and commit what we have.
                    Commit::Done(_) => break,
                    Commit::Idle if batch.is_empty() => tokio::select! {
                        _ = cancel.cancelled() => break,
                        next = tokio::time::timeout(IDLE_POLL, consumer.next()) => match next {
                            Err(_) => break,
                            Ok(next) => next,
                        },
                    },
                    // No linger (the default): commit what we have. No timer either, since
                    // tokio's timers round up to the next millisecond tick.
                    Commit::Idle if batch_wait.is_zero() => break,
                    Commit::Idle => {
                        let until =
                            *linger_until.get_or_insert_with(|| Instant::now() + batch_wait);
                        match tokio::time::timeout_at(until, consumer.next()).await {
                            Ok(next) => next,
                            Err(_) => break,
                        }
                    }
                },
            };
            match next {
                Some(Ok(m)) => {
                    bytes += m.payload.len();
                    batch.push(m);
                }
                Some(Err(e)) => failure = Some(ProjectorError::bus("receiving", e)),
                None => failure = Some(ProjectorError::ConsumerEnded),
            }
        }
        if let Some(error) = failure {
            // The consumer's position is now uncertain: start over after the messages in hand.
            self.consumer = None;
            if batch.is_empty() {
                return Err(error);
            }
            tracing::debug!(%error, "consumer failed mid-batch; keeping the messages in hand");
        }
        Ok(batch)
    }

    /// Drops the consumer and everything not yet committed; the next step resumes at the
    /// checkpoint.
    fn rewind(&mut self) {
        self.consumer = None;
        // Dropped, the transaction rolls back.
        self.open = None;
        self.queued.clear();
        self.position = self.checkpoint;
    }

    /// Waits for the commit in flight, if any, and records its checkpoint; a transaction it
    /// left open is kept for the next batch.
    async fn finish(
        &mut self,
        commit: Commit<P::Event>,
    ) -> Result<Option<Committed>, ProjectorError> {
        let step = match commit {
            Commit::Idle => return Ok(None),
            Commit::Running(task) => match task.await {
                Ok(result) => result?,
                Err(join) => return Err(ProjectorError::bus("commit task", join)),
            },
            Commit::Done(result) => result?,
        };
        match step {
            Step::Committed(committed) => {
                self.checkpoint = committed.checkpoint;
                Ok(Some(committed))
            }
            Step::Open(open) => {
                self.open = Some(open);
                Ok(None)
            }
        }
    }

    /// Starts committing `batch`, in the transaction left open if any; with no batch,
    /// commits that transaction.
    fn start_commit(&mut self, batch: Option<Batch<P::Event>>) {
        let open = self.open.take();
        if batch.is_none() && open.is_none() {
            return;
        }
        self.in_flight = Some(tokio::spawn(commit_task(
            self.projection.clone(),
            self.writer.clone(),
            self.demand.clone(),
            self.shared.clone(),
            batch,
            open,
        )));
    }

    /// Decodes collected messages into a batch, skipping any at or below `position`.
    fn decode(
        &mut self,
        raw: Vec<jetstream::Message>,
    ) -> Result<Option<Batch<P::Event>>, ProjectorError> {
        let mut kept = Vec::with_capacity(raw.len());
        let mut metas = Vec::with_capacity(raw.len());
        let mut pending = None;
        for m in raw {
            let info = m
                .info()
                .map_err(|e| ProjectorError::bus("reading message metadata", e))?;
            if info.stream_sequence <= self.position {
                continue; // already committed or in flight: a redelivery is a no-op
            }
            pending = Some(info.pending);
            metas.push(Meta {
                seq: info.stream_sequence,
                published_ms: to_unix_ms(info.published),
            });
            kept.push(m);
        }
        let (Some(first), Some(pending)) = (metas.first(), pending) else {
            return Ok(None);
        };
        self.shared
            .counters
            .pending
            .store(pending, Ordering::Relaxed);
        // Retention removes from the head of a stream: when the first message delivered is
        // past the one after the checkpoint, the ones between are gone for good.
        let gap = (first.seq > self.position + 1).then(|| (self.position + 1, first.seq - 1));
        if let Some((from, to)) = gap {
            tracing::warn!(
                stream = self.shared.stream.name,
                from,
                to,
                "the stream no longer holds these messages (retention or purge): they were \
                 never projected; restore a snapshot that covers them (see /ready)"
            );
        }
        let mut batch = Batch {
            raw: kept,
            metas,
            events: Vec::new(),
            origins: Vec::new(),
            dead: Vec::new(),
            gap,
            behind: pending > 0,
        };
        batch.events.reserve(batch.raw.len());
        batch.origins.reserve(batch.raw.len());
        for i in 0..batch.raw.len() {
            match decode_guarded(self.projection.as_ref(), &batch.message(i)) {
                Ok(ev) => {
                    batch.events.push(ev);
                    batch.origins.push(i);
                }
                Err(reason) => batch.dead.push((i, reason)),
            }
        }
        self.position = batch.last().seq;
        Ok(Some(batch))
    }

    /// One step: collect and decode the next batch while the previous one commits, wait for
    /// that commit, then start committing the new batch. On any error nothing uncommitted is
    /// kept: the consumer restarts from the checkpoint on the next step.
    #[tracing::instrument(skip_all, fields(stream = self.shared.stream.name))]
    pub async fn project_next_batch(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Outcome, ProjectorError> {
        let mut commit = self.in_flight.take().map_or(Commit::Idle, Commit::Running);
        if cancel.is_cancelled() {
            // Finish the commit in hand, and the transaction left open; collect nothing new.
            let mut committed = self.finish(commit).await.inspect_err(|_| self.rewind())?;
            if self.open.is_some() {
                self.start_commit(None);
                let commit = self.in_flight.take().map_or(Commit::Idle, Commit::Running);
                committed = self.finish(commit).await.inspect_err(|_| self.rewind())?;
            }
            return Ok(committed.map_or(Outcome::Stopped, Outcome::from));
        }
        if let Some(part) = self.queued.pop_front() {
            // The rest of a batch cut into parts: nothing is collected until it is written.
            let committed = self.finish(commit).await.inspect_err(|_| self.rewind())?;
            let started = part.raw.len();
            self.start_commit(Some(part));
            return Ok(committed.map_or(Outcome::Started { messages: started }, Outcome::from));
        }
        let collected = self.collect(cancel, &mut commit).await;
        // Decoded before waiting for the commit in flight, so that decoding runs on one core
        // while SQLite writes on the other instead of after it. Nothing decoded is kept if
        // that commit failed: the rewind drops it.
        let decoded = collected.and_then(|raw| self.decode(raw));
        let committed = self.finish(commit).await.inspect_err(|_| self.rewind())?;
        let mut batch = decoded.inspect_err(|_| self.rewind())?;
        if self.demand.wanted_within(SHARED_WRITER_MEMORY) {
            if let Some(whole) = batch.take() {
                self.queued = whole.split(SHARED_WRITE_MESSAGES).into();
                batch = self.queued.pop_front();
            }
        }
        let started = batch.as_ref().map_or(0, |b| b.raw.len());
        // Nothing more arrived for a transaction left open: it commits now.
        self.start_commit(batch);
        if started > 0 {
            self.idle_since = None;
        }
        Ok(match committed {
            Some(c) => Outcome::from(c),
            None if started > 0 => Outcome::Started { messages: started },
            None if cancel.is_cancelled() => Outcome::Stopped,
            None => {
                self.check_stall().await;
                Outcome::Idle
            }
        })
    }

    /// An ordered consumer whose host node died stays silent, with no error, until the client
    /// notices missed heartbeats (measured: ~35 s on a 3-node cluster). When nothing has
    /// arrived for [`STALL_CHECK`] while the stream holds messages past our position, the
    /// consumer is dropped and the next step reopens it from the checkpoint.
    async fn check_stall(&mut self) {
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() < STALL_CHECK {
            return;
        }
        self.idle_since = Some(Instant::now());
        let name = self.shared.stream.name;
        let last = tokio::time::timeout(STALL_CHECK, self.js.get_stream(name))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|s| s.cached_info().state.clone())
            .filter(|state| state.messages > 0)
            .map(|state| state.last_sequence);
        if let Some(last) = last.filter(|l| *l > self.position) {
            tracing::warn!(
                stream = name,
                position = self.position,
                stream_last = last,
                "the consumer has delivered nothing while the stream holds more; reopening it"
            );
            self.consumer = None;
            self.shared.counters.stalls.fetch_add(1, Ordering::Relaxed);
        }
    }
}
