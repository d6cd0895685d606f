//! `orrery bench fanout`: many SSE clients over many topologies under a steady publish rate.
//!
//! The daemon runs as its own process (this binary's `serve`), so its resident memory per
//! connection can be read from `/proc`; the clients and the publisher run here. Every event
//! carries the time it was published, and each client measures publish → receive latency.
//!
//! With `--peer nchan` the same clients and publish loop then measure nchan (the nginx
//! module) on the same machine right after: nginx is started on a free port with its
//! EventSource subscriber and HTTP publisher, and events are posted to it.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use async_nats::jetstream;
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use orrery::config::Secret;
use orrery::natsd::free_port;
use orrery::token::{mint, Role};

use super::Quantiles;

/// What to run.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    /// SSE connections to hold.
    pub clients: usize,
    /// Topologies they are spread over.
    pub topologies: usize,
    /// Events published per second, spread over the topologies.
    pub rate: u64,
    /// How long to publish.
    pub duration: Duration,
    /// Results loaded into the database before the measure, finished 2 to 32 days ago.
    pub backlog: u64,
    /// The daemon's results retention during the measure (zero: kept for ever): a day
    /// makes it prune the whole backlog while the clients listen.
    pub backlog_retention: Duration,
    /// Measure nchan the same way right after, with this nginx and module.
    pub peer: Option<Nchan>,
    /// Keep one core busy with a spinning thread during the measures (a CPU-bound neighbour
    /// on the machine).
    pub cpu_neighbour: bool,
    /// Realistic results waiting in RESULTS when the daemon starts, so that the live
    /// stream is measured while the projector catches up on them (Orrery only).
    pub catch_up: u64,
}

/// A thread that keeps one core busy until dropped.
struct Neighbour(Arc<std::sync::atomic::AtomicBool>);

impl Neighbour {
    fn start() -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        });
        Self(stop)
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Where nginx and its nchan module are.
#[derive(Debug, Clone)]
pub struct Nchan {
    /// The nginx binary.
    pub nginx: std::path::PathBuf,
    /// `ngx_nchan_module.so`.
    pub module: std::path::PathBuf,
}

/// Figures of one `bench fanout` run.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    /// Connections asked for.
    pub clients: usize,
    /// Connections that received their snapshot.
    pub connected: usize,
    /// From the first connect of the storm until every client had its snapshot (or the
    /// last one gave up), ms.
    pub storm_connect_ms: f64,
    /// Topologies.
    pub topologies: usize,
    /// Events published.
    pub published: u64,
    /// Events received by all clients together.
    pub delivered: u64,
    /// `published × clients per topology`.
    pub expected: u64,
    /// Deliveries per second over the publishing window.
    pub delivered_per_s: f64,
    /// Publish → receive.
    pub latency: Quantiles,
    /// Failed connects, resyncs and streams that ended early.
    pub errors: u64,
    /// Connections still open at the end.
    pub held_at_end: usize,
    /// Daemon RSS before the clients connected, bytes.
    pub rss_before: u64,
    /// Daemon RSS with every client connected, bytes.
    pub rss_connected: u64,
    /// `(rss_connected - rss_before) / connected`, bytes.
    pub rss_per_connection: u64,
    /// Results in the database before the measure.
    pub backlog: u64,
    /// Rows the pruner deleted from the first publish to the last delivery.
    pub pruned_while_publishing: u64,
    /// Results waiting in the bus when the daemon started.
    pub catch_up: u64,
    /// Results projected from the first publish to the last delivery.
    pub results_projected: u64,
    /// Results still to project at the last delivery.
    pub results_left: u64,
    /// The same measure against nchan, right after.
    pub nchan: Option<Box<FanoutReport>>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

fn file_bytes(path: std::path::PathBuf) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// A daemon started as its own process on a temporary database; killed on drop.
pub(super) struct Daemon {
    pub(super) child: Child,
    pub(super) base: String,
    dir: tempfile::TempDir,
}

