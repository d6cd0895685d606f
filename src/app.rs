//! Builds the daemon from a [`Config`] and runs it until shutdown.
//!
//! `main` and the integration tests drive exactly this: `Application::build(config)`, then
//! `port()`, then `run_until_stopped()`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::sse::StreamLimits;
use crate::api::{self, AppState};
use crate::bus::{self, streams};
use crate::config::Config;
use crate::db::{self, Db};
use crate::digest::ReadModel;
use crate::live::Hub;
use crate::projections::{self, heartbeats, results};
use crate::projector::{load_checkpoint, prune, Progress};
use crate::token::Authenticator;
use futures::future::BoxFuture;

/// How long in-flight HTTP requests get to finish after shutdown starts.
const HTTP_DRAIN: Duration = Duration::from_secs(10);

/// An error that is the operator's to fix (a setting, an unsupported nats-server): the
/// daemon stops with exit code 2 and this one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// A built daemon: database open, bus client created, listener bound, nothing running yet.
pub struct Application {
    listener: TcpListener,
    router: Router,
    port: u16,
    db: Db,
    cancel: CancellationToken,
    /// Fires on a shutdown request; `cancel` follows a drain delay later.
    stop: CancellationToken,
    drain_delay: Duration,
    background: Vec<JoinHandle<()>>,
    /// Set by a background task that found the daemon cannot run (an old nats-server).
    refusal: Arc<std::sync::OnceLock<String>>,
}

impl Application {
    /// Opens the database (migrating it), connects to NATS in the background, starts the
    /// provisioning and projector tasks and binds the HTTP listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let bus_events: Arc<bus::BusEvents> = Arc::default();
        let nats = bus::connect_watching(&config.nats, Arc::clone(&bus_events)).await?;
        let js = jetstream::new(nats.clone());
        if let Some(snapshots) = &config.snapshot {
            if !config.database.exists() {
                restore_snapshot(&config, &nats, &js, &snapshots.bucket).await;
            }
        }
        let db = db::open_with(&config.database, config.readers, config.cache_mib).await?;
        let cancel = CancellationToken::new();
        let stop = CancellationToken::new();

        let topology_start = load_checkpoint(&db.writer, streams::TOPOLOGY.name).await?;
        let hub = Arc::new(Hub::new(
            config.sse.replay_events,
            config.sse.client_queue,
            topology_start,
        ));
        let listeners = projections::Listeners {
            hub: hub.clone(),
            durations: Arc::default(),
        };
        let roster = projections::roster(&config, &listeners);
        let read_models: Arc<[ReadModel]> =
            roster.iter().map(|p| (p.stream(), p.tables())).collect();
        let mut projectors = Vec::new();
        for projection in roster {
            projectors.push(
                projection
                    .projector(
                        js.clone(),
                        db.writer.clone(),
                        db.demand.clone(),
                        config.batch_size,
                        config.batch_wait,
                    )
                    .await
                    .context("loading checkpoints")?,
            );
        }
        let progress: Arc<[Progress]> = projectors.iter().map(|p| p.progress()).collect();

        let provisioning = streams::Provisioning {
            replicas: config.stream_replicas,
            max_age: config.stream_max_age,
        };
        let runs = projectors
            .into_iter()
            .map(|p| p.run(cancel.clone()))
            .collect();
        let refusal = Arc::default();
        let pruning: Arc<prune::Report> = Arc::default();
        let mut background = vec![
            tokio::spawn(supervise(
                js.clone(),
                provisioning,
                config.provision_streams,
                runs,
                Arc::clone(&refusal),
                cancel.clone(),
            )),
            tokio::spawn(prune_samples_forever(
                db.writer.clone(),
                config.fleet.sample_retention,
                cancel.clone(),
            )),
            tokio::spawn(prune::prune_forever(
                db.writer.clone(),
                db.readers.clone(),
                read_models.to_vec(),
                config.retention,
                Arc::clone(&pruning),
                forget_pruned_durations(
                    Arc::clone(&listeners.durations),
                    config.retention.of(crate::retention::Class::Results),
                ),
                cancel.clone(),
            )),
        ];

