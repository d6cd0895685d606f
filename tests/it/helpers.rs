//! Test harness: a real nats-server on a free port with a temporary store, and the daemon
//! built exactly as `main` builds it, on port 0 with a fresh SQLite file.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::HeaderMap;
use orrery::config::Secret;
use orrery::natsd::NatsServer;
use orrery::token::{mint, Role};
use orrery::{Application, Settings};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// A daemon running in this process.
pub struct TestApp {
    pub address: String,
    pub db_path: PathBuf,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    pub _dir: tempfile::TempDir,
}

pub fn settings(nats_url: &str, db_path: &std::path::Path) -> Settings {
    Settings {
        nats_url: Some(nats_url.to_owned()),
        database: Some(db_path.to_owned()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        jwt_secret: Some(SECRET.to_owned()),
        ..Default::default()
    }
}

pub async fn spawn_app(nats: &NatsServer) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("orrery.db");
    spawn_app_with(settings(&nats.url(), &db_path), dir).await
}

pub async fn spawn_app_with(settings: Settings, dir: tempfile::TempDir) -> TestApp {
    let db_path = settings.database.clone().unwrap();
    let app = Application::build(settings.resolve().unwrap())
        .await
        .unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = app.shutdown_token();
    let handle = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        db_path,
        http: reqwest::Client::new(),
        shutdown,
        handle: Some(handle),
        _dir: dir,
    }
}

pub fn token(role: Role) -> String {
    mint(&Secret::new(SECRET), "tester", role, 3600).unwrap()
}

impl TestApp {
    pub async fn get(&self, path: &str, role: Option<Role>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{}", self.address, path));
        if let Some(role) = role {
            req = req.bearer_auth(token(role));
        }
        req.send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str, role: Role) -> Value {
        let res = self.get(path, Some(role)).await;
        assert_eq!(res.status(), 200, "GET {path}");
        res.json().await.unwrap()
    }

    /// POSTs a body (JSON text or raw bytes) with a token of `role`.
    pub async fn post(
        &self,
        path: &str,
        role: Option<Role>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}{}", self.address, path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(role) = role {
            req = req.bearer_auth(token(role));
        }
        req.send().await.unwrap()
    }

    /// `POST /api/v1/auth/sse-ticket` with `token`: the answer (`ticket`, `expires_in`).
    pub async fn sse_ticket(&self, token: &str) -> Value {
        let res = self
            .http
            .post(format!("{}/api/v1/auth/sse-ticket", self.address))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// Five seconds of `orrery demo` traffic on every subject (300 events/s, 6 agents),
    /// projected: no list is empty after it.
    pub async fn demo_traffic(&self, nats_url: &str) {
        let out = run_demo(
            nats_url,
            &["--rate", "300", "--duration", "5s", "--agents", "6"],
        )
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_caught_up().await;
    }

    /// Enqueues an `add` mutation on topology `tid` as an operator.
    pub async fn enqueue(&self, tid: &str) -> reqwest::Response {
        self.post(
            &format!("/api/v1/topologies/{tid}/mutations"),
            Some(Role::Operator),
            serde_json::json!({"op": "add", "spec": {}}).to_string(),
        )
        .await
    }

    /// The id of the first recurrence group's work item (the groups' first page).
    pub async fn first_work_item(&self) -> String {
        let groups = self
            .get_json("/api/v1/alerts/recurrence?limit=300", Role::Viewer)
            .await;
        groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|g| g["work_item"]["id"].as_str())
            .unwrap_or_else(|| panic!("no recurrence group has a work item: {groups}"))
            .to_owned()
    }

    /// `count` of the results badge.
    pub async fn count(&self, query: &str) -> i64 {
        let v = self
            .get_json(&format!("/api/v1/results/stats?{query}"), Role::Viewer)
            .await;
        v["count"].as_i64().unwrap()
    }

    /// Stops the daemon gracefully and waits for it.
    pub async fn stop(mut self) -> (PathBuf, tempfile::TempDir) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
        (
            self.db_path.clone(),
            std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap()),
        )
    }

    /// Waits until every projection reports lag 0 on /ready.
    pub async fn wait_caught_up(&self) {
        wait_until(
            Duration::from_secs(30),
            "projections to catch up",
            || async {
                let res = self.get("/ready", None).await;
                caught_up(&res.json().await.unwrap())
            },
        )
        .await;
    }
}

