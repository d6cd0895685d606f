//! `orrery bench cluster`: scale-out figures on a 3-node JetStream cluster (R3 streams) on
//! this machine — publish rate, a fresh replica's time to ready with and without a
//! snapshot, and what a stream-leader loss costs: how long writes wait, how long a replica
//! stalls, the lag peak, and whether every event arrived exactly once.
//!
//! Replicas are `orrery serve` child processes (as an operator runs them) with auth off.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream;
use async_nats::HeaderMap;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Mutex;

use orrery::bus::streams::{self, Provisioning};
use orrery::natsd::{free_port, Cluster};

const BUCKET: &str = "orrery-bench-snapshots";

/// What `orrery bench cluster` measures.
#[derive(Debug, Clone, Copy)]
pub struct ClusterOpts {
    /// Results published before the replica measurements.
    pub events: u64,
    /// Publish rate during the leader-loss run, events/s.
    pub rate: u64,
    /// Length of the leader-loss run; the leader dies a third of the way in.
    pub failover: Duration,
}

/// The figures.
#[derive(Debug, Serialize)]
pub struct ClusterReport {
    events: u64,
    publish_eps: f64,
    replica_catch_up_s: f64,
    snapshot_s: f64,
    snapshot_bytes: u64,
    fresh_replay_ready_s: f64,
    fresh_snapshot_ready_s: f64,
    failover: FailoverReport,
}

/// What one stream-leader loss cost.
#[derive(Debug, Default, Serialize)]
struct FailoverReport {
    rate: u64,
    published: u64,
    /// Publishes that needed more than one attempt.
    retried: u64,
    /// Longest wait of one publish, first attempt to ack.
    longest_publish_wait_s: f64,
    /// From the kill to the first ack of a publish first tried after it.
    writes_blocked_s: f64,
    /// Longest time the replica's checkpoint stood still while the stream held more.
    replica_stall_s: f64,
    lag_peak: u64,
    /// Stream messages minus distinct events published: 0 when deduplication held.
    duplicates: i64,
    /// Distinct events published minus result rows once caught up: 0 when none was lost.
    lost: i64,
}

