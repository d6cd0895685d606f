//! Exactly-once effect across crashes, bus restarts and database loss.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use orrery::natsd::{free_port, NatsServer};
use serde_json::{json, Value};

use crate::helpers::*;

/// The real `orrery serve` binary as a child process.
struct Daemon {
    child: Child,
    address: String,
}

impl Daemon {
    fn spawn(nats_url: &str, db: &Path, batch_size: usize) -> Self {
        Self::spawn_with(nats_url, db, batch_size, &[])
    }

    fn spawn_with(nats_url: &str, db: &Path, batch_size: usize, env: &[(&str, &str)]) -> Self {
        let port = free_port().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_orrery"))
            .arg("serve")
            .envs(env.iter().copied())
            .env("ORRERY_NATS_URL", nats_url)
            .env("ORRERY_DATABASE", db)
            .env("ORRERY_LISTEN", format!("127.0.0.1:{port}"))
            .env("ORRERY_JWT_SECRET", SECRET)
            .env("ORRERY_BATCH_SIZE", batch_size.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Waits until `path` (`/health`, `/ready`) answers 200.
    async fn wait_for(&self, http: &reqwest::Client, path: &str) {
        wait_until(Duration::from_secs(20), path, || async {
            http.get(format!("{}{path}", self.address))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    }

    async fn metric(&self, http: &reqwest::Client, name: &str) -> Option<u64> {
        self.metric_for(http, name, "RESULTS").await
    }

    async fn metric_of(&self, http: &reqwest::Client, stream: &str) -> Option<u64> {
        self.metric_for(http, "orrery_projection_checkpoint", stream)
            .await
    }

    async fn metric_for(&self, http: &reqwest::Client, name: &str, stream: &str) -> Option<u64> {
        let text = http
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let prefix = format!("{name}{{stream=\"{stream}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

/// Runs `orrery serve` on `db` against `nats_url`, expecting it to refuse and exit; its
/// output. Bounded: after 30 s it is killed and the test fails with `why`.
async fn serve_until_it_exits(nats_url: &str, db: &Path, why: &str) -> std::process::Output {
    let child = Command::new(env!("CARGO_BIN_EXE_orrery"))
        .arg("serve")
        .env_remove("ORRERY_CONFIG")
        .env("ORRERY_NATS_URL", nats_url)
        .env("ORRERY_DATABASE", db)
        .env("ORRERY_LISTEN", "127.0.0.1:0")
        .env("ORRERY_JWT_SECRET", SECRET)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .unwrap_or_else(|_| {
        let _ = Command::new("kill").arg(pid.to_string()).status();
        panic!("{why}")
    })
    .unwrap()
    .unwrap()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn result_body(i: u64, finished: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": format!("evt-{i}"),
        "data": {"result_id": format!("res-{i}"), "exit_code": if i % 10 == 0 { 1 } else { 0 },
                 "finished_at": finished}
    }))
    .unwrap()
}

/// Publishes results `range` with pipelined acks, retrying while the bus is away.
async fn publish_range(js: &jetstream::Context, range: std::ops::Range<u64>, finished: &str) {
    let mut pending = Vec::new();
    for i in range {
        let subject = format!("result.traffic.agent-{}", i % 50);
        let body = result_body(i, finished);
        pending.push((
            i,
            subject.clone(),
            body.clone(),
            publish_raw(js, &subject, &format!("evt-{i}"), body).await,
        ));
        if pending.len() == 512 {
            settle(js, std::mem::take(&mut pending)).await;
        }
    }
    settle(js, pending).await;
}

async fn settle(
    js: &jetstream::Context,
    pending: Vec<(
        u64,
        String,
        Vec<u8>,
        async_nats::jetstream::context::PublishAckFuture,
    )>,
) {
    for (i, subject, body, ack) in pending {
        if ack.await.is_ok() {
            continue;
        }
        // Re-publishing with the same Nats-Msg-Id is safe: JetStream de-duplicates it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = async {
                publish_raw(js, &subject, &format!("evt-{i}"), body.clone())
                    .await
                    .await
            };
            if attempt.await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "could not publish evt-{i}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn sqlite_counts(db: &Path) -> (i64, i64, i64) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let all: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM execution_results")
        .fetch_one(&pool)
        .await
        .unwrap();
    let failed: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM execution_results WHERE success = 0")
            .fetch_one(&pool)
            .await
            .unwrap();
    let checkpoint: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(last_seq), 0) FROM checkpoints WHERE stream = 'RESULTS'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    (all, failed, checkpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_ingest_loses_nothing_and_counts_nothing_twice() {
    const N: u64 = 20_000;
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orrery.db");
    let http = reqwest::Client::new();
    let js = jetstream(&nats).await;
    let finished = ago(Duration::from_secs(60));

    let mut daemon = Daemon::spawn(&nats.url(), &db, 256);
    wait_for_streams(&js).await;
    let publisher = {
        let js = js.clone();
        let finished = finished.clone();
        tokio::spawn(async move { publish_range(&js, 0..N, &finished).await })
    };

    // Kill the daemon three times while it is ingesting, each time a bit further in.
    for threshold in [2_000u64, 7_000, 12_000] {
        wait_until(
            Duration::from_secs(60),
            "the daemon to make progress",
            || async {
                daemon
                    .metric(&http, "orrery_projection_checkpoint")
                    .await
                    .is_some_and(|c| c >= threshold)
            },
        )
        .await;
        daemon.kill9();
        let (rows, _, checkpoint) = sqlite_counts(&db).await;
        assert!(checkpoint < N as i64, "killed too late to prove anything");
        // Rows committed must match the checkpoint exactly (one row per message here).
        assert_eq!(
            rows, checkpoint,
            "rows and checkpoint disagree after SIGKILL"
        );
        daemon = Daemon::spawn(&nats.url(), &db, 256);
    }
    publisher.await.unwrap();

    wait_until(
        Duration::from_secs(60),
        "the restarted daemon to catch up",
        || async { daemon.metric(&http, "orrery_projection_checkpoint").await == Some(N) },
    )
    .await;
    let (rows, failed, checkpoint) = sqlite_counts(&db).await;
    assert_eq!(rows, N as i64);
    assert_eq!(failed, (N / 10) as i64);
    assert_eq!(checkpoint, N as i64);

    let v: Value = http
        .get(format!(
            "{}/api/v1/results/stats?since=1h&success=false",
            daemon.address
        ))
        .bearer_auth(token(orrery::token::Role::Viewer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["count"], N / 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_mid_ingest_reconnects_with_exact_counts() {
    const HALF: u64 = 5_000;
    let mut nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    let finished = ago(Duration::from_secs(60));

    publish_range(&js, 0..HALF, &finished).await;
    wait_until(Duration::from_secs(30), "some progress", || async {
        app.count("since=1h").await > 0
    })
    .await;
    nats.restart().unwrap();
    publish_range(&js, HALF..2 * HALF, &finished).await;

    wait_until(
        Duration::from_secs(60),
        "all results after the restart",
        || async { app.count("since=1h").await == (2 * HALF) as i64 },
    )
    .await;
    app.wait_caught_up().await;
    assert_eq!(
        app.count("since=1h&success=false").await,
        (2 * HALF / 10) as i64
    );
    assert_eq!(app.count("since=1h").await, (2 * HALF) as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_database_or_rebuilding_reproduces_identical_read_models() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

    for i in 0..300u64 {
        let kind = ["traffic", "email", "job"][(i % 3) as usize];
        let finished = ago(Duration::from_secs(i * 97));
        publish_result(
            &js,
            &format!("result.{kind}.agent-{}", i % 7),
            json!({"result_id": format!("r-{}", i % 280), "exit_code": (i % 4) as i64, "finished_at": finished}),
        )
        .await;
    }
    publish_raw(&js, "result.traffic.a", "bad-1", b"{ nope".to_vec())
        .await
        .await
        .unwrap();
    app.wait_caught_up().await;

    let queries = [
        "since=1h",
        "since=1h&success=false",
        "since=3h&kind=email",
        "since=7d&success=true&kind=job",
        "since=30m&success=false&kind=traffic",
    ];
    let mut before = Vec::new();
    for q in queries {
        before.push(app.count(q).await);
    }
    let rows_before = dump_results(&app.db_path).await;
    assert_eq!(rows_before.len(), 280);
    // A topology, heartbeats and an alert too, so that every read model has rows to agree on.
    publish_topology(&js, "t1", "status", json!({"status": "up"})).await;
    let beat = json!({"id": "hb-1", "data": {"hostname": "h", "stats": {"cpu_percent": 1.5}, "containers": [{"container_id": "c1", "workload_id": "shop"}]}});
    publish_raw(&js, "heartbeat.a1", "hb-1", beat.to_string().into_bytes())
        .await
        .await
        .unwrap();
    for n in 1..=2 {
        let alert = json!({"id": format!("al-{n}"), "data": {"provider_event_id": format!("e{n}"), "stage": "firing", "fingerprint": "f1"}});
        publish_raw(
            &js,
            "alert.sentry.p1",
            &format!("al-{n}"),
            alert.to_string().into_bytes(),
        )
        .await
        .await
        .unwrap();
    }
    app.wait_caught_up().await;
    // And a dry-run of the alert's work item, for the WORKITEMS history.
    let work_item = orrery::projections::work_items::work_item_id("p1", "fp:f1");
    let res = app
        .post(
            "/api/v1/alerts/recurrence/work-item/dry-run",
            Some(orrery::token::Role::Operator),
            json!({ "work_item_id": work_item }).to_string(),
        )
        .await;
    assert_eq!(res.status(), 202);
    let digest_before = app
        .get_json("/api/v1/admin/digest", orrery::token::Role::Admin)
        .await;
    let rows: Vec<u64> = digest_before["read_models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["tables"][0]["rows"].as_u64().unwrap())
        .collect();
    assert!(rows.iter().all(|n| *n > 0), "{digest_before}");
    assert_eq!(
        app.get("/api/v1/admin/digest", Some(orrery::token::Role::Operator))
            .await
            .status(),
        403
    );

    let (db_path, dir) = app.stop().await;
    for suffix in ["", "-wal", "-shm"] {
        let p = format!("{}{suffix}", db_path.display());
        let _ = std::fs::remove_file(p);
    }
    let app = spawn_app_with(settings(&nats.url(), &db_path), dir).await;
    app.wait_caught_up().await;
    let mut after = Vec::new();
    for q in queries {
        after.push(app.count(q).await);
    }
    assert_eq!(before, after);
    assert_eq!(rows_before, dump_results(&app.db_path).await);
    assert_eq!(
        app.get_json("/api/v1/admin/digest", orrery::token::Role::Admin)
            .await,
        digest_before,
        "the replayed database holds the same rows"
    );
    let dl = app
        .get_json("/api/v1/dead-letters", orrery::token::Role::Admin)
        .await;
    assert_eq!(dl["total"], 1);

    // `orrery rebuild` on the stopped daemon's database gives the same rows again.
    let (db_path, _dir) = app.stop().await;
    let config = settings(&nats.url(), &db_path).resolve().unwrap();
    let mut reports = Vec::new();
    let replayed = orrery::rebuild::rebuild(&config, Some("RESULTS"), |r| reports.push(r))
        .await
        .unwrap();
    assert_eq!(replayed, 301);
    // Progress came after every batch, rising to the stream's end.
    let last = reports.last().expect("progress reports");
    assert_eq!(
        (last.stream, last.checkpoint, last.target, last.replayed),
        ("RESULTS", 301, 301, 301)
    );
    assert!(reports
        .windows(2)
        .all(|w| w[0].checkpoint < w[1].checkpoint));
    assert_eq!(rows_before, dump_results(&db_path).await);
    let digest_after = digest_of(&db_path);
    assert_eq!(
        digest_after, digest_before,
        "`orrery digest` after `orrery rebuild`"
    );
}

/// Waits for `/ready`, then publishes topology `tid`'s status and waits until it is projected.
async fn ready_with_topology(
    daemon: &Daemon,
    http: &reqwest::Client,
    js: &jetstream::Context,
    tid: &str,
) {
    daemon.wait_for(http, "/ready").await;
    let seq = publish_topology(js, tid, "status", json!({"status": "active"})).await;
    wait_until(Duration::from_secs(20), "the topology", || async {
        daemon.metric_of(http, "TOPOLOGY").await == Some(seq)
    })
    .await;
}

/// Sends SIGTERM once `/health` answers and expects exit status 0 (5 s is a hang detector).
async fn sigterm_and_expect_clean_exit(mut daemon: Daemon, ready_path: &str) {
    let http = reqwest::Client::new();
    daemon.wait_for(&http, ready_path).await;
    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = loop {
        if let Some(exit) = daemon.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGTERM did not stop the daemon"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_promptly() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::spawn(&nats.url(), &dir.path().join("o.db"), 256);
    sigterm_and_expect_clean_exit(daemon, "/ready").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_promptly_while_the_bus_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port: provisioning and consumers keep retrying.
    let url = format!("nats://127.0.0.1:{}", free_port().unwrap());
    let daemon = Daemon::spawn(&url, &dir.path().join("o.db"), 256);
    sigterm_and_expect_clean_exit(daemon, "/health").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_100_open_streams_ends_them_and_exits_promptly() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::spawn_with(
        &nats.url(),
        &dir.path().join("o.db"),
        256,
        &[("ORRERY_SSE_MAX_STREAMS_PER_USER", "200")],
    );
    let http = reqwest::Client::new();
    let js = jetstream(&nats).await;
    ready_with_topology(&daemon, &http, &js, "t").await;
    let mut streams = Vec::new();
    for _ in 0..100 {
        let res = open_stream(&http, &daemon.address, "t", "many", None).await;
        let mut sse = SseClient::new(res);
        assert_eq!(
            sse.next(Duration::from_secs(10)).await.unwrap().event,
            "snapshot"
        );
        streams.push(sse);
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut sse| {
            tokio::spawn(async move {
                while sse.next(Duration::from_secs(10)).await.is_some() {}
                sse.retry_ms
            })
        })
        .collect();
    sigterm_and_expect_clean_exit(daemon, "/ready").await;
    let mut retries = std::collections::BTreeSet::new();
    for r in readers {
        // Every stream ended, its last word a reconnect delay of 2 s plus up to 5 s of jitter.
        let retry = r.await.unwrap().expect("a retry: field");
        assert!((2_000..7_000).contains(&retry), "retry: {retry}");
        retries.insert(retry);
    }
    // 100 draws from 5,000 values: a handful of equal ones at most, never all the same.
    assert!(retries.len() > 50, "retry delays not spread: {retries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_drain_delay_turns_ready_503_while_streams_and_queries_carry_on() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::spawn_with(
        &nats.url(),
        &dir.path().join("o.db"),
        256,
        &[("ORRERY_DRAIN_DELAY_MS", "3000")],
    );
    let http = reqwest::Client::new();
    let js = jetstream(&nats).await;
    ready_with_topology(&daemon, &http, &js, "t").await;
    let mut sse = SseClient::new(open_stream(&http, &daemon.address, "t", "drain", None).await);
    assert_eq!(
        sse.next(Duration::from_secs(10)).await.unwrap().event,
        "snapshot"
    );

    let started = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // `kill` returns once the signal is queued, not handled: ask until the daemon has seen
    // it, bounded well inside the 3 s drain.
    let mut res = http
        .get(format!("{}/ready", daemon.address))
        .send()
        .await
        .unwrap();
    while res.status() == 200 && started.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        res = http
            .get(format!("{}/ready", daemon.address))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["reasons"].to_string().contains("shutting down"),
        "{body}"
    );
    // While draining, everything but readiness answers as before, and the stream stays open.
    let health = http.get(format!("{}/health", daemon.address)).send().await;
    assert_eq!(health.unwrap().status(), 200);
    let seq = publish_topology(&js, "t", "status", json!({"status": "draining"})).await;
    let live = sse
        .next(Duration::from_secs(2))
        .await
        .expect("a live event while draining");
    assert_eq!(live.seq(), seq);
    // Then the stream ends with a reconnect hint and the daemon exits 0.
    assert!(sse.next(Duration::from_secs(10)).await.is_none());
    assert!(
        started.elapsed() >= Duration::from_millis(2_900),
        "the stream ended {:?} after SIGTERM, before the drain delay",
        started.elapsed()
    );
    assert!(sse.retry_ms.is_some_and(|ms| ms >= 2_000));
    let exit = loop {
        if let Some(exit) = daemon.child.try_wait().unwrap() {
            break exit;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_nats_server_older_than_2_11_with_exit_code_2() {
    let bin = std::env::var_os("ORRERY_OLD_NATS_SERVER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/nats-2.10/bin/nats-server")
        });
    assert!(
        bin.exists(),
        "{} is missing: run scripts/ensure-old-nats-server.sh (make test does)",
        bin.display()
    );
    let old = NatsServer::start_binary(bin).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = serve_until_it_exits(
        &old.url(),
        &dir.path().join("o.db"),
        "orrery kept running against nats-server 2.10",
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("nats-server 2.10.26 is too old") && stderr.contains("2.11 or later"),
        "{stderr}"
    );
    // Refused before anything was created on the old server.
    let js = jetstream(&old).await;
    let names: Vec<String> = futures::TryStreamExt::try_collect(js.stream_names())
        .await
        .unwrap();
    assert!(names.is_empty(), "streams created: {names:?}");
}

/// A tmpfs of `size` mounted on a fresh directory; unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount(8)");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CAP_SYS_ADMIN), as on the CI machine"
        );
        Self { dir }
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: detached at once even while a daemon of a failed test still holds files.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_projection_visibly_and_it_resumes_exactly_once_freed() {
    let nats = NatsServer::start().unwrap();
    let js = jetstream(&nats).await;
    // Room for the empty schema and its migration's WAL (61 pages of 16 KiB), not for
    // the rows.
    let disk = SmallDisk::mount("3m");
    let db = disk.dir.path().join("orrery.db");
    let app = spawn_app_with(settings(&nats.url(), &db), tempfile::tempdir().unwrap()).await;
    wait_for_streams(&js).await;
    // Far more than 3 MB of rows and indexes.
    publish_range(&js, 0..20_000, &ago(Duration::from_secs(60))).await;

    let http = reqwest::Client::new();
    let reason = failing_reason(&app, "RESULTS").await;
    assert!(reason.contains("full"), "{reason}");
    let stuck = app.count("since=1h").await;
    assert!(stuck < 20_000, "{stuck}");

    // Room again: projection carries on from its checkpoint, every event exactly once.
    disk.resize("64m");
    app.wait_caught_up().await;
    assert_eq!(app.count("since=1h").await, 20_000);
    let r: Value = http
        .get(format!("{}/ready", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "ready", "{r}");
    app.stop().await;
}

/// Files made immutable (`chattr +i`: refused even to root and to descriptors already open
/// for writing, as a filesystem remounted read-only after an I/O error refuses them); made
/// writable again when dropped.
struct ReadOnly(Vec<std::path::PathBuf>);

impl ReadOnly {
    fn set(files: &[std::path::PathBuf], flag: &str) {
        let status = Command::new("chattr")
            .arg(flag)
            .args(files)
            .status()
            .expect("chattr(1)");
        assert!(
            status.success(),
            "chattr {flag} needs root (CAP_LINUX_IMMUTABLE) and ext4-like files, as on the CI machine"
        );
    }

    fn make(files: Vec<std::path::PathBuf>) -> Self {
        Self::set(&files, "+i");
        Self(files)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").args(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_turned_read_only_stops_projection_visibly_and_it_resumes_exactly() {
    let nats = NatsServer::start().unwrap();
    let js = jetstream(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orrery.db");
    let app = spawn_app_with(settings(&nats.url(), &db), tempfile::tempdir().unwrap()).await;
    wait_for_streams(&js).await;
    let finished = ago(Duration::from_secs(60));
    publish_range(&js, 0..200, &finished).await;
    app.wait_caught_up().await;
    let wal = dir.path().join("orrery.db-wal");
    let read_only = ReadOnly::make(vec![db.clone(), wal]);

    publish_range(&js, 200..2_200, &finished).await;
    let reason = failing_reason(&app, "RESULTS").await;
    assert!(reason.contains("writ"), "names the cause: {reason}");
    assert_eq!(app.get("/ready", None).await.status(), 503);
    // Queries still answer from what was committed, and nothing past it was skipped.
    assert_eq!(app.count("since=1h").await, 200);

    drop(read_only);
    app.wait_caught_up().await;
    assert_eq!(app.count("since=1h").await, 2_200);
    app.stop().await;
}

/// A database a daemon made on `nats` and left, stopped: its directory and its path.
async fn a_stopped_database(nats: &NatsServer) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orrery.db");
    let app = spawn_app_with(settings(&nats.url(), &db), tempfile::tempdir().unwrap()).await;
    app.wait_caught_up().await;
    app.stop().await;
    (dir, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_read_only_database_by_name_with_exit_code_2() {
    let nats = NatsServer::start().unwrap();
    let (_dir, db) = a_stopped_database(&nats).await;
    let read_only = ReadOnly::make(vec![db.clone()]);
    let out = serve_until_it_exits(
        &nats.url(),
        &db,
        "orrery serve kept running on a read-only database",
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&db.display().to_string()) && stderr.contains("cannot be written"),
        "{stderr}"
    );
    // Writable again: it starts on the same file.
    drop(read_only);
    let daemon = Daemon::spawn(&nats.url(), &db, 64);
    daemon.wait_for(&reqwest::Client::new(), "/ready").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_damaged_while_stopped_is_named_and_rebuild_restores_it_identically() {
    let nats = NatsServer::start().unwrap();
    let js = jetstream(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orrery.db");
    let app = spawn_app_with(settings(&nats.url(), &db), tempfile::tempdir().unwrap()).await;
    wait_for_streams(&js).await;
    publish_range(&js, 0..500, &ago(Duration::from_secs(60))).await;
    publish_topology(&js, "t", "status", json!({"status": "active"})).await;
    app.wait_caught_up().await;
    app.stop().await;
    let before = digest_of(&db);

    // A stopped daemon leaves one file: the WAL is folded into it.
    let wal = std::fs::metadata(format!("{}-wal", db.display())).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the WAL was left with {wal} bytes");

    // Damage the header while nothing runs.
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[..64].copy_from_slice(&[0x5a; 64]);
    std::fs::write(&db, bytes).unwrap();
    let out = serve_until_it_exits(
        &nats.url(),
        &db,
        "orrery serve kept running on a damaged database",
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("damaged") && stderr.contains("orrery rebuild"),
        "{stderr}"
    );

    // The operator does as told: the damaged file is kept aside, the new one is the same.
    rebuild(&nats.url(), &db, None);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("orrery.db.damaged-"))
        .collect();
    assert!(!aside.is_empty(), "the damaged file was not kept");
    assert_eq!(digest_of(&db), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_faster_than_projection_stays_bounded_visible_answering_and_exact() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Batches of 8 make projection slow enough for publishers to outrun it many times over.
    let daemon = Daemon::spawn_with(
        &nats.url(),
        &dir.path().join("o.db"),
        8,
        &[("ORRERY_READY_MAX_LAG", "2000")],
    );
    let http = reqwest::Client::new();
    let js = jetstream(&nats).await;
    daemon.wait_for(&http, "/ready").await;
    let baseline = orrery::telemetry::resident_bytes(daemon.child.id());
    let flood = {
        let js = js.clone();
        tokio::spawn(async move {
            publish_range(&js, 0..150_000, &ago(Duration::from_secs(60))).await;
        })
    };

    // While it lasts: readiness says how far behind, queries keep answering promptly.
    let mut saw_lag = false;
    let mut peak_rss = baseline;
    let mut slowest = Duration::ZERO;
    while !flood.is_finished() {
        let res = http
            .get(format!("{}/ready", daemon.address))
            .send()
            .await
            .unwrap();
        if res.status() == 503 {
            let body: Value = res.json().await.unwrap();
            saw_lag |= body["reasons"].to_string().contains("lags by");
        }
        let asked = Instant::now();
        let stats = http
            .get(format!("{}/api/v1/results/stats?since=1h", daemon.address))
            .bearer_auth(token(orrery::token::Role::Viewer))
            .send()
            .await
            .unwrap();
        assert_eq!(stats.status(), 200);
        slowest = slowest.max(asked.elapsed());
        peak_rss = peak_rss.max(orrery::telemetry::resident_bytes(daemon.child.id()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    flood.await.unwrap();
    let behind = stream_state(&js, "RESULTS").await.0
        - daemon
            .metric(&http, "orrery_projection_checkpoint")
            .await
            .unwrap_or(0);
    eprintln!(
        "flood over: {behind} behind, RSS {baseline} → {peak_rss}, slowest query {slowest:?}"
    );
    assert!(saw_lag, "/ready never said the projection lagged");
    assert!(
        slowest < Duration::from_secs(2),
        "a query took {slowest:?} during the flood"
    );
    // The backlog waits in JetStream, not in the daemon: memory stays near its baseline.
    assert!(
        peak_rss < baseline + 150 * 1024 * 1024,
        "RSS grew from {baseline} to {peak_rss}"
    );

    // And it catches up, every event once.
    let seq = stream_state(&js, "RESULTS").await.0;
    wait_until(Duration::from_secs(120), "the backlog to drain", || async {
        daemon.metric(&http, "orrery_projection_checkpoint").await == Some(seq)
    })
    .await;
    let count: Value = http
        .get(format!("{}/api/v1/results/stats?since=1h", daemon.address))
        .bearer_auth(token(orrery::token::Role::Viewer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(count["count"], 150_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_release_is_refused_by_name_with_exit_code_2_and_left_alone() {
    let nats = NatsServer::start().unwrap();
    let (_dir, db) = a_stopped_database(&nats).await;
    // A later release added a migration this binary does not have.
    let ours = orrery::db::schema_version();
    let newer = ours + 1;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (?1, 'from a later release', 1, x'00', 0)",
    )
    .bind(newer)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let before = schema_state(&db).await;
    let out = serve_until_it_exits(&nats.url(), &db, "orrery serve ran on a newer schema").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("schema version {newer}"))
            && stderr.contains(&format!("(schema {ours})"))
            && stderr.contains(env!("CARGO_PKG_VERSION")),
        "{stderr}"
    );
    // Nothing was migrated or changed: the same migrations, tables and checkpoints.
    assert_eq!(
        schema_state(&db).await,
        before,
        "the file is left as it was"
    );
}

/// What a migration would change: the migrations recorded, the schema's SQL, the checkpoints.
async fn schema_state(db: &Path) -> (Vec<i64>, Vec<String>, Vec<(String, i64)>) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let migrations = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap();
    let schema =
        sqlx::query_scalar("SELECT COALESCE(sql, name) FROM sqlite_master ORDER BY type, name")
            .fetch_all(&pool)
            .await
            .unwrap();
    let checkpoints = sqlx::query_as("SELECT stream, last_seq FROM checkpoints ORDER BY stream")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    (migrations, schema, checkpoints)
}

/// The `THP_enabled` line of a process's `/proc/<pid>/status`.
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .expect("the kernel reports THP_enabled")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn the_daemon_runs_without_transparent_huge_pages_unless_mimalloc_is_told_otherwise() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    // Huge pages made every connection's few KiB of buffers cost a cleared 2 MiB page.
    let daemon = Daemon::spawn(&nats.url(), &dir.path().join("a.db"), 64);
    daemon.wait_for(&http, "/health").await;
    assert_eq!(thp_enabled(daemon.child.id()), "0");
    // An operator who wants them says so as mimalloc documents, and the daemon leaves it be.
    let daemon = Daemon::spawn_with(
        &nats.url(),
        &dir.path().join("b.db"),
        64,
        &[("MIMALLOC_ALLOW_THP", "1")],
    );
    daemon.wait_for(&http, "/health").await;
    assert_eq!(thp_enabled(daemon.child.id()), "1");
}

/// A server that cannot start (its port taken) is reported with the end of its own log.
#[test]
fn a_nats_server_that_cannot_start_says_why() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let error = match NatsServer::start_in(dir.path().join("store"), port) {
        Ok(_) => panic!("nats-server started on a port that is taken"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("exited at start"), "{error}");
    assert!(error.contains("address already in use"), "{error}");
}