/// Whether a `/ready` answer says ready with every projection at lag 0.
pub fn caught_up(ready: &Value) -> bool {
    ready["status"] == "ready"
        && ready["projections"]
            .as_array()
            .is_some_and(|a| a.iter().all(|p| p["lag"] == 0))
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `check` every 20 ms until it holds; panics after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn jetstream(nats: &NatsServer) -> jetstream::Context {
    jetstream::new(async_nats::connect(nats.url()).await.unwrap())
}

/// Publishes raw bytes with a Nats-Msg-Id; returns the ack future.
pub async fn publish_raw(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    body: Vec<u8>,
) -> PublishAckFuture {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    js.publish_with_headers(subject.to_owned(), headers, body.into())
        .await
        .unwrap()
}

/// Publishes one result event and waits for the ack.
pub async fn publish_result(js: &jetstream::Context, subject: &str, data: Value) {
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({"id": id, "data": data});
    publish_raw(js, subject, &id, serde_json::to_vec(&body).unwrap())
        .await
        .await
        .unwrap();
}

/// `(last_sequence, messages)` of a stream.
pub async fn stream_state(js: &jetstream::Context, name: &str) -> (u64, u64) {
    let state = js
        .get_stream(name)
        .await
        .unwrap()
        .cached_info()
        .state
        .clone();
    (state.last_sequence, state.messages)
}

/// Publishes one event whose envelope carries `time`, and waits for the ack.
pub async fn publish_at(js: &jetstream::Context, subject: &str, time: &str, data: Value) {
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({"id": id, "time": time, "data": data});
    publish_raw(js, subject, &id, serde_json::to_vec(&body).unwrap())
        .await
        .await
        .unwrap();
}

/// Waits until every stream exists (the daemon provisions it in the background).
pub async fn wait_for_streams(js: &jetstream::Context) {
    wait_until(
        Duration::from_secs(10),
        "streams to be provisioned",
        || async {
            for s in orrery::bus::streams::ALL {
                if js.get_stream(s.name).await.is_err() {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

/// RFC 3339 for `now - ago`.
pub fn ago(ago: Duration) -> String {
    let t = time::OffsetDateTime::now_utc() - ago;
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A full, ordered dump of execution_results for equality checks.
pub async fn dump_results(db_path: &std::path::Path) -> Vec<(String, String, String, i64, i64)> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db_path.display()))
        .await
        .unwrap();
    let rows = sqlx::query_as(
        "SELECT result_id, kind, agent_id, success, recorded_at FROM execution_results ORDER BY result_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

/// One server-sent event as a client parses it.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
    /// The stream sequence of the id (`<seq>.<epoch>`).
    pub fn seq(&self) -> u64 {
        let id = self.id.as_deref().unwrap();
        let (seq, epoch) = id.split_once('.').expect("ids are <seq>.<epoch>");
        assert!(!epoch.is_empty(), "{id}");
        seq.parse().unwrap()
    }
    /// The epoch of the id.
    pub fn epoch(&self) -> &str {
        self.id.as_deref().unwrap().split_once('.').unwrap().1
    }
}

/// A minimal EventSource: reads frames from a streaming response.
pub struct SseClient {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a frame end.
    scanned: usize,
    /// The last `retry:` field the server sent, in ms.
    pub retry_ms: Option<u64>,
}

impl SseClient {
    pub fn new(res: reqwest::Response) -> Self {
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            body: Box::pin(res.bytes_stream()),
            buf: Vec::new(),
            scanned: 0,
            retry_ms: None,
        }
    }

    /// The next event with an `event:` or `data:` field; `None` when the stream ends or
    /// nothing arrives within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<SseEvent> {
        use futures::StreamExt;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let from = self.scanned.saturating_sub(1);
            if let Some(i) = self.buf[from..].windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buf.drain(..from + i + 2).collect();
                self.scanned = 0;
                let mut ev = SseEvent {
                    event: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut has_payload = false;
                for line in std::str::from_utf8(&frame).unwrap().lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = v.into();
                        has_payload = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.into());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        ev.data.push_str(v);
                        has_payload = true;
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        self.retry_ms = Some(v.parse().expect("retry: takes an integer"));
                    }
                }
                if has_payload {
                    return Some(ev);
                }
                continue;
            }
            self.scanned = self.buf.len();
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }
}