struct Replica {
    child: Child,
    base: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replica_env(cmd: &mut Command, urls: &str, db: &std::path::Path, bucket: bool) {
    cmd.env("ORRERY_NATS_URL", urls)
        .env("ORRERY_DATABASE", db)
        .env("ORRERY_STREAM_REPLICAS", "3")
        .env("ORRERY_INSECURE_NO_AUTH", "true")
        // The replicas' logs go to the bench's stderr: warnings only unless RUST_LOG says.
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env_remove("ORRERY_CONFIG")
        .env_remove("ORRERY_JWT_SECRET")
        .env_remove("ORRERY_JWT_SECRET_FILE");
    if bucket {
        cmd.env("ORRERY_SNAPSHOT_BUCKET", BUCKET)
            // The bench takes its snapshot by hand: none on a timer.
            .env("ORRERY_SNAPSHOT_INTERVAL_SECS", "604800");
    } else {
        cmd.env_remove("ORRERY_SNAPSHOT_BUCKET");
    }
}

fn spawn_replica(urls: &str, db: &std::path::Path, bucket: bool) -> anyhow::Result<Replica> {
    let port = free_port()?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("serve")
        .env("ORRERY_LISTEN", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    replica_env(&mut cmd, urls, db, bucket);
    Ok(Replica {
        child: cmd.spawn().context("starting a replica")?,
        base: format!("http://127.0.0.1:{port}"),
        _dir: None,
    })
}

/// `/ready` as JSON, `None` while the replica does not answer.
async fn ready(http: &reqwest::Client, base: &str) -> Option<(bool, Value)> {
    let res = http.get(format!("{base}/ready")).send().await.ok()?;
    let ok = res.status().is_success();
    Some((ok, res.json().await.ok()?))
}

/// The RESULTS projection's lag and checkpoint from a `/ready` body.
fn results_progress(body: &Value) -> Option<(u64, u64)> {
    let p = body["projections"]
        .as_array()?
        .iter()
        .find(|p| p["stream"] == "RESULTS")?;
    Some((p["lag"].as_u64()?, p["checkpoint"].as_u64()?))
}

/// Waits until the replica is ready with every lag 0; returns the time since `since`.
async fn until_caught_up(
    http: &reqwest::Client,
    replica: &mut Replica,
    since: Instant,
    limit: Duration,
) -> anyhow::Result<Duration> {
    loop {
        if let Some(status) = replica.child.try_wait()? {
            bail!("replica exited with {status}");
        }
        if let Some((true, body)) = ready(http, &replica.base).await {
            let all_zero = body["projections"]
                .as_array()
                .is_some_and(|a| a.iter().all(|p| p["lag"] == 0));
            if all_zero {
                return Ok(since.elapsed());
            }
        }
        if since.elapsed() > limit {
            bail!("replica not caught up within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One result as agents send it: UUID v4 ids, finished now.
fn result_body(i: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": uuid::Uuid::new_v4(),
        "data": {"result_id": uuid::Uuid::new_v4(), "exit_code": i % 9,
                 "finished_at": orrery::window::format_unix_ms(orrery::window::now_ms())}
    }))
    .expect("serializable")
}

/// Runs the cluster bench.
pub async fn run(opts: ClusterOpts) -> anyhow::Result<ClusterReport> {
    let mut cluster = Cluster::start()?;
    let urls = cluster.urls();
    let addrs: Vec<async_nats::ServerAddr> =
        urls.split(',').map(str::parse).collect::<Result<_, _>>()?;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(addrs)
        .await?;
    let js = jetstream::new(client);
    let provisioning = Provisioning {
        replicas: 3,
        max_age: Duration::from_secs(7 * 86_400),
    };
    // A fresh cluster answers 503 until its meta leader is elected.
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = streams::provision(&js, provisioning).await {
        if Instant::now() > deadline {
            bail!("provisioning R3 streams: {e}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir()?;

    eprintln!("publishing {} results to R3 streams…", opts.events);
    let mut a = spawn_replica(&urls, &dir.path().join("a.db"), true)?;
    let publish = super::publish_with(&js, opts.events, "bench", |i| {
        (format!("result.traffic.agent-{}", i % 1000), result_body(i))
    })
    .await?;
    let published_at = Instant::now();
    let catch_up = until_caught_up(&http, &mut a, published_at, Duration::from_secs(600)).await?;

    eprintln!("snapshot…");
    let started = Instant::now();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("snapshot");
    replica_env(&mut cmd, &urls, &dir.path().join("a.db"), true);
    let out = cmd.output().context("running orrery snapshot")?;
    if !out.status.success() {
        bail!(
            "orrery snapshot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let snapshot_s = started.elapsed().as_secs_f64();
    let info: Value = serde_json::from_slice(&out.stdout)?;
    let snapshot_bytes = info["bytes"].as_u64().unwrap_or(0);

    eprintln!("a fresh replica replaying the streams…");
    let started = Instant::now();
    let mut b = spawn_replica(&urls, &dir.path().join("b.db"), false)?;
    let fresh_replay = until_caught_up(&http, &mut b, started, Duration::from_secs(900)).await?;
    drop(b);
    eprintln!("a fresh replica from the snapshot…");
    let started = Instant::now();
    let mut c = spawn_replica(&urls, &dir.path().join("c.db"), true)?;
    let fresh_snapshot = until_caught_up(&http, &mut c, started, Duration::from_secs(900)).await?;
    drop(c);

    eprintln!("leader loss under {} events/s…", opts.rate);
    let failover = leader_loss(&mut cluster, &js, &http, &mut a, opts).await?;
    Ok(ClusterReport {
        events: opts.events,
        publish_eps: super::eps(opts.events, publish),
        replica_catch_up_s: catch_up.as_secs_f64(),
        snapshot_s,
        snapshot_bytes,
        fresh_replay_ready_s: fresh_replay.as_secs_f64(),
        fresh_snapshot_ready_s: fresh_snapshot.as_secs_f64(),
        failover,
    })
}

/// Publishes at `opts.rate` (each event retried with its own Msg-Id until acked), kills the
/// RESULTS stream leader a third of the way in, restarts it, and watches replica `a`.
async fn leader_loss(
    cluster: &mut Cluster,
    js: &jetstream::Context,
    http: &reqwest::Client,
    a: &mut Replica,
    opts: ClusterOpts,
) -> anyhow::Result<FailoverReport> {
    let total = opts.rate * opts.failover.as_secs().max(3);
    let before = super::last_seq(js, "RESULTS").await?;
    let kill_at: Arc<Mutex<Option<Instant>>> = Arc::default();

    // The replica watcher: lag peak and the longest standstill with lag.
    let watch_http = http.clone();
    let base = a.base.clone();
    let watching = tokio_util::sync::CancellationToken::new();
    let stop_watch = watching.clone();
    let watcher = tokio::spawn(async move {
        let (mut peak, mut longest) = (0u64, Duration::ZERO);
        let mut last_change: Option<(u64, Instant)> = None;
        while !stop_watch.is_cancelled() {
            if let Some((_, body)) = ready(&watch_http, &base).await {
                if let Some((lag, checkpoint)) = results_progress(&body) {
                    peak = peak.max(lag);
                    match last_change {
                        Some((c, since)) if c == checkpoint => {
                            if lag > 0 {
                                longest = longest.max(since.elapsed());
                            }
                        }
                        _ => last_change = Some((checkpoint, Instant::now())),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        (peak, longest)
    });

    let killer_js = js.clone();
    let kill_after = opts.failover / 3;
    let kill_at_w = Arc::clone(&kill_at);
    let killed: Arc<Mutex<Option<usize>>> = Arc::default();
    let killed_w = Arc::clone(&killed);
    let kill_leader = async move {
        tokio::time::sleep(kill_after).await;
        let info = killer_js.get_stream("RESULTS").await?.info().await?.clone();
        let leader = info
            .cluster
            .and_then(|c| c.leader)
            .context("the RESULTS stream reports no leader")?;
        let index: usize = leader
            .strip_prefix('n')
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected node name {leader}"))?;
        *killed_w.lock().await = Some(index);
        *kill_at_w.lock().await = Some(Instant::now());
        anyhow::Ok(index)
    };

    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / opts.rate as f64);
    let mut inflight = FuturesUnordered::new();
    let (mut retried, mut longest_wait) = (0u64, Duration::ZERO);
    let mut blocked_until: Option<Instant> = None;
    let kill_task = tokio::spawn(kill_leader);
    let mut kill_task = Some(kill_task);
    for i in 0..total {
        // Pace the publisher; acks are collected as they come.
        let due = started + period * i as u32;
        while Instant::now() < due {
            tokio::select! {
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    let (first, acked, attempts): (Instant, Instant, u32) = done?;
                    account(&kill_at, first, acked, attempts, &mut retried, &mut longest_wait, &mut blocked_until).await;
                }
                _ = tokio::time::sleep_until(due.into()) => {}
            }
        }
        if let Some(task) = kill_task.as_ref() {
            if task.is_finished() {
                let index = kill_task.take().expect("checked").await??;
                cluster.nodes[index].kill();
            }
        }
        let js = js.clone();
        inflight.push(async move {
            let first = Instant::now();
            let subject = format!("result.failover.agent-{}", i % 100);
            let id = format!("failover-{i}");
            let body = bytes::Bytes::from(result_body(i));
            let mut attempts = 0u32;
            loop {
                attempts += 1;
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", id.as_str());
                let sent = js
                    .publish_with_headers(subject.clone(), headers, body.clone())
                    .await;
                if let Ok(ack) = sent {
                    if ack.await.is_ok() {
                        return anyhow::Ok((first, Instant::now(), attempts));
                    }
                }
                if first.elapsed() > Duration::from_secs(60) {
                    bail!("event {i} not acked within 60 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    while let Some(done) = inflight.next().await {
        let (first, acked, attempts) = done?;
        account(
            &kill_at,
            first,
            acked,
            attempts,
            &mut retried,
            &mut longest_wait,
            &mut blocked_until,
        )
        .await;
    }
    if let Some(index) = *killed.lock().await {
        cluster.nodes[index].restart()?;
    } else {
        bail!("the leader was never killed: run longer (--failover-secs)");
    }
    let caught_up = Instant::now();
    until_caught_up(http, a, caught_up, Duration::from_secs(120)).await?;
    watching.cancel();
    let (lag_peak, stall) = watcher.await?;

    let state = js.get_stream("RESULTS").await?.info().await?.state.clone();
    let in_stream = state.messages as i64 - before as i64;
    let projected = http
        .get(format!(
            "{}/api/v1/results/stats?since=1d&kind=failover",
            a.base
        ))
        .send()
        .await?
        .json::<Value>()
        .await?["count"]
        .as_i64()
        .context("no count in /results/stats")?;
    let kill = kill_at.lock().await.context("no kill time")?;
    Ok(FailoverReport {
        rate: opts.rate,
        published: total,
        retried,
        longest_publish_wait_s: longest_wait.as_secs_f64(),
        writes_blocked_s: blocked_until.map_or(0.0, |t| t.duration_since(kill).as_secs_f64()),
        replica_stall_s: stall.as_secs_f64(),
        lag_peak,
        duplicates: in_stream - total as i64,
        lost: total as i64 - projected,
    })
}

/// Folds one acked publish into the failover figures.
async fn account(
    kill_at: &Mutex<Option<Instant>>,
    first: Instant,
    acked: Instant,
    attempts: u32,
    retried: &mut u64,
    longest_wait: &mut Duration,
    blocked_until: &mut Option<Instant>,
) {
    if attempts > 1 {
        *retried += 1;
    }
    *longest_wait = (*longest_wait).max(acked - first);
    // Writes are blocked until the first publish begun after the kill is acked.
    if let Some(kill) = *kill_at.lock().await {
        if first >= kill && blocked_until.is_none_or(|b| acked < b) {
            *blocked_until = Some(acked);
        }
    }
}

impl std::fmt::Display for ClusterReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fo = &self.failover;
        writeln!(
            f,
            "orrery bench cluster — 3 JetStream nodes on loopback, R3 streams, {} results",
            self.events
        )?;
        writeln!(
            f,
            "  publish (acks pipelined)          {:>10.0} events/s",
            self.publish_eps
        )?;
        writeln!(
            f,
            "  replica caught up after publish   {:>10.1} s",
            self.replica_catch_up_s
        )?;
        writeln!(
            f,
            "  orrery snapshot                   {:>10.1} s  ({:.1} MiB)",
            self.snapshot_s,
            self.snapshot_bytes as f64 / 1_048_576.0
        )?;
        writeln!(
            f,
            "  fresh replica, replaying → ready  {:>10.1} s",
            self.fresh_replay_ready_s
        )?;
        writeln!(
            f,
            "  fresh replica, snapshot → ready   {:>10.1} s",
            self.fresh_snapshot_ready_s
        )?;
        writeln!(
            f,
            "  stream-leader loss at {} events/s ({} published, {} retried):",
            fo.rate, fo.published, fo.retried
        )?;
        writeln!(
            f,
            "    writes blocked after the kill   {:>10.2} s",
            fo.writes_blocked_s
        )?;
        writeln!(
            f,
            "    longest wait of one publish     {:>10.2} s",
            fo.longest_publish_wait_s
        )?;
        writeln!(
            f,
            "    replica stalled (longest)       {:>10.2} s",
            fo.replica_stall_s
        )?;
        writeln!(
            f,
            "    lag peak                        {:>10} events",
            fo.lag_peak
        )?;
        writeln!(
            f,
            "    duplicates / lost               {:>6} / {}",
            fo.duplicates, fo.lost
        )
    }
}