/// How a daemon answered the polls of [`Daemon::wait_for`] once it first answered.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Polls {
    /// Polls made.
    pub asked: u64,
    /// Of them, those with no answer within 5 s.
    pub unanswered: u64,
    /// The slowest answer.
    pub slowest: Duration,
}

/// The database file a daemon started in `dir` serves.
pub(super) fn database_in(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("fanout.db")
}

impl Daemon {
    /// Its database file.
    pub(super) fn database(&self) -> std::path::PathBuf {
        database_in(self.dir.path())
    }

    /// Bytes of its database file and WAL.
    pub(super) fn database_bytes(&self) -> u64 {
        file_bytes(self.database()) + self.wal_bytes()
    }

    /// Bytes of its WAL alone.
    pub(super) fn wal_bytes(&self) -> u64 {
        file_bytes(self.dir.path().join("fanout.db-wal"))
    }

    /// Waits (≤ 30 s) until `/health` says 200: up, whether or not caught up.
    pub(super) async fn wait_up(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        self.wait_for(http, "/health", Duration::from_secs(30))
            .await
            .map(drop)
    }

    /// Waits (≤ 30 s) until `/ready` says 200.
    pub(super) async fn wait_ready(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        self.wait_ready_within(http, Duration::from_secs(30))
            .await
            .map(drop)
    }

    /// Waits up to `limit` until `/ready` says 200; how it answered on the way.
    pub(super) async fn wait_ready_within(
        &mut self,
        http: &reqwest::Client,
        limit: Duration,
    ) -> anyhow::Result<Polls> {
        self.wait_for(http, "/ready", limit).await
    }