        if let Some(results) = progress.iter().find(|p| p.stream == streams::RESULTS) {
            background.push(tokio::spawn(warm_durations(
                db.readers.clone(),
                Arc::clone(&listeners.durations),
                results.clone(),
                WARM_EVERY,
                cancel.clone(),
            )));
        }
        background.push(tokio::spawn(sample_rates(
            Arc::clone(&progress),
            cancel.clone(),
        )));
        background.push(tokio::spawn(diagnose_while_unreachable(
            nats.clone(),
            config.nats.clone(),
            Arc::clone(&bus_events),
            cancel.clone(),
        )));
        if let Some(snapshots) = config.snapshot.clone() {
            background.push(tokio::spawn(crate::snapshot::take_forever(
                config.database.clone(),
                js.clone(),
                snapshots,
                Arc::clone(&read_models),
                config.retention,
                cancel.clone(),
            )));
        }

        let oidc = config
            .oidc
            .clone()
            .map(crate::token::Oidc::new)
            .transpose()?
            .map(Arc::new);
        if let Some(oidc) = &oidc {
            background.push(tokio::spawn(refresh_keys(Arc::clone(oidc), cancel.clone())));
        }
        let auth = Arc::new(Authenticator::new(config.jwt_secret.as_ref(), oidc));
        let telemetry = Arc::new(crate::telemetry::Telemetry::new(Arc::clone(&progress)));
        let state = AppState {
            db: db.clone(),
            nats,
            js,
            auth: Arc::clone(&auth),
            projections: progress,
            read_models,
            ready_max_lag: config.ready_max_lag,
            bus_timeout: Duration::from_secs(5),
            hub,
            durations: listeners.durations,
            recurrence_pages: Arc::default(),
            tickets: Arc::default(),
            limits: Arc::new(StreamLimits::new(
                config.sse.max_per_user,
                config.sse.max_connections,
            )),
            sse: config.sse,
            mutation_wait: config.mutation_wait,
            alert_stale_after: config.alert_stale_after,
            fleet: Arc::new(config.fleet.clone()),
            retention: config.retention,
            pruning: Arc::clone(&pruning),
            bus_view: Arc::default(),
            shutdown: cancel.clone(),
            stopping: stop.clone(),
            logins: Arc::default(),
            telemetry,
            sse_counters: Arc::default(),
            bus_events,
        };
        let listener = bind(config.listen).with_context(|| format!("binding {}", config.listen))?;
        let port = listener.local_addr()?.port();
        Ok(Self {
            listener,
            router: api::router(state, &config.cors),
            port,
            db,
            cancel,
            stop,
            drain_delay: config.drain_delay,
            background,
            refusal,
        })
    }

    /// The bound HTTP port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cancel this to shut the daemon down (what SIGTERM does): `/ready` turns 503 at once,
    /// and after the drain delay HTTP drains, live streams end and projectors stop.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Serves HTTP and projects until the shutdown token fires; then drains HTTP (bounded),
    /// lets each projector commit the batch in hand, and closes the database.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let cancel = self.cancel.clone();
        tracing::info!(port = self.port, "listening");
        let (stop, drain_delay) = (self.stop.clone(), self.drain_delay);
        let drained = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = drained.cancelled() => return,
                _ = stop.cancelled() => {}
            }
            if !drain_delay.is_zero() {
                tracing::info!(
                    drain_ms = drain_delay.as_millis() as u64,
                    "draining: /ready answers 503 before live streams end"
                );
                tokio::select! {
                    _ = drained.cancelled() => {}
                    _ = tokio::time::sleep(drain_delay) => {}
                }
            }
            drained.cancel();
        });
        // Live events are small writes that follow one another: Nagle's algorithm would hold
        // each behind the previous one's delayed ACK.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
        });
        // As a make-service, a bare Router deep-clones itself (every route table) for each
        // connection: measured at ~60% of an idle SSE connection's memory. IntoMakeService
        // shares one router between connections.
        let server = axum::serve(listener, self.router.into_make_service())
            .with_graceful_shutdown(cancel.clone().cancelled_owned());
        let drain_deadline = async {
            cancel.cancelled().await;
            tokio::time::sleep(HTTP_DRAIN).await;
        };
        tokio::select! {
            result = server => result.context("HTTP server")?,
            _ = drain_deadline => tracing::warn!("HTTP drain timed out; closing open connections"),
        }
        self.cancel.cancel();
        for task in self.background {
            let _ = task.await;
        }
        self.db.close().await;
        if let Some(reason) = self.refusal.get() {
            return Err(Refusal(reason.clone()).into());
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// A replica starting with no database: restore the newest usable snapshot if the bus
/// answers within [`crate::snapshot::RESTORE_WAIT`]; otherwise (or on any failure) start
/// empty and replay the streams, which is slower but exact.
async fn restore_snapshot(
    config: &Config,
    nats: &async_nats::Client,
    js: &jetstream::Context,
    bucket: &str,
) {
    if !bus::wait_connected(nats, crate::snapshot::RESTORE_WAIT).await {
        tracing::warn!(
            bucket,
            "the bus did not answer in time: no snapshot restored; \
            replaying the streams from the start"
        );
        return;
    }
    let read_models = projections::read_models(config);
    match crate::snapshot::restore(&config.database, js, bucket, &read_models).await {
        Ok(Some(info)) => tracing::info!(snapshot = info.name, bytes = info.bytes,
            took_ms = info.took_ms, checkpoints = ?info.checkpoints,
            "restored and verified a snapshot; catching up from its checkpoints"),
        Ok(None) => tracing::info!(bucket, "no usable snapshot: replaying the streams"),
        Err(error) => tracing::warn!(
            bucket,
            error = format!("{error:#}"),
            "restoring a snapshot failed: replaying the streams"
        ),
    }
}

/// Connections the kernel may queue before they are accepted (it caps this at
/// `net.core.somaxconn`): after a deploy every browser reconnects at once.
const ACCEPT_BACKLOG: u32 = 16_384;

/// Binds the HTTP listener with a backlog deep enough for a reconnect storm.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted daemon can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// How often old stats samples are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How often duration blocks are merged.
const MAINTAIN_EVERY: Duration = Duration::from_secs(5);
/// (hour, job) pairs merged per pass.
const COMPACT_GROUPS: i64 = 500;

/// Until shutdown: prunes stats samples past their retention and merges duration blocks, in
/// small transactions between the projectors' commits.
/// Fetches the OpenID provider's keys at start and every [`crate::token::oidc::REFRESH_EVERY`]
/// after, retrying a failed fetch sooner, so the first request rarely waits for the keys
/// and a key the provider withdrew stops working.
async fn refresh_keys(oidc: Arc<crate::token::Oidc>, cancel: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let wait = match oidc.refresh().await {
            Ok(()) => {
                failures = 0;
                crate::token::oidc::REFRESH_EVERY
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %format!("{e:#}"), failures, "fetching the OpenID provider's keys failed; retrying");
                Duration::from_secs(5u64 << failures.min(6)).min(crate::token::oidc::REFRESH_EVERY)
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// While the connection to NATS is down, asks a fresh attempt every few seconds why, so
/// that `/ready` and the log name the cause (a certificate, a seed, a refused user) rather
/// than "not connected".
async fn diagnose_while_unreachable(
    nats: async_nats::Client,
    config: bus::NatsConfig,
    events: Arc<bus::BusEvents>,
    cancel: CancellationToken,
) {
    const EVERY: Duration = Duration::from_secs(3);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        if bus::is_connected(&nats) {
            events.set_unreachable(None);
            continue;
        }
        let cause = tokio::select! {
            _ = cancel.cancelled() => return,
            cause = bus::diagnose(&config) => cause,
        };
        // The daemon's own connection may have come back meanwhile.
        let cause = cause.filter(|_| !bus::is_connected(&nats));
        if events.set_unreachable(cause.clone()) {
            if let Some(cause) = cause {
                tracing::error!(%cause, "NATS cannot be reached; retrying");
            }
        }
    }
}

/// After a pruning pass, the durations cache forgets the hours the results' retention has
/// passed whole (judged by this clock, which is at or past the bus's), once per hour that
/// passes: an hour the cutoff is still inside stays, or a retention shorter than an hour
/// would have every window read from SQLite again after every pass (seen in `bench soak
/// --retention 1m`: `/results/durations` p50 6 → 40 ms). A window reaching back past the
/// retention asks for what may be gone anyway.
fn forget_pruned_durations(
    cache: Arc<results::DurationCache>,
    retention: Option<Duration>,
) -> impl Fn() + Send + 'static {
    let forgotten = std::sync::atomic::AtomicI64::new(i64::MIN);
    move || {
        if let Some(retention) = retention {
            let cutoff = crate::window::now_ms() - retention.as_millis() as i64;
            let hour = cutoff.div_euclid(3_600_000);
            if forgotten.fetch_max(hour, std::sync::atomic::Ordering::Relaxed) < hour {
                cache.forget_before(hour);
            }
        }
    }
}

/// How often the dashboard's durations window is looked at to keep it read.
const WARM_EVERY: Duration = Duration::from_secs(5);
/// The same in tests.
#[cfg(test)]
const WARM_TEST_EVERY: Duration = Duration::from_millis(20);

/// Keeps the dashboard's `/results/durations` window (the last 24 h) read into the cache,
/// so that the first request after a start, or after the window moved into a new hour,
/// answers from memory. Nothing is read while the results projector is catching up: its
/// commits would drop what was read, the cores are busy projecting, and a window of
/// millions of results held in memory beside the catch-up's own was measured doubling its
/// peak (10M results: 731 → 1,114 MiB).
async fn warm_durations(
    readers: sqlx::SqlitePool,
    cache: Arc<results::DurationCache>,
    projector: Progress,
    every: Duration,
    cancel: CancellationToken,
) {
    const CATCHING_UP: u64 = 5_000;
    let mut seen = *projector.checkpoint.borrow();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now_seen = *projector.checkpoint.borrow();
        let moved = now_seen.saturating_sub(seen);
        seen = now_seen;
        // Behind by what the stream still holds, or by what was committed since the last
        // look: a checkpoint alone stands still while a long transaction is written.
        let pending = projector
            .counters
            .pending
            .load(std::sync::atomic::Ordering::Relaxed);
        if moved > CATCHING_UP || pending > CATCHING_UP {
            continue;
        }
        let now = crate::window::now_ms();
        let since = now - 24 * 3_600_000;
        if let Err(error) = results::durations::warm(&readers, &cache, since, now).await {
            tracing::debug!(%error, "warming the durations window failed; will retry");
        }
    }
}

