//! The deployment as users run it: the image and `docker-compose.yml`, single node and the
//! `cluster` profile, under podman-compose (or docker compose). They need a container engine
//! and the images, so `cargo test` skips them (ignored) and `make test-deploy`
//! (scripts/test-deploy.sh) builds the images and runs them, naming the compose command in
//! `ORRERY_DEPLOY_COMPOSE` (a JSON array) and the engine in `ORRERY_DEPLOY_ENGINE`. Every
//! request goes to a port published on 127.0.0.1; every wait is bounded; whatever happens,
//! the compose project is taken down with its volumes when the test ends.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orrery::natsd::free_port;
use orrery::token::Role;
use serde_json::{json, Value};

use crate::helpers::{token, SseClient, SECRET};

/// A compose project of this test's own (a unique name and ports), downed on drop.
struct Project {
    name: String,
    compose: Vec<String>,
    engine: String,
    profile: Option<&'static str>,
    env: Vec<(&'static str, String)>,
    phases: Vec<(&'static str, Duration)>,
    phase: Option<(&'static str, Instant)>,
}

impl Project {
    fn new(profile: Option<&'static str>, ports: &[&'static str]) -> Self {
        let compose: Vec<String> = serde_json::from_str(
            &std::env::var("ORRERY_DEPLOY_COMPOSE").expect("run by make test-deploy"),
        )
        .expect("ORRERY_DEPLOY_COMPOSE is a JSON array");
        let engine = std::env::var("ORRERY_DEPLOY_ENGINE").unwrap_or_else(|_| "podman".into());
        let name = format!(
            "orrery-it-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut env = vec![
            ("ORRERY_JWT_SECRET", SECRET.to_owned()),
            ("ORRERY_PUBLISH_ADDR", "127.0.0.1".to_owned()),
        ];
        for port in ports {
            env.push((port, free_port().unwrap().to_string()));
        }
        Self {
            name,
            compose,
            engine,
            profile,
            env,
            phases: Vec::new(),
            phase: None,
        }
    }

    /// The host port published for `var` (e.g. ORRERY_PORT).
    fn port(&self, var: &str) -> String {
        self.env.iter().find(|(k, _)| *k == var).unwrap().1.clone()
    }

    fn url(&self, var: &str) -> String {
        format!("http://127.0.0.1:{}", self.port(var))
    }

    /// Starts timing the phase `name`, ending the one before.
    fn phase(&mut self, name: &'static str) {
        if let Some((prev, at)) = self.phase.take() {
            self.phases.push((prev, at.elapsed()));
        }
        eprintln!("[{}] {name}…", self.name);
        self.phase = Some((name, Instant::now()));
    }

    /// The compose command of this project (its name, file, profile, ports) with `args`.
    fn compose_command(&self, args: &[&str]) -> Command {
        let (program, pre) = self.compose.split_first().unwrap();
        let mut cmd = Command::new(program);
        cmd.args(pre)
            .args(["-p", &self.name, "-f", "docker-compose.yml"]);
        if let Some(profile) = self.profile {
            cmd.args(["--profile", profile]);
        }
        cmd.args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        cmd
    }

    /// Runs the compose command with `args`, bounded by `limit`; its output on success.
    fn compose(&self, args: &[&str], limit: Duration) -> String {
        bounded(self.compose_command(args), limit)
            .unwrap_or_else(|e| panic!("compose {args:?}: {e}"))
    }

    fn engine(&self, args: &[&str], limit: Duration) -> String {
        let mut cmd = Command::new(&self.engine);
        cmd.args(args);
        bounded(cmd, limit).unwrap_or_else(|e| panic!("{} {args:?}: {e}", self.engine))
    }

    /// The id of `service`'s container (running or stopped).
    fn container(&self, service: &str) -> String {
        let out = self.engine(
            &[
                "ps",
                "-a",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.name),
                "--filter",
                &format!("label=com.docker.compose.service={service}"),
                "--format",
                "{{.ID}}",
            ],
            Duration::from_secs(30),
        );
        let id = out.lines().next().unwrap_or_default().trim().to_owned();
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    /// Stops `services` together as an orchestrator does (SIGTERM, then the grace period).
    fn stop(&self, services: &[&str]) {
        let ids: Vec<String> = services.iter().map(|s| self.container(s)).collect();
        let mut args = vec!["stop", "-t", "30"];
        args.extend(ids.iter().map(String::as_str));
        self.engine(&args, Duration::from_secs(60));
    }

    fn start(&self, service: &str) {
        let id = self.container(service);
        self.engine(&["start", &id], Duration::from_secs(60));
    }

    /// After a stop: the exit code, and the log lines at ERROR.
    fn exit_and_errors(&self, service: &str) -> (i64, Vec<String>) {
        let id = self.container(service);
        let code = self.engine(
            &["inspect", "--format", "{{.State.ExitCode}}", &id],
            Duration::from_secs(30),
        );
        let mut cmd = Command::new(&self.engine);
        cmd.args(["logs", &id]);
        let logs = combined(cmd);
        let errors = logs
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("panicked"))
            .map(str::to_owned)
            .collect();
        (code.trim().parse().unwrap(), errors)
    }

    /// The host directory of the project's volume `volume` (the engine runs as root here).
    fn volume_dir(&self, volume: &str) -> std::path::PathBuf {
        let out = self.engine(
            &[
                "volume",
                "inspect",
                "--format",
                "{{.Mountpoint}}",
                &format!("{}_{volume}", self.name),
            ],
            Duration::from_secs(30),
        );
        out.trim().into()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        self.phase("down");
        let down = self.compose_command(&["down", "-v", "-t", "10"]);
        if let Err(e) = bounded(down, Duration::from_secs(120)) {
            eprintln!("[{}] down: {e}", self.name);
        }
        if let Some((prev, at)) = self.phase.take() {
            self.phases.push((prev, at.elapsed()));
        }
        eprintln!("[{}] phases:", self.name);
        for (name, took) in &self.phases {
            eprintln!("  {name:<36} {:>7.1} s", took.as_secs_f64());
        }
    }
}

/// Runs `cmd` to its end within `limit` (killed past it); stdout on exit 0, else an error
/// with what it printed.
fn bounded(mut cmd: Command, limit: Duration) -> Result<String, String> {
    let out_file = tempfile::tempfile().map_err(|e| e.to_string())?;
    let err_file = tempfile::tempfile().map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(err_file.try_clone().map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("still running after {limit:?}; killed"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut s = String::new();
        let _ = f.seek(std::io::SeekFrom::Start(0));
        let _ = f.read_to_string(&mut s);
        s
    };
    let (out, err) = (read(out_file), read(err_file));
    if status.success() {
        Ok(out)
    } else {
        Err(format!("{status}\n{out}\n{err}"))
    }
}

/// Stdout and stderr of `cmd` together (container logs go to either).
fn combined(mut cmd: Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `check` every 250 ms until it returns Some, for at most `limit`.
async fn until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GET `path` at `base` with a `role` token: the status and the body as JSON (Null if none).
async fn get(base: &str, path: &str, role: Role) -> Option<(u16, Value)> {
    let res = http()
        .get(format!("{base}{path}"))
        .bearer_auth(token(role))
        .send()
        .await
        .ok()?;
    let status = res.status().as_u16();
    Some((status, res.json().await.unwrap_or(Value::Null)))
}

/// Waits until `base` answers `/health` and then `/ready` with 200.
async fn ready(base: &str, limit: Duration) {
    for probe in ["/health", "/ready"] {
        until(limit, &format!("{base}{probe} 200"), || async {
            let res = http().get(format!("{base}{probe}")).send().await.ok()?;
            (res.status() == 200).then_some(())
        })
        .await;
    }
}

/// Waits until the JSON at `path` mentions `needle` (an id the test published).
async fn shows(base: &str, path: &str, needle: &str) {
    until(
        Duration::from_secs(30),
        &format!("{path} showing {needle}"),
        || async {
            let (status, body) = get(base, path, Role::Admin).await?;
            (status == 200 && body.to_string().contains(needle)).then_some(())
        },
    )
    .await;
}

async fn publish(js: &async_nats::jetstream::Context, subject: &str, data: Value) -> u64 {
    let id = uuid::Uuid::new_v4().to_string();
    let body = json!({"id": id, "time": orrery::window::format_unix_ms(orrery::window::now_ms()), "data": data});
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.as_str());
    js.publish_with_headers(subject.to_owned(), headers, body.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

async fn bus(url: &str) -> (async_nats::Client, async_nats::jetstream::Context) {
    let client = async_nats::connect(url).await.unwrap();
    (client.clone(), async_nats::jetstream::new(client))
}

/// Opens the live stream of `tid` at `base`, after `last` when given.
async fn stream(base: &str, tid: &str, last: Option<&str>) -> SseClient {
    let mut req = reqwest::Client::new()
        .get(format!("{base}/api/v1/topologies/{tid}/events"))
        .bearer_auth(token(Role::Viewer));
    if let Some(id) = last {
        req = req.header("Last-Event-ID", id);
    }
    SseClient::new(req.send().await.unwrap())
}

/// The next event of `client` that is not a keepalive or snapshot; None if the stream ends.
async fn next_change(client: &mut SseClient) -> Option<crate::helpers::SseEvent> {
    loop {
        let ev = client.next(Duration::from_secs(20)).await?;
        if ev.id.is_some() && ev.event != "snapshot" {
            return Some(ev);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a container engine and the images: make test-deploy"]
async fn compose_single_node_serves_every_subject_live_and_drains_clean() {
    let mut p = Project::new(None, &["ORRERY_PORT", "ORRERY_NATS_PORT"]);
    p.phase("up");
    p.compose(&["up", "-d"], Duration::from_secs(180));
    p.phase("health and ready");
    let api = p.url("ORRERY_PORT");
    ready(&api, Duration::from_secs(120)).await;

    p.phase("every subject in, read back");
    let (client, js) = bus(&format!("nats://127.0.0.1:{}", p.port("ORRERY_NATS_PORT"))).await;
    let now = orrery::window::format_unix_ms(orrery::window::now_ms());
    publish(&js, "result.traffic.agent-7", json!({"result_id": "r-traffic-1", "job_id": "probe-http", "exit_code": 1, "finished_at": now})).await;
    publish(&js, "result.deploy.agent-7", json!({"result_id": "d-shop-1", "workload_id": "shop", "reference": "shop@sha256:01", "reason": "deploy", "exit_code": 0, "finished_at": now})).await;
    publish(&js, "heartbeat.agent-7", json!({"hostname": "pc-7.corp", "version": "1.8.2", "stats": {"cpu_percent": 17.5, "memory_usage": 2048, "memory_limit": 8192}, "containers": [{"container_id": "c-7", "workload_id": "shop", "role": "web", "cpu_percent": 3.0, "memory_usage": 10, "memory_limit": 100}]})).await;
    publish(
        &js,
        "topology.lab-eu.status",
        json!({"status": "active", "name": "EU lab"}),
    )
    .await;
    publish(&js, "topology.lab-eu.mutation.enqueued", json!({"mutation_id": "mut-17", "op": "add_decky", "spec": {"decky": "web-3"}, "actor": "alice"})).await;
    publish(&js, "alert.sentry.shop", json!({"provider_event_id": "sentry-8841", "stage": "firing", "alertname": "UnhandledException", "severity": "error", "fingerprint": "sentry:checkout", "content": "ValueError: bad cart id"})).await;
    shows(
        &api,
        "/api/v1/results/stats?since=1h&success=false",
        r#""count":1"#,
    )
    .await;
    shows(&api, "/api/v1/workloads/shop/deploys", "shop@sha256:01").await;
    shows(&api, "/api/v1/health/fleet", r#""known":1"#).await;
    shows(&api, "/api/v1/system/stats/top?by=cpu&limit=5", "agent-7").await;
    shows(&api, "/api/v1/topologies/lab-eu", "EU lab").await;
    shows(&api, "/api/v1/topologies/lab-eu/mutations", "mut-17").await;
    shows(&api, "/api/v1/alerts/recent", "sentry-8841").await;
    // Orrery's own subject: a rollback command reaches the bus.
    let mut commands = client.subscribe("command.deploy.shop").await.unwrap();
    client.flush().await.unwrap();
    let res = http()
        .post(format!("{api}/api/v1/workloads/shop/rollback"))
        .bearer_auth(token(Role::Admin))
        .json(&json!({"deploy_id": "d-shop-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "{:?}", res.text().await);
    let command = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut commands),
    )
    .await
    .expect("the rollback command on command.deploy.shop")
    .unwrap();
    let command: Value = serde_json::from_slice(&command.payload).unwrap();
    assert_eq!(command["data"]["reference"], "shop@sha256:01", "{command}");

    p.phase("a live mutation over SSE");
    let mut live = stream(&api, "lab-eu", None).await;
    let snapshot = live.next(Duration::from_secs(10)).await.expect("snapshot");
    assert_eq!(snapshot.event, "snapshot");
    let res = http()
        .post(format!("{api}/api/v1/topologies/lab-eu/mutations"))
        .bearer_auth(token(Role::Operator))
        .json(&json!({"op": "remove_decky", "spec": {"decky": "web-3"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let seq = res.json::<Value>().await.unwrap()["seq"].as_u64().unwrap();
    let ev = next_change(&mut live).await.expect("the live mutation");
    assert_eq!(ev.seq(), seq);
    assert!(ev.data.contains("remove_decky"), "{}", ev.data);

    p.phase("SIGTERM drain");
    drop(live);
    p.stop(&["orrery"]);
    let (code, errors) = p.exit_and_errors("orrery");
    assert_eq!(code, 0, "orrery exits 0 on SIGTERM");
    assert!(errors.is_empty(), "errors in the log: {errors:#?}");
    // A stopped daemon leaves one self-contained database file.
    let dir = p.volume_dir("orrery-data");
    assert!(dir.join("orrery.db").exists(), "{dir:?}");
    let wal = std::fs::metadata(dir.join("orrery.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the WAL is folded into the database at stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a container engine and the images: make test-deploy"]
async fn compose_cluster_rides_out_a_node_and_a_replica_behind_nginx() {
    let mut p = Project::new(
        Some("cluster"),
        &[
            "ORRERY_PORT",
            "ORRERY_NATS_PORT",
            "ORRERY_REPLICA_1_PORT",
            "ORRERY_REPLICA_2_PORT",
        ],
    );
    p.phase("up");
    p.compose(&["up", "-d", "nginx"], Duration::from_secs(240));
    p.phase("replicas ready");
    let (proxy, r1, r2) = (
        p.url("ORRERY_PORT"),
        p.url("ORRERY_REPLICA_1_PORT"),
        p.url("ORRERY_REPLICA_2_PORT"),
    );
    ready(&r1, Duration::from_secs(180)).await;
    ready(&r2, Duration::from_secs(180)).await;
    ready(&proxy, Duration::from_secs(30)).await;

    p.phase("reads and live events through nginx");
    let (_client, js) = bus(&format!("nats://127.0.0.1:{}", p.port("ORRERY_NATS_PORT"))).await;
    publish(
        &js,
        "topology.t1.status",
        json!({"status": "active", "name": "cluster lab"}),
    )
    .await;
    for base in [&r1, &r2, &proxy] {
        shows(base, "/api/v1/topologies/t1", "cluster lab").await;
    }
    // Four streams through nginx, which spreads them over the replicas: those on the
    // replica about to stop must resume on the other one.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut live = stream(&proxy, "t1", None).await;
        assert_eq!(
            live.next(Duration::from_secs(10)).await.unwrap().event,
            "snapshot"
        );
        streams.push((live, String::new(), Vec::new()));
    }
    let mut expected = vec![
        publish(
            &js,
            "topology.t1.mutation.enqueued",
            json!({"mutation_id": "m-0", "op": "add"}),
        )
        .await,
    ];
    for (live, last_id, received) in &mut streams {
        let ev = next_change(live).await.expect("a live event through nginx");
        *last_id = ev.id.clone().unwrap();
        received.push(ev.seq());
    }

    p.phase("stop nats-2 and orrery-1");
    p.stop(&["nats-2", "orrery-1"]);
    let (code, errors) = p.exit_and_errors("orrery-1");
    assert_eq!(code, 0, "orrery-1 exits 0 on SIGTERM");
    assert!(errors.is_empty(), "errors in orrery-1's log: {errors:#?}");

    p.phase("still serving through nginx");
    for i in 1..=5 {
        let seq = publish(
            &js,
            "topology.t1.mutation.enqueued",
            json!({"mutation_id": format!("m-{i}"), "op": "add"}),
        )
        .await;
        expected.push(seq);
    }
    shows(&proxy, "/api/v1/topologies/t1/mutations", "m-5").await;
    // A stream on orrery-1 ended with its drain; one on orrery-2 goes on. Either way, what
    // arrives through nginx (resuming from the last id, as an EventSource does) is every
    // event once, in order.
    let mut resumed = 0;
    for (live, last_id, received) in &mut streams {
        while received.len() < expected.len() {
            match next_change(live).await {
                Some(ev) => {
                    *last_id = ev.id.clone().unwrap();
                    received.push(ev.seq());
                }
                None => {
                    resumed += 1;
                    assert!(resumed <= 8, "streams keep ending: {received:?}");
                    *live = stream(&proxy, "t1", Some(last_id)).await;
                }
            }
        }
        assert_eq!(
            *received, expected,
            "every live event once, in order, through nginx"
        );
    }
    eprintln!(
        "[{}] {resumed} of 4 streams resumed after orrery-1 stopped",
        p.name
    );
    drop(streams);

    p.phase("restart, replicas agree");
    p.start("nats-2");
    p.start("orrery-1");
    ready(&r1, Duration::from_secs(120)).await;
    let digest = |base: String| async move {
        let (status, body) = get(&base, "/api/v1/admin/digest", Role::Admin).await?;
        (status == 200).then_some(body)
    };
    until(
        Duration::from_secs(60),
        "equal digests on both replicas",
        || async {
            let (a, b) = (digest(r1.clone()).await?, digest(r2.clone()).await?);
            (a == b
                && a.to_string()
                    .contains(&format!(r#""checkpoint":{}"#, expected.last().unwrap())))
            .then_some(())
        },
    )
    .await;

    p.phase("SIGTERM drain of the cluster");
    p.stop(&["nginx", "orrery-1", "orrery-2"]);
    for service in ["orrery-1", "orrery-2"] {
        let (code, errors) = p.exit_and_errors(service);
        assert_eq!(code, 0, "{service} exits 0 on SIGTERM");
        assert!(errors.is_empty(), "errors in {service}'s log: {errors:#?}");
        let dir = p.volume_dir(service);
        let wal = std::fs::metadata(dir.join("orrery.db-wal")).map_or(0, |m| m.len());
        assert_eq!(
            wal, 0,
            "{service}: the WAL is folded into the database at stop"
        );
    }
}
