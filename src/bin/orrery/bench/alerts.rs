//! `orrery bench alerts`: alert ingest with redaction on, then `/alerts/recurrence` latency
//! with every event stored.

use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use super::load::{measure, Endpoint, LocalDaemon};
use super::{catch_up, connect_provisioned, eps, last_seq, publish_with};
use async_nats::jetstream;
use orrery::bus::streams;
use orrery::db;

/// Figures of one `bench alerts` run.
#[derive(Debug, Serialize)]
pub struct AlertsReport {
    /// Alert events published and projected.
    pub events: u64,
    /// Of those, events whose content holds a secret to redact.
    pub with_secrets: u64,
    /// Publish rate, events/s.
    pub publish_eps: f64,
    /// Projector catch-up from a fresh database, redaction on, events/s.
    pub ingest_eps: f64,
    /// Rows in `alert_events` afterwards (must equal `events`).
    pub rows: u64,
    /// Recurrence groups stored.
    pub groups: u64,
    /// Runs linked to the alerts (results with `data.links`), published and projected.
    pub runs: u64,
    /// Their projection from a fresh RESULTS checkpoint, events/s.
    pub runs_ingest_eps: f64,
    /// Runs that found their group.
    pub runs_linked: u64,
    /// `/alerts/recurrence` latency, all projects and one project.
    pub recurrence: Vec<Endpoint>,
}

const PROVIDERS: [&str; 3] = ["alertmanager", "sentry", "signoz"];

/// What the bridges and repair agents send, reproducible from a seed so that a run can name
/// the provider id of an alert published before it: random-looking UUID v4 envelope ids and
/// result ids, 32-hex provider event ids, 16-hex fingerprints, event times spread over the
/// day before `now_ms`.
#[derive(Debug, Clone, Copy)]
struct Shape {
    seed: u64,
    now_ms: i64,
}

/// SplitMix64: one well-mixed 64-bit value per input.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Shape {
    fn new() -> Self {
        Self {
            seed: fastrand::u64(..),
            now_ms: orrery::window::now_ms(),
        }
    }

    /// 64 random-looking bits for (`kind`, `i`).
    fn bits(&self, kind: u64, i: u64) -> u64 {
        mix(self.seed ^ mix(kind.wrapping_mul(0x100_0000_01b3) ^ mix(i)))
    }

    /// A UUID v4 for (`kind`, `i`).
    fn uuid(&self, kind: u64, i: u64) -> uuid::Uuid {
        let bits = (u128::from(self.bits(kind, i)) << 64) | u128::from(self.bits(kind + 1, i));
        uuid::Builder::from_random_bytes(bits.to_be_bytes()).into_uuid()
    }

    /// A time within the day before `now_ms`, RFC 3339.
    fn time(&self, kind: u64, i: u64, minus_ms: i64) -> String {
        let ago = (self.bits(kind, i) % 86_400_000) as i64;
        orrery::window::format_unix_ms(self.now_ms - ago - minus_ms)
    }

    /// One alert event: a tenth carry a secret, a fifth repeat an earlier provider event id.
    fn alert_event(&self, i: u64) -> (String, Vec<u8>) {
        let provider = PROVIDERS[(i % 3) as usize];
        let project = i % 10;
        let (peid, _) = self.alert_identity(i);
        let fp = self.bits(20, i % 5_000);
        let secret = if i % 10 == 0 {
            format!(" curl -H 'Authorization: Bearer tok{i:08}abcdef' https://api.example/v1")
        } else {
            String::new()
        };
        let body = format!(
            r#"{{"specversion":"1.0","id":"{id}","type":"alert","source":"bench","time":"{time}","data":{{"provider_event_id":"{peid}","stage":"{stage}","alertname":"Alert{a}","severity":"warning","namespace":"ns-{n}","target_resource":"svc-{t}","fingerprint":"{fp:016x}","labels":{{"team":"t{n}","env":"prod"}},"content":"Error rate above 5% for svc-{t} in ns-{n} over the last 10 minutes; see runbook.{secret}","source_url":"https://{provider}.example/issues/{fp:016x}","provider_ts":"{provider_ts}","source_refs":{{"{provider}":["{peid}"]}}}}}}"#,
            id = self.uuid(10, i),
            time = self.time(30, i, 0),
            provider_ts = self.time(30, i, 2_000),
            stage = if i % 7 == 0 { "resolved" } else { "firing" },
            a = i % 40,
            n = i % 13,
            t = i % 97,
        );
        (
            format!("alert.{provider}.proj-{project}"),
            body.into_bytes(),
        )
    }

    /// The `data.provider_event_id` and group of alert event `i`, as [`Self::alert_event`]
    /// makes them.
    fn alert_identity(&self, i: u64) -> (String, String) {
        let peid = if i % 5 == 4 { i - 3 } else { i };
        (
            self.uuid(12, peid).simple().to_string(),
            format!("fp:{:016x}", self.bits(20, i % 5_000)),
        )
    }

    /// Run `j` of `runs` answering the alerts of `events`: two thirds name an alert event,
    /// one third a recurrence key; states, repairs and verification vary.
    fn run_event(&self, j: u64, events: u64) -> (String, Vec<u8>) {
        let i = (j * 7_919) % events;
        let (peid, key) = self.alert_identity(i);
        let links = if j % 3 == 2 {
            format!(r#"{{"recurrence_key":"{key}"}}"#)
        } else {
            format!(
                r#"{{"provider":"{}","provider_event_id":"{peid}","incident_id":"INC-{}"}}"#,
                PROVIDERS[(i % 3) as usize],
                j % 900
            )
        };
        let (state, repair, verified) = RUN_HABITS[((j / 3) % 5) as usize];
        let body = format!(
            r#"{{"id":"{id}","data":{{"result_id":"{result_id}","job_id":"repair","success":{ok},"finished_at":"{finished}","links":{links},"run_state":"{state}","repair":"{repair}","verified":{verified}}}}}"#,
            id = self.uuid(40, j),
            result_id = self.uuid(42, j),
            finished = self.time(44, j, 0),
            ok = state != "failed",
        );
        (format!("result.job.fixer-{}", j % 50), body.into_bytes())
    }
}