    /// Waits up to `limit` until `path` answers 200, asking every 50 ms (each ask given 5 s)
    /// as a health probe would; how it answered once it first did.
    async fn wait_for(
        &mut self,
        http: &reqwest::Client,
        path: &str,
        limit: Duration,
    ) -> anyhow::Result<Polls> {
        let started = Instant::now();
        let mut polls = Polls::default();
        let mut listening = false;
        loop {
            // A daemon that refused its settings never answers: say so at once.
            if let Some(status) = self.child.try_wait()? {
                bail!("the daemon exited before {path} answered 200 ({status})");
            }
            let asked = Instant::now();
            let answer = http
                .get(format!("{}{path}", self.base))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            listening |= answer.is_ok();
            if listening {
                polls.asked += 1;
                polls.unanswered += u64::from(answer.is_err());
                polls.slowest = polls.slowest.max(asked.elapsed());
            }
            if answer.is_ok_and(|r| r.status().is_success()) {
                return Ok(polls);
            }
            if started.elapsed() > limit {
                bail!("the daemon's {path} did not answer 200 within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `orrery serve` with room for `clients` live streams of one user.
pub(super) fn spawn_daemon(nats_url: &str, secret: &str, clients: usize) -> anyhow::Result<Daemon> {
    spawn_daemon_with(nats_url, &room_for(secret, clients))
}

/// The settings that give one user `clients` live streams.
fn room_for(secret: &str, clients: usize) -> Vec<(&'static str, String)> {
    vec![
        ("ORRERY_JWT_SECRET", secret.to_owned()),
        ("ORRERY_SSE_MAX_STREAMS_PER_USER", clients.to_string()),
        ("ORRERY_SSE_MAX_CONNECTIONS", (clients + 16).to_string()),
    ]
}

/// Starts `orrery serve` on a fresh temporary database with `env` added to its settings.
pub(super) fn spawn_daemon_with(nats_url: &str, env: &[(&str, String)]) -> anyhow::Result<Daemon> {
    spawn_daemon_in(tempfile::tempdir()?, nats_url, env)
}

impl Daemon {
    /// Kills the daemon and hands over its directory, database included.
    fn stop_keeping_database(mut self) -> anyhow::Result<tempfile::TempDir> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(std::mem::replace(&mut self.dir, tempfile::tempdir()?))
    }
}

/// Starts `orrery serve` on the database in `dir` ([`database_in`]) with `env` added.
pub(super) fn spawn_daemon_in(
    dir: tempfile::TempDir,
    nats_url: &str,
    env: &[(&str, String)],
) -> anyhow::Result<Daemon> {
    let port = free_port()?;
    // Another build's daemon may be measured by the same load (before and after a change).
    let exe = match std::env::var_os("ORRERY_BENCH_DAEMON") {
        Some(path) => path.into(),
        None => std::env::current_exe()?,
    };
    let child = Command::new(exe)
        .arg("serve")
        .env("ORRERY_NATS_URL", nats_url)
        .env("ORRERY_DATABASE", database_in(dir.path()))
        .env("ORRERY_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting the daemon")?;
    Ok(Daemon {
        child,
        base: format!("http://127.0.0.1:{port}"),
        dir,
    })
}

const SENT_US: &[u8] = b"\"sent_us\":";

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Per-client tallies.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    open_at_end: bool,
}

/// Reads one stream until `stop`, recording latencies of events that carry `sent_us`; the
/// stream counts as connected at its first frame containing `hello`.
async fn client(
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    hello: &'static [u8],
    connected: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Tally {
    let mut tally = Tally::default();
    let mut req = http.get(&url).header("accept", "text/event-stream");
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = match req.send().await {
        Ok(r) if r.status().is_success() => r,
        _ => {
            tally.errors += 1;
            return tally;
        }
    };
    let mut body = res.bytes_stream();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut seen_snapshot = false;
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => {
                tally.open_at_end = true;
                return tally;
            }
            c = body.next() => c,
        };
        let Some(Ok(chunk)) = chunk else {
            tally.errors += 1;
            return tally;
        };
        let received = now_us();
        buf.extend_from_slice(&chunk);
        while let Some(end) = find(&buf, b"\n\n") {
            let frame = &buf[..end];
            if !seen_snapshot && find(frame, hello).is_some() {
                seen_snapshot = true;
                connected.fetch_add(1, Ordering::Relaxed);
            } else if find(frame, b"event: resync").is_some() {
                tally.errors += 1;
                return tally;
            } else if let Some(at) = find(frame, SENT_US) {
                let digits: u64 = frame[at + SENT_US.len()..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .fold(0, |n, b| n * 10 + u64::from(b - b'0'));
                tally
                    .latencies_us
                    .push(received.saturating_sub(digits).min(u64::from(u32::MAX)) as u32);
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            buf.drain(..end + 2);
        }
    }
}

/// Runs the fan-out benchmark against the NATS at `nats_url`.
pub async fn run(nats_url: &str, opts: FanoutOptions) -> anyhow::Result<FanoutReport> {
    if opts.clients == 0 || opts.topologies == 0 || opts.rate == 0 {
        bail!("--clients, --topologies and --rate must be at least 1");
    }
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let js = jetstream::new(async_nats::connect(nats_url).await?);
    let run = uuid::Uuid::new_v4().simple().to_string();
    if opts.catch_up > 0 {
        if opts.backlog > 0 {
            bail!("--catch-up and --backlog do not go together");
        }
        let results = super::connect_provisioned(nats_url, Duration::from_secs(7 * 86_400)).await?;
        let mut rng = fastrand::Rng::new();
        let now = orrery::window::now_ms();
        super::publish_with(&results, opts.catch_up, &format!("{run}-results"), |_| {
            super::ingest::realistic_event(&mut rng, now, 86_400_000)
        })
        .await?;
    }
    let mut daemon = if opts.backlog > 0 {
        load_backlog(nats_url, &run, &secret, &opts, &http).await?
    } else {
        spawn_daemon(nats_url, &secret, opts.clients)?
    };
    if opts.catch_up > 0 {
        // Not ready until it has caught up: the measure starts as soon as it answers.
        daemon.wait_up(&http).await?;
    } else {
        daemon.wait_ready(&http).await?;
    }

    let tids: Vec<String> = (0..opts.topologies)
        .map(|i| format!("bench-{}-{i}", &run[..8]))
        .collect();
    for tid in &tids {
        let body = serde_json::json!({"id": format!("{tid}-status"), "data": {"status": "active"}});
        js.publish(
            format!("topology.{tid}.status"),
            serde_json::to_vec(&body)?.into(),
        )
        .await?
        .await?;
    }
    // Wait until every topology is projected.
    let token = mint(&Secret::new(&secret), "bench", Role::Viewer, 3600)?;
    let started = Instant::now();
    loop {
        let v: serde_json::Value = http
            .get(format!("{}/api/v1/topologies?limit=1000", daemon.base))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let n = v["items"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|t| t["id"].as_str().is_some_and(|id| id.contains(&run[..8])))
                .count()
        });
        if n >= opts.topologies.min(1000) {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("topologies were not projected in time");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let target = Target::Orrery {
        base: daemon.base.clone(),
        pids: vec![daemon.child.id()],
        token,
        js: Box::new(js),
        http: http.clone(),
    };
    let neighbour = opts.cpu_neighbour.then(Neighbour::start);
    let mut report = measure(&target, &tids, &opts, &http).await?;
    report.backlog = opts.backlog;
    drop(daemon);
    if let Some(peer) = &opts.peer {
        let nginx = Nginx::start(peer, opts.clients)?;
        nginx.wait_listening(&http).await?;
        let target = Target::Nchan {
            base: nginx.base.clone(),
            pids: nginx.workers(),
            http: reqwest::Client::new(),
        };
        report.nchan = Some(Box::new(measure(&target, &tids, &opts, &http).await?));
    }
    drop(neighbour);
    Ok(report)
}

/// The server the clients listen to and the events are published to.
enum Target {
    /// `orrery serve`: events through JetStream, streams with a viewer token.
    Orrery {
        base: String,
        pids: Vec<u32>,
        token: String,
        js: Box<jetstream::Context>,
        http: reqwest::Client,
    },
    /// nginx with nchan: events posted to its publisher location.
    Nchan {
        base: String,
        pids: Vec<u32>,
        http: reqwest::Client,
    },
}

/// A publish on its way: the bus's ack, or nchan's answer.
enum Pending {
    Ack(jetstream::context::PublishAckFuture),
    Post(tokio::task::JoinHandle<anyhow::Result<()>>),
}

impl Target {
    fn pids(&self) -> &[u32] {
        match self {
            Target::Orrery { pids, .. } | Target::Nchan { pids, .. } => pids,
        }
    }

    fn rss(&self) -> u64 {
        self.pids()
            .iter()
            .map(|&p| orrery::telemetry::resident_bytes(p))
            .sum()
    }

    fn stream_url(&self, tid: &str) -> String {
        match self {
            Target::Orrery { base, .. } => format!("{base}/topologies/{tid}/events"),
            Target::Nchan { base, .. } => format!("{base}/sub/{tid}"),
        }
    }

    fn token(&self) -> Option<String> {
        match self {
            Target::Orrery { token, .. } => Some(token.clone()),
            Target::Nchan { .. } => None,
        }
    }

    /// What the first frame of a stream carries: Orrery's snapshot, nchan's greeting.
    fn hello(&self) -> &'static [u8] {
        match self {
            Target::Orrery { .. } => b"event: snapshot",
            Target::Nchan { .. } => b": hi",
        }
    }

    async fn publish(&self, tid: &str, sent_us: u64) -> anyhow::Result<Pending> {
        // What agents send: a random id per mutation.
        let body = format!(
            r#"{{"id":"{}","data":{{"mutation_id":"{}","sent_us":{sent_us}}}}}"#,
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4()
        );
        Ok(match self {
            Target::Orrery { js, .. } => Pending::Ack(
                js.publish(format!("topology.{tid}.mutation.applied"), body.into())
                    .await?,
            ),
            Target::Nchan { base, http, .. } => {
                let post = http.post(format!("{base}/pub/{tid}")).body(body);
                Pending::Post(tokio::spawn(async move {
                    post.send().await?.error_for_status()?;
                    Ok(())
                }))
            }
        })
    }

    /// Rows of results pruned so far (Orrery with a backlog only).
    async fn pruned(&self) -> anyhow::Result<u64> {
        match self {
            Target::Orrery { base, http, .. } => pruned_results(http, base).await,
            Target::Nchan { .. } => Ok(0),
        }
    }

    async fn results_checkpoint(&self) -> anyhow::Result<u64> {
        match self {
            Target::Orrery { base, http, .. } => results_checkpoint(http, base).await,
            Target::Nchan { .. } => Ok(0),
        }
    }
}

impl Pending {
    async fn done(self) -> anyhow::Result<()> {
        match self {
            Pending::Ack(ack) => {
                ack.await?;
            }
            Pending::Post(post) => post.await??,
        }
        Ok(())
    }
}

/// The storm of connects, then the steady publish rate, against `target`.
async fn measure(
    target: &Target,
    tids: &[String],
    opts: &FanoutOptions,
    http: &reqwest::Client,
) -> anyhow::Result<FanoutReport> {
    let rss_before = target.rss();
    let connected = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    // The reconnect storm after a deploy: every client connects at once.
    let storm = Instant::now();
    let mut clients = Vec::with_capacity(opts.clients);
    for i in 0..opts.clients {
        clients.push(tokio::spawn(client(
            http.clone(),
            target.stream_url(&tids[i % opts.topologies]),
            target.token(),
            target.hello(),
            connected.clone(),
            delivered.clone(),
            stop.clone(),
        )));
    }
    while (connected.load(Ordering::Relaxed) as usize) < opts.clients
        && storm.elapsed() < Duration::from_secs(60)
        && !clients.iter().all(|c| c.is_finished())
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let storm_time = storm.elapsed();
    let connected_n = connected.load(Ordering::Relaxed) as usize;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = target.rss();

    // Publish at a steady rate: a tick every 10 ms with rate/100 events, or under 100 events/s
    // one event a tick, every 1/rate s.
    let (per_tick, every) = if opts.rate >= 100 {
        (opts.rate.div_ceil(100), Duration::from_millis(10))
    } else {
        (1, Duration::from_secs_f64(1.0 / opts.rate as f64))
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let pruned_before = target.pruned().await?;
    let checkpoint_before = target.results_checkpoint().await?;
    let is_orrery = matches!(target, Target::Orrery { .. });
    let publish_start = Instant::now();
    let mut published = 0u64;
    let mut pending = std::collections::VecDeque::new();
    let target_total = opts.rate * opts.duration.as_secs().max(1);
    while published < target_total {
        tick.tick().await;
        for _ in 0..per_tick.min(target_total - published) {
            let tid = &tids[(published as usize) % tids.len()];
            pending.push_back(target.publish(tid, now_us()).await?);
            published += 1;
            while pending.len() > 2048 {
                pending.pop_front().expect("non-empty").done().await?;
            }
        }
    }
    for p in pending {
        p.done().await?;
    }
    let publish_time = publish_start.elapsed();
    // Let the last deliveries arrive.
    let per_topology = |t: usize| {
        (opts.clients / opts.topologies + usize::from(t < opts.clients % opts.topologies)) as u64
    };
    let expected: u64 = (0..published)
        .map(|n| per_topology((n as usize) % opts.topologies))
        .sum();
    let drain = Instant::now();
    while delivered.load(Ordering::Relaxed) < expected && drain.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_n = delivered.load(Ordering::Relaxed);
    let pruned_after = target.pruned().await?;
    let checkpoint_after = target.results_checkpoint().await?;
    stop.cancel();

    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut held = 0;
    for c in clients {
        let t = c.await?;
        latencies.extend_from_slice(&t.latencies_us);
        errors += t.errors;
        held += usize::from(t.open_at_end);
    }
    latencies.sort_unstable();
    let latencies_ms: Vec<f64> = latencies.iter().map(|&us| f64::from(us) / 1000.0).collect();
    let window = publish_time.max(drain.duration_since(publish_start));
    Ok(FanoutReport {
        clients: opts.clients,
        connected: connected_n,
        storm_connect_ms: storm_time.as_secs_f64() * 1e3,
        topologies: opts.topologies,
        published,
        delivered: delivered_n,
        expected,
        delivered_per_s: delivered_n as f64 / window.as_secs_f64().max(1e-9),
        latency: Quantiles::of_sorted(&latencies_ms),
        errors,
        held_at_end: held,
        rss_before,
        rss_connected,
        rss_per_connection: rss_connected.saturating_sub(rss_before) / connected_n.max(1) as u64,
        backlog: 0,
        pruned_while_publishing: pruned_after.saturating_sub(pruned_before),
        // The results wait in a fresh stream: its sequences are 1 to `catch_up`.
        catch_up: if is_orrery { opts.catch_up } else { 0 },
        results_projected: checkpoint_after.saturating_sub(checkpoint_before),
        results_left: if is_orrery {
            opts.catch_up.saturating_sub(checkpoint_after)
        } else {
            0
        },
        nchan: None,
    })
}

/// nginx with nchan, started on a free port in a temporary directory; stopped on drop.
struct Nginx {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with one EventSource subscriber location and one publisher location,
    /// as many workers as cores, and room for `clients` connections.
    fn start(peer: &Nchan, clients: usize) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes auto;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nload_module {module};\n\
             events {{ worker_connections {conns}; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
               server {{\n    listen 127.0.0.1:{port};\n\
                 location ~ ^/sub/([\\w-]+)$ {{ nchan_subscriber eventsource; nchan_channel_id $1; }}\n\
                 location ~ ^/pub/([\\w-]+)$ {{ nchan_publisher; nchan_channel_id $1; }}\n\
               }}\n}}\n",
            module = peer.module.display(),
            conns = clients + 1024,
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new(&peer.nginx)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", peer.nginx.display()))?;
        Ok(Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        })
    }

    /// Waits (≤ 10 s) until its publisher answers.
    async fn wait_listening(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let probe = http.get(format!("{}/pub/probe", self.base)).send().await;
            if probe.is_ok() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("nginx did not start listening within 10 s (is the nchan module installed?)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The worker processes, which hold the connections.
    fn workers(&self) -> Vec<u32> {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, so that the master stops its workers too (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Publishes `opts.backlog` results finished 2 to 32 days ago, lets a first daemon (keeping
/// everything) project them, then starts the measured daemon on that database with
/// `opts.backlog_retention`.
async fn load_backlog(
    nats_url: &str,
    run: &str,
    secret: &str,
    opts: &FanoutOptions,
    http: &reqwest::Client,
) -> anyhow::Result<Daemon> {
    const DAY_MS: i64 = 86_400_000;
    let mut rng = fastrand::Rng::with_seed(7);
    let end = orrery::window::now_ms() - 2 * DAY_MS;
    // The streams as the daemon makes them (7 days, counted from publishing).
    let js = super::connect_provisioned(nats_url, Duration::from_secs(7 * 86_400)).await?;
    super::publish_with(&js, opts.backlog, &format!("{run}-backlog"), |_| {
        super::ingest::realistic_event(&mut rng, end, 30 * DAY_MS)
    })
    .await?;
    let mut loader = spawn_daemon_with(
        nats_url,
        &[
            ("ORRERY_JWT_SECRET", secret.to_owned()),
            ("ORRERY_READY_MAX_LAG", "0".to_owned()),
            ("ORRERY_RESULTS_RETENTION_SECS", "0".to_owned()),
        ],
    )?;
    let limit = Duration::from_secs(60 + opts.backlog / 2_000);
    loader.wait_ready_within(http, limit).await?;
    let dir = loader.stop_keeping_database()?;
    let mut env = room_for(secret, opts.clients);
    env.push((
        "ORRERY_RESULTS_RETENTION_SECS",
        opts.backlog_retention.as_secs().to_string(),
    ));
    spawn_daemon_in(dir, nats_url, &env)
}

/// `orrery_retention_pruned_rows_total{stream="RESULTS"}` of the daemon at `base`.
async fn pruned_results(http: &reqwest::Client, base: &str) -> anyhow::Result<u64> {
    metric(
        http,
        base,
        "orrery_retention_pruned_rows_total{stream=\"RESULTS\"} ",
    )
    .await
}

/// The value of the daemon's metric line starting with `prefix` (0 when absent).
async fn metric(http: &reqwest::Client, base: &str, prefix: &str) -> anyhow::Result<u64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// The RESULTS checkpoint the daemon has committed.
async fn results_checkpoint(http: &reqwest::Client, base: &str) -> anyhow::Result<u64> {
    metric(
        http,
        base,
        "orrery_projection_checkpoint{stream=\"RESULTS\"} ",
    )
    .await
}

impl FanoutReport {
    /// The figures, after a header line.
    fn write_figures(&self, f: &mut std::fmt::Formatter<'_>, server: &str) -> std::fmt::Result {
        writeln!(
            f,
            "  storm connect              {} of {} got their first frame in {:.0} ms ({} failed)",
            self.connected,
            self.clients,
            self.storm_connect_ms,
            self.clients - self.connected
        )?;
        writeln!(f, "  connections held at end    {}", self.held_at_end)?;
        writeln!(f, "  events published           {}", self.published)?;
        writeln!(
            f,
            "  deliveries                 {} of {} expected",
            self.delivered, self.expected
        )?;
        writeln!(
            f,
            "  deliveries/s               {:.0}",
            self.delivered_per_s
        )?;
        writeln!(
            f,
            "  latency publish→receive    p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.latency.p50_ms, self.latency.p99_ms, self.latency.max_ms
        )?;
        writeln!(f, "  errors                     {}", self.errors)?;
        if self.backlog > 0 {
            writeln!(
                f,
                "  backlog                    {} results; {} rows pruned while publishing",
                self.backlog, self.pruned_while_publishing
            )?;
        }
        if self.catch_up > 0 {
            writeln!(
                f,
                "  catching up                {} results waiting at start; {} projected while \
                 publishing, {} left at the last delivery",
                self.catch_up, self.results_projected, self.results_left
            )?;
        }
        write!(
            f,
            "  {server:<26} {:.1} MiB idle, {:.1} MiB connected, {:.1} KiB per connection",
            self.rss_before as f64 / 1048576.0,
            self.rss_connected as f64 / 1048576.0,
            self.rss_per_connection as f64 / 1024.0
        )
    }
}

impl std::fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "orrery bench fanout — {} clients over {} topologies",
            self.clients, self.topologies
        )?;
        self.write_figures(f, "daemon RSS")?;
        if let Some(peer) = &self.nchan {
            writeln!(f, "\nnchan (nginx), the same clients and rate, right after")?;
            peer.write_figures(f, "nginx workers' RSS")?;
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            write!(
                f,
                "\nOrrery ÷ nchan: p50 {:.2}×, p99 {:.2}×, connect {:.2}×, RSS per connection {:.2}×",
                ratio(self.latency.p50_ms, peer.latency.p50_ms),
                ratio(self.latency.p99_ms, peer.latency.p99_ms),
                ratio(self.storm_connect_ms, peer.storm_connect_ms),
                ratio(self.rss_per_connection as f64, peer.rss_per_connection as f64),
            )?;
        }
        Ok(())
    }
}
