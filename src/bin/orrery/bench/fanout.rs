//! `orrery bench fanout`: many SSE clients over many topologies under a steady publish rate.
//!
//! The daemon runs as its own process (this binary's `serve`), so its resident memory per
//! connection can be read from `/proc`; the clients and the publisher run here. Every event
//! carries the time it was published, and each client measures publish → receive latency.

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

impl Daemon {
    /// Its database file.
    pub(super) fn database(&self) -> std::path::PathBuf {
        self.dir.path().join("fanout.db")
    }

    /// Bytes of its database file and WAL.
    pub(super) fn database_bytes(&self) -> u64 {
        file_bytes(self.database()) + self.wal_bytes()
    }

    /// Bytes of its WAL alone.
    pub(super) fn wal_bytes(&self) -> u64 {
        file_bytes(self.dir.path().join("fanout.db-wal"))
    }

    /// Waits (≤ 30 s) until `/ready` says 200.
    pub(super) async fn wait_ready(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        self.wait_ready_within(http, Duration::from_secs(30)).await
    }

    /// Waits up to `limit` until `/ready` says 200.
    pub(super) async fn wait_ready_within(
        &self,
        http: &reqwest::Client,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let ready = http.get(format!("{}/ready", self.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("the daemon did not become ready within {limit:?}");
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

/// Starts `orrery serve` on the database in `dir` (`fanout.db`) with `env` added.
fn spawn_daemon_in(
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
        .env("ORRERY_DATABASE", dir.path().join("fanout.db"))
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

/// Reads one stream until `stop`, recording latencies of events that carry `sent_us`.
async fn client(
    http: reqwest::Client,
    url: String,
    token: String,
    connected: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Tally {
    let mut tally = Tally::default();
    let res = match http.get(&url).bearer_auth(token).send().await {
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
            if !seen_snapshot && find(frame, b"event: snapshot").is_some() {
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
    let daemon = if opts.backlog > 0 {
        load_backlog(nats_url, &run, &secret, &opts, &http).await?
    } else {
        spawn_daemon(nats_url, &secret, opts.clients)?
    };
    daemon.wait_ready(&http).await?;

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

    let pid = daemon.child.id();
    let rss_before = orrery::telemetry::resident_bytes(pid);
    let connected = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    // The reconnect storm after a deploy: every client connects at once.
    let storm = Instant::now();
    let mut clients = Vec::with_capacity(opts.clients);
    for i in 0..opts.clients {
        let url = format!(
            "{}/topologies/{}/events",
            daemon.base,
            tids[i % opts.topologies]
        );
        clients.push(tokio::spawn(client(
            http.clone(),
            url,
            token.clone(),
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
    let rss_connected = orrery::telemetry::resident_bytes(pid);

    // Publish at a steady rate: a tick every 10 ms with rate/100 events, or under 100 events/s
    // one event a tick, every 1/rate s.
    let (per_tick, every) = if opts.rate >= 100 {
        (opts.rate.div_ceil(100), Duration::from_millis(10))
    } else {
        (1, Duration::from_secs_f64(1.0 / opts.rate as f64))
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let pruned_before = pruned_results(&http, &daemon.base).await?;
    let publish_start = Instant::now();
    let mut published = 0u64;
    let mut acks = std::collections::VecDeque::new();
    let target_total = opts.rate * opts.duration.as_secs().max(1);
    while published < target_total {
        tick.tick().await;
        for _ in 0..per_tick.min(target_total - published) {
            let tid = &tids[(published as usize) % tids.len()];
            let body = format!(
                r#"{{"id":"{run}-{published}","data":{{"mutation_id":"m{published}","sent_us":{}}}}}"#,
                now_us()
            );
            acks.push_back(
                js.publish(format!("topology.{tid}.mutation.applied"), body.into())
                    .await?,
            );
            published += 1;
            while acks.len() > 2048 {
                acks.pop_front().expect("non-empty").await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
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
    let pruned_after = pruned_results(&http, &daemon.base).await?;
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
        backlog: opts.backlog,
        pruned_while_publishing: pruned_after.saturating_sub(pruned_before),
    })
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
    let loader = spawn_daemon_with(
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
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("orrery_retention_pruned_rows_total{stream=\"RESULTS\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

impl std::fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "orrery bench fanout — {} clients over {} topologies",
            self.clients, self.topologies
        )?;
        writeln!(
            f,
            "  storm connect              {} of {} got their snapshot in {:.0} ms ({} failed)",
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
        write!(
            f,
            "  daemon RSS                 {:.1} MiB idle, {:.1} MiB connected, {:.1} KiB per connection",
            self.rss_before as f64 / 1048576.0,
            self.rss_connected as f64 / 1048576.0,
            self.rss_per_connection as f64 / 1024.0
        )
    }
}