const RUN_HABITS: [(&str, &str, bool); 5] = [
    ("succeeded", "auto", true),
    ("failed", "auto", false),
    ("needs_approval", "none", false),
    ("running", "auto", false),
    ("succeeded", "manual", false),
];

/// Alerts published in the background at a steady rate, until stopped.
struct Arriving {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<u64>>,
}

impl Arriving {
    /// Stops publishing; returns how many alerts were published.
    async fn stop(self) -> anyhow::Result<u64> {
        self.stop.cancel();
        self.task.await?
    }
}

/// Publishes alert events after the first `from`, `rate` per second in 10 ms steps.
fn live_alerts(js: &jetstream::Context, shape: Shape, run: &str, from: u64, rate: u64) -> Arriving {
    let stop = tokio_util::sync::CancellationToken::new();
    let (js, run, token) = (js.clone(), run.to_owned(), stop.clone());
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let (mut sent, started) = (0u64, tokio::time::Instant::now());
        while !token.is_cancelled() {
            tick.tick().await;
            let due = rate * started.elapsed().as_millis() as u64 / 1_000;
            let mut acks = Vec::new();
            while sent < due {
                let (subject, body) = shape.alert_event(from + sent);
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("{run}-live-{sent}").as_str());
                acks.push(
                    js.publish_with_headers(subject, headers, body.into())
                        .await?,
                );
                sent += 1;
            }
            for ack in acks {
                ack.await?;
            }
        }
        Ok(sent)
    });
    Arriving { stop, task }
}