async fn prune_samples_forever(
    writer: sqlx::SqlitePool,
    retention: Duration,
    cancel: CancellationToken,
) {
    let mut last_prune: Option<std::time::Instant> = None;
    loop {
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(std::time::Instant::now());
            match heartbeats::prune_samples(&writer, retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "pruned old stats samples"),
                Err(error) => tracing::warn!(%error, "pruning stats samples failed; will retry"),
            }
        }
        // Merge duration blocks until none is left to merge, a bounded pass at a time.
        loop {
            match results::compact_duration_blocks(&writer, COMPACT_GROUPS).await {
                Ok(n) if n == COMPACT_GROUPS as u64 && !cancel.is_cancelled() => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "merging duration blocks failed; will retry");
                    break;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(MAINTAIN_EVERY) => {}
        }
    }
}

/// Until shutdown: twice a second, each projection's rate of committed messages per second
/// (smoothed over about two seconds) for `/ready`'s catch-up progress.
async fn sample_rates(progress: Arc<[Progress]>, cancel: CancellationToken) {
    use std::sync::atomic::Ordering;
    let mut last: Vec<u64> = progress
        .iter()
        .map(|p| p.counters.messages.load(Ordering::Relaxed))
        .collect();
    let mut smoothed = vec![0f64; progress.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (i, p) in progress.iter().enumerate() {
            let now = p.counters.messages.load(Ordering::Relaxed);
            let per_sec = 2.0 * now.saturating_sub(last[i]) as f64;
            last[i] = now;
            smoothed[i] = 0.5 * smoothed[i] + 0.5 * per_sec;
            p.counters
                .rate
                .store(smoothed[i].round() as u64, Ordering::Relaxed);
        }
    }
}