/// Opens an SSE stream with a bearer token for `sub`, resuming after a bare sequence.
pub async fn open_stream(
    http: &reqwest::Client,
    base: &str,
    tid: &str,
    sub: &str,
    last_event_id: Option<u64>,
) -> reqwest::Response {
    open_stream_after(
        http,
        base,
        tid,
        sub,
        last_event_id.map(|s| s.to_string()).as_deref(),
    )
    .await
}

/// Opens an SSE stream with a bearer token for `sub`, sending `Last-Event-ID` as given.
pub async fn open_stream_after(
    http: &reqwest::Client,
    base: &str,
    tid: &str,
    sub: &str,
    last_event_id: Option<&str>,
) -> reqwest::Response {
    let mut req = http
        .get(format!("{base}/topologies/{tid}/events"))
        .bearer_auth(mint(&Secret::new(SECRET), sub, Role::Viewer, 3600).unwrap());
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    req.send().await.unwrap()
}

/// Publishes a topology event and returns its stream sequence.
pub async fn publish_topology(
    js: &jetstream::Context,
    tid: &str,
    suffix: &str,
    data: Value,
) -> u64 {
    let id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({"id": id, "data": data});
    publish_raw(
        js,
        &format!("topology.{tid}.{suffix}"),
        &id,
        serde_json::to_vec(&body).unwrap(),
    )
    .await
    .await
    .unwrap()
    .sequence
}

/// Runs `orrery demo` with `args` against `nats_url` to its end; returns its output.
pub async fn run_demo(nats_url: &str, args: &[&str]) -> std::process::Output {
    let url = nats_url.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_orrery"))
            .arg("demo")
            .args(&args)
            .env("ORRERY_NATS_URL", url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Runs the orrery binary with `args` on the database `db` and `env` added; asserts it
/// succeeded and returns its stdout.
pub fn orrery_cli(args: &[&str], db: &std::path::Path, env: &[(&str, &str)]) -> Vec<u8> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orrery"))
        .args(args)
        .arg("--database")
        .arg(db)
        .env_remove("ORRERY_CONFIG")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `orrery digest` of a database file, as JSON.
pub fn digest_of(db: &std::path::Path) -> Value {
    serde_json::from_slice(&orrery_cli(&["digest"], db, &[])).unwrap()
}

/// Runs `orrery rebuild` on `db` against `nats_url` (every stream, or `stream`) and asserts
/// it succeeded.
pub fn rebuild(nats_url: &str, db: &std::path::Path, stream: Option<&str>) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orrery"))
        .arg("rebuild")
        .args(stream.map(|s| ["--stream", s]).into_iter().flatten())
        .arg("--database")
        .arg(db)
        .env_remove("ORRERY_CONFIG")
        .env("ORRERY_NATS_URL", nats_url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits (≤ 60 s) until `/ready` says that `stream`'s projection is failing; returns the
/// reason it gives.
pub async fn failing_reason(app: &TestApp, stream: &str) -> String {
    let wanted = format!("projection {stream} is failing");
    let started = std::time::Instant::now();
    loop {
        let ready: Option<Value> = app.get("/ready", None).await.json().await.ok();
        let reason = ready.as_ref().and_then(|r| {
            r["reasons"]
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .find(|s| s.contains(&wanted))
                .map(str::to_owned)
        });
        if let Some(reason) = reason {
            return reason;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{wanted}: timed out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