/// Runs the alerts benchmark against `nats_url`: `events` alerts, then `runs` linked runs;
/// the last measure is taken while `live_rate` alerts per second arrive.
#[allow(clippy::too_many_arguments)] // each is a flag of `orrery bench alerts`
pub async fn run(
    nats_url: &str,
    events: u64,
    runs: u64,
    live_rate: u64,
    batch_size: usize,
    concurrency: usize,
    requests: usize,
) -> anyhow::Result<AlertsReport> {
    if events == 0 {
        bail!("--events must be at least 1");
    }
    let js = connect_provisioned(nats_url, Duration::from_secs(86_400)).await?;
    let before = last_seq(&js, streams::ALERTS.name).await?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let shape = Shape::new();
    let publish_time = publish_with(&js, events, &run, |i| shape.alert_event(i)).await?;
    let last = before + events;

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.db");
    let db = db::open(&path, 1).await?;
    let ingest_time = catch_up(streams::ALERTS, &js, &db, batch_size, before, last).await?;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM alert_events")
        .fetch_one(&db.writer)
        .await?;
    let groups: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM alert_recurrence")
        .fetch_one(&db.writer)
        .await?;
    let runs_before = last_seq(&js, streams::RESULTS.name).await?;
    publish_with(&js, runs, &format!("{run}-runs"), |j| {
        shape.run_event(j, events)
    })
    .await?;
    let runs_time = catch_up(
        streams::RESULTS,
        &js,
        &db,
        batch_size,
        runs_before,
        runs_before + runs,
    )
    .await?;
    let runs_linked: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM alert_runs WHERE recurrence_key IS NOT NULL")
            .fetch_one(&db.writer)
            .await?;
    db.close().await;

    let daemon = LocalDaemon::start(nats_url, &path, |_| {}).await?;
    let mut recurrence = Vec::new();
    for query in [
        "/api/v1/alerts/recurrence?limit=100",
        "/api/v1/alerts/recurrence?project_id=proj-3&limit=100",
        "/api/v1/alerts/recurrence?project_id=proj-3&provider=sentry&limit=300",
    ] {
        recurrence.push(measure(&daemon.base, query, concurrency, requests).await?);
    }
    // A preview of the work item listed last on a 300-group page: the longest look-up.
    let page: serde_json::Value = reqwest::get(format!(
        "{}/api/v1/alerts/recurrence?project_id=proj-3&limit=300",
        daemon.base
    ))
    .await?
    .json()
    .await?;
    let last_item = page["groups"]
        .as_array()
        .and_then(|g| g.iter().rev().find_map(|g| g["work_item"]["id"].as_str()))
        .map(str::to_owned);
    if let Some(id) = last_item {
        let preview = format!(
            "/api/v1/alerts/recurrence/work-item/preview?work_item_id={id}&project_id=proj-3"
        );
        recurrence.push(measure(&daemon.base, &preview, concurrency, requests).await?);
    }
    // The first page again while alerts keep arriving: every commit makes the pages new.
    let arriving = live_alerts(&js, shape, &run, events, live_rate);
    // Ten times the requests, so that the measure spans many commits.
    let mut busy = measure(
        &daemon.base,
        "/api/v1/alerts/recurrence?limit=100",
        concurrency,
        requests * 10,
    )
    .await?;
    let arrived = arriving.stop().await?;
    busy.path = format!(
        "{} while {arrived} alerts arrived ({live_rate}/s)",
        busy.path
    );
    recurrence.push(busy);
    daemon.stop().await?;

    Ok(AlertsReport {
        events,
        with_secrets: events.div_ceil(10),
        publish_eps: eps(events, publish_time),
        ingest_eps: eps(events, ingest_time),
        rows: rows as u64,
        groups: groups as u64,
        runs,
        runs_ingest_eps: eps(runs, runs_time),
        runs_linked: runs_linked as u64,
        recurrence,
    })
}

impl std::fmt::Display for AlertsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "orrery bench alerts — {} alert events ({} with secrets to redact)",
            self.events, self.with_secrets
        )?;
        writeln!(
            f,
            "  publish (acks pipelined)       {:>10.0} events/s",
            self.publish_eps
        )?;
        writeln!(
            f,
            "  ingest, redaction on           {:>10.0} events/s",
            self.ingest_eps
        )?;
        writeln!(
            f,
            "  stored                         {} events, {} recurrence groups",
            self.rows, self.groups
        )?;
        writeln!(
            f,
            "  linked runs ingest             {:>10.0} events/s ({} runs, {} found their group)",
            self.runs_ingest_eps, self.runs, self.runs_linked
        )?;
        for l in &self.recurrence {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}