/// Provisions streams (retrying until the bus answers; without `create`, waits until someone
/// else has made them), then runs the projectors. A server
/// older than [`bus::MIN_SERVER_VERSION`] stops the daemon with a [`Refusal`] instead.
async fn supervise(
    js: jetstream::Context,
    provisioning: streams::Provisioning,
    create: bool,
    runs: Vec<BoxFuture<'static, ()>>,
    refusal: Arc<std::sync::OnceLock<String>>,
    cancel: CancellationToken,
) {
    // The client knows the server's version once connected: provisioning waits for that,
    // so nothing is created on a server that is then refused.
    let refuse = |client: &async_nats::Client| -> bool {
        let version = client.server_info().version;
        if version.is_empty() {
            return false;
        }
        match bus::check_server_version(&version) {
            Ok(()) => false,
            Err(reason) => {
                // `main` prints it as the one line an operator reads.
                let _ = refusal.set(reason);
                cancel.cancel();
                true
            }
        }
    };
    let client = js.client();
    let mut attempt: u32 = 0;
    loop {
        if !bus::is_connected(&client) {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
            }
        }
        if refuse(&client) {
            return;
        }
        let provisioned = tokio::select! {
            _ = cancel.cancelled() => return,
            result = streams::check(&js, provisioning, create) => result,
        };
        match provisioned {
            Ok(()) => break,
            Err(error) => {
                let delay = Duration::from_millis((200u64 << attempt.min(5)).min(5_000));
                attempt += 1;
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64,
                    "stream provisioning failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    futures::future::join_all(runs).await;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use crate::bus::streams;
    use crate::projections::results::DurationCache;
    use crate::projector::{Counters, Progress};

    /// Reads of the durations window after `ticks` looks of the warmer.
    async fn reads_after(cache: &DurationCache, ticks: u32) -> u64 {
        tokio::time::sleep(super::WARM_TEST_EVERY * ticks).await;
        cache.reads()
    }

    #[tokio::test]
    async fn the_durations_window_is_not_read_while_the_results_are_behind() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(&dir.path().join("o.db"), 2).await.unwrap();
        let cache = Arc::new(DurationCache::new());
        let counters = Arc::new(Counters::default());
        // Far behind, with a checkpoint that stands still (a long transaction being
        // written): nothing is read however cold the window is.
        counters.pending.store(1_000_000, Ordering::Relaxed);
        let (_checkpoint, receiver) = tokio::sync::watch::channel(0u64);
        let cancel = CancellationToken::new();
        let warmer = tokio::spawn(super::warm_durations(
            db.readers.clone(),
            Arc::clone(&cache),
            Progress {
                stream: streams::RESULTS,
                checkpoint: receiver,
                counters: Arc::clone(&counters),
            },
            super::WARM_TEST_EVERY,
            cancel.clone(),
        ));
        assert_eq!(reads_after(&cache, 10).await, 0, "read while behind");
        // Caught up: the cold window is read at the next look.
        counters.pending.store(0, Ordering::Relaxed);
        let mut reads = 0;
        for _ in 0..100 {
            reads = reads_after(&cache, 1).await;
            if reads > 0 {
                break;
            }
        }
        assert!(reads > 0, "the window was never read once caught up");
        cancel.cancel();
        warmer.await.unwrap();
        db.close().await;
    }
}
