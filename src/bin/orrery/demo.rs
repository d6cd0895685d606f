//! `orrery demo`: realistic, continuous traffic on the configured bus, so that a fresh
//! `make run` has something to show. Every event follows the README's event contract (the
//! test suite checks that a demo run leaves no dead letter):
//!
//! - agents heartbeat every 10 s with system and per-container stats;
//! - results of several kinds with job ids, durations and a few percent of failures;
//! - topology mutations moving through enqueued → applying → applied (some failing);
//! - alerts from Alertmanager, Sentry and SigNoz that recur, resolve, send provider
//!   heartbeats, and now and then carry a secret for redaction to catch;
//! - runs answering those alerts (repairs that succeed, fail, wait for approval…), linked
//!   by recurrence key, so that work items show every classification;
//! - deploys of three workloads, pinned references, one failing now and then.
//!
//! Bounded by `--rate` (events/s) and `--duration`; Ctrl-C stops it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use async_nats::HeaderMap;
use serde_json::{json, Value};

use orrery::bus::streams::{self, Provisioning};
use orrery::window::{format_unix_ms, now_ms};

/// What to publish and for how long.
pub struct DemoOpts {
    /// Events per second, all kinds together.
    pub rate: u32,
    /// Stop after this long; `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    /// Agents that heartbeat and report results.
    pub agents: u32,
}

const WORKLOADS: [&str; 3] = ["shop", "api", "worker"];
const TOPOLOGIES: [(&str, &str); 3] = [
    ("lab-eu", "EU lab"),
    ("lab-us", "US lab"),
    ("honeynet-ap", "AP honeynet"),
];
const OPS: [&str; 4] = ["add_decky", "remove_decky", "rotate_keys", "add_service"];
/// Alerts that recur: (provider, project, alertname, severity, namespace, resource).
const ALERTS: [(&str, &str, &str, &str, &str, &str); 6] = [
    (
        "alertmanager",
        "shop",
        "HighLatency",
        "warning",
        "shop-prod",
        "checkout-api",
    ),
    (
        "alertmanager",
        "shop",
        "PodCrashLooping",
        "critical",
        "shop-prod",
        "cart-worker",
    ),
    (
        "alertmanager",
        "api",
        "DiskPressure",
        "warning",
        "api-prod",
        "node-3",
    ),
    (
        "sentry",
        "shop",
        "UnhandledException",
        "error",
        "shop-prod",
        "checkout-api",
    ),
    (
        "sentry",
        "api",
        "TimeoutError",
        "error",
        "api-prod",
        "gateway",
    ),
    (
        "signoz",
        "worker",
        "QueueBacklog",
        "warning",
        "worker-prod",
        "jobs-queue",
    ),
];
/// Alert text; some hold secrets that the projection must redact before storing.
const CONTENTS: [&str; 6] = [
    "p99 latency 2.4s over 5m (threshold 1s)",
    "Back-off restarting failed container cart-worker",
    "ValueError: bad cart id\n  File checkout.py line 88",
    "upstream timed out; retried with Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZW1vIn0.c2lnbmF0dXJlLWRlbW8",
    "connect failed: postgres://app:hunter2@db.internal:5432/shop",
    "export failed: api_key=sk_live_demo0000000000000000000000",
];

/// A mutation on its way through its states.
struct Mutation {
    topology: &'static str,
    id: String,
    op: &'static str,
    next: usize,
    fails: bool,
}

/// Publishes with acks pipelined, at most `MAX_INFLIGHT` outstanding.
struct Publisher {
    js: jetstream::Context,
    inflight: VecDeque<jetstream::context::PublishAckFuture>,
    sent: u64,
}

const MAX_INFLIGHT: usize = 256;

impl Publisher {
    async fn send(&mut self, subject: String, data: Value) -> anyhow::Result<()> {
        let id = uuid::Uuid::new_v4().to_string();
        let body = json!({"id": id, "time": format_unix_ms(now_ms()), "source": "orrery-demo",
                          "data": data});
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, serde_json::to_vec(&body)?.into())
            .await
            .with_context(|| format!("publishing {subject}"))?;
        self.inflight.push_back(ack);
        self.sent += 1;
        if self.inflight.len() >= MAX_INFLIGHT {
            self.settle_one().await?;
        }
        Ok(())
    }

    async fn settle_one(&mut self) -> anyhow::Result<()> {
        if let Some(ack) = self.inflight.pop_front() {
            ack.await
                .context("the bus did not acknowledge a demo event")?;
        }
        Ok(())
    }

    async fn settle(&mut self) -> anyhow::Result<()> {
        while !self.inflight.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }
}

/// The demo's state: what it has begun and must carry on.
struct Demo {
    rng: fastrand::Rng,
    agents: u32,
    mutations: Vec<Mutation>,
    next_mutation: u64,
    next_alert: u64,
    beat_at: Vec<Instant>,
}

impl Demo {
    fn agent(&mut self) -> String {
        format!("agent-{:04}", self.rng.u32(0..self.agents))
    }

    /// An RFC 3339 time `ms_ago` milliseconds ago.
    fn ago(ms_ago: i64) -> String {
        format_unix_ms(now_ms() - ms_ago)
    }

    fn heartbeat(&mut self, agent: u32) -> (String, Value) {
        let r = &mut self.rng;
        let containers: Vec<Value> = WORKLOADS
            .iter()
            .enumerate()
            .filter(|(i, _)| (agent as usize + i) % 2 == 0)
            .map(|(i, w)| {
                json!({"container_id": format!("c{agent:04}{i}"), "workload_id": w,
                       "role": if i == 0 { "web" } else { "job" },
                       "cpu_percent": (r.f64() * 40.0 * 10.0).round() / 10.0,
                       "memory_usage": r.u64(64..512) << 20, "memory_limit": 1u64 << 30})
            })
            .collect();
        let site = ["osaka", "paris", "ohio"][agent as usize % 3];
        (
            format!("heartbeat.agent-{agent:04}"),
            json!({"hostname": format!("pc-{agent:04}.corp"), "version": "1.8.2",
                   "labels": {"site": site},
                   "stats": {"cpu_percent": (r.f64() * 90.0 * 10.0).round() / 10.0,
                             "memory_usage": r.u64(1..7) << 30, "memory_limit": 8u64 << 30},
                   "containers": containers}),
        )
    }

    fn result(&mut self) -> (String, Value) {
        let agent = self.agent();
        let r = &mut self.rng;
        let (kind, job, fail_pct, ms) = match r.u8(0..10) {
            0..=4 => (
                "traffic",
                ["probe-http", "probe-dns"][r.usize(0..2)],
                3,
                200..2_500,
            ),
            5..=6 => ("email", "mail-thread", 8, 800..6_000),
            7..=8 => ("scan", "scan-ports", 2, 5_000..40_000),
            _ => ("file", "file-drop", 5, 100..900),
        };
        let took = r.i64(ms);
        let failed = r.u8(0..100) < fail_pct;
        let mut data = json!({"result_id": uuid::Uuid::new_v4(),
                              "job_id": job, "exit_code": if failed { 1 } else { 0 },
                              "started_at": Self::ago(took), "finished_at": Self::ago(0)});
        if failed {
            data["error"] = json!("timed out waiting for the remote side");
        }
        (format!("result.{kind}.{agent}"), data)
    }

    /// A run answering one of the recurring alerts, linked by its recurrence key. Each alert
    /// has its own habit, so that the work items show every classification.
    fn repair(&mut self) -> (String, Value) {
        let agent = self.agent();
        let r = &mut self.rng;
        let i = r.usize(0..ALERTS.len());
        let (provider, _, name, _, ns, resource) = ALERTS[i];
        let fingerprint = (provider == "sentry").then(|| format!("sentry:{resource}:{name}"));
        let key = orrery::projections::alerts::recurrence_key(
            provider,
            fingerprint.as_deref(),
            Some(name),
            Some(ns),
            Some(resource),
        );
        let (state, repair, verified) = match i % 5 {
            0 => ("succeeded", "auto", true),
            1 if r.bool() => ("succeeded", "auto", true),
            1 => ("failed", "auto", false),
            2 => ("needs_approval", "none", false),
            3 => ("succeeded", "none", false),
            _ => ("running", "auto", false),
        };
        let took = r.i64(2_000..30_000);
        let data = json!({"result_id": uuid::Uuid::new_v4(),
                          "job_id": "alert-repair", "success": state != "failed",
                          "started_at": Self::ago(took), "finished_at": Self::ago(0),
                          "links": {"recurrence_key": key, "incident_id": format!("INC-{}", 100 + i)},
                          "run_state": state, "repair": repair, "verified": verified});
        (format!("result.job.{agent}"), data)
    }

    fn deploy(&mut self) -> (String, Value) {
        let agent = self.agent();
        let r = &mut self.rng;
        let workload = WORKLOADS[r.usize(0..WORKLOADS.len())];
        let digest: String = (0..64).map(|_| r.digit(16)).collect();
        let failed = r.u8(0..100) < 15;
        let mut data = json!({"result_id": uuid::Uuid::new_v4(),
                              "workload_id": workload,
                              "reference": format!("registry.example/{workload}@sha256:{digest}"),
                              "reason": "deploy", "exit_code": if failed { 1 } else { 0 },
                              "finished_at": Self::ago(0)});
        if failed {
            data["error"] = json!("pull access denied: registry.example (auth demo:hunter2)");
        }
        (format!("result.deploy.{agent}"), data)
    }

    fn alert(&mut self) -> (String, Value) {
        let r = &mut self.rng;
        self.next_alert += 1;
        let (provider, project, name, severity, ns, resource) = ALERTS[r.usize(0..ALERTS.len())];
        let stage = if r.u8(0..4) == 0 {
            "resolved"
        } else {
            "firing"
        };
        let content = CONTENTS[r.usize(0..CONTENTS.len())];
        let event_id = format!("{provider}-{}-{}", now_ms(), self.next_alert);
        let mut data = json!({"provider_event_id": event_id, "stage": stage, "alertname": name,
                              "severity": severity, "namespace": ns, "target_resource": resource,
                              "content": content, "provider_ts": Self::ago(1_500),
                              "labels": {"team": "platform", "env": "prod"},
                              "source_url": format!("https://{provider}.example/{project}/{}",
                                                    self.next_alert)});
        if provider == "sentry" {
            data["fingerprint"] = json!(format!("sentry:{resource}:{name}"));
            data["source_refs"] = json!({"sentry": [format!("{}", 8800 + r.u32(0..40))]});
        }
        (format!("alert.{provider}.{project}"), data)
    }

    fn provider_heartbeat(&mut self, provider: &str) -> (String, Value) {
        (
            format!("alert.{provider}.shop"),
            json!({"provider_event_id": format!("heartbeat-{provider}-{}", now_ms()),
                   "stage": "heartbeat", "alertname": "SourceProviderHeartbeat",
                   "severity": "info", "labels": {"synthetic": "true"}}),
        )
    }

    /// The next step of a mutation in flight, or a new one.
    fn mutation(&mut self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        if self.mutations.len() < 4 || self.rng.u8(0..3) == 0 {
            self.next_mutation += 1;
            let (tid, _) = TOPOLOGIES[self.rng.usize(0..TOPOLOGIES.len())];
            let op = OPS[self.rng.usize(0..OPS.len())];
            let id = format!("mut-{}-{}", now_ms() / 1000, self.next_mutation);
            out.push((
                format!("topology.{tid}.mutation.enqueued"),
                json!({"mutation_id": id, "op": op, "actor": "demo",
                       "spec": {"decky": format!("web-{}", self.rng.u8(1..20)),
                                "services": ["http", "ssh"]}}),
            ));
            let fails = self.rng.u8(0..100) < 15;
            self.mutations.push(Mutation {
                topology: tid,
                id,
                op,
                next: 1,
                fails,
            });
            return out;
        }
        let i = self.rng.usize(0..self.mutations.len());
        let m = &mut self.mutations[i];
        let state = match (m.next, m.fails) {
            (1, _) => "applying",
            (_, true) => "failed",
            (_, false) => "applied",
        };
        let mut data = json!({"mutation_id": m.id, "op": m.op});
        if state == "failed" {
            data["error"] = json!("RuntimeError: bridge br-lab not found");
        }
        out.push((format!("topology.{}.mutation.{state}", m.topology), data));
        m.next += 1;
        if m.next > 2 {
            self.mutations.swap_remove(i);
        }
        out
    }
}

/// Runs the demo until `--duration` passes or Ctrl-C; returns events published.
pub async fn run(
    js: jetstream::Context,
    provisioning: Provisioning,
    opts: DemoOpts,
) -> anyhow::Result<u64> {
    // The demo may start before the daemon: create the streams as the daemon would.
    streams::provision(&js, provisioning)
        .await
        .map_err(|e| anyhow::anyhow!("provisioning streams: {e}"))?;
    let mut publisher = Publisher {
        js,
        inflight: VecDeque::new(),
        sent: 0,
    };
    let started = Instant::now();
    let mut demo = Demo {
        rng: fastrand::Rng::new(),
        agents: opts.agents,
        mutations: Vec::new(),
        next_mutation: 0,
        next_alert: 0,
        // Every agent shows up within the first 2 s, then beats every 10 s.
        beat_at: (0..opts.agents)
            .map(|a| started + Duration::from_millis(u64::from(a) * 2_000 / u64::from(opts.agents)))
            .collect(),
    };
    // Every topology has a status before its first mutation.
    for (tid, name) in TOPOLOGIES {
        publisher
            .send(
                format!("topology.{tid}.status"),
                json!({"status": "active", "name": name}),
            )
            .await?;
    }
    for provider in ["alertmanager", "sentry", "signoz"] {
        let (subject, data) = demo.provider_heartbeat(provider);
        publisher.send(subject, data).await?;
    }
    let period = Duration::from_secs_f64(1.0 / f64::from(opts.rate));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_provider_beat = Instant::now();
    let mut last_report = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = ticker.tick() => {}
        }
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let now = Instant::now();
        // Heartbeats are due on their own clock; the rest share the rate.
        if let Some(agent) = demo.beat_at.iter().position(|t| *t <= now) {
            demo.beat_at[agent] = now + Duration::from_secs(10);
            let (subject, data) = demo.heartbeat(agent as u32);
            publisher.send(subject, data).await?;
            continue;
        }
        if last_provider_beat.elapsed() >= Duration::from_secs(60) {
            last_provider_beat = now;
            for provider in ["alertmanager", "sentry", "signoz"] {
                let (subject, data) = demo.provider_heartbeat(provider);
                publisher.send(subject, data).await?;
            }
        }
        let events = match demo.rng.u8(0..100) {
            0..=69 => vec![demo.result()],
            70..=84 => demo.mutation(),
            85..=93 => vec![demo.alert()],
            94..=96 => vec![demo.repair()],
            _ => vec![demo.deploy()],
        };
        for (subject, data) in events {
            publisher.send(subject, data).await?;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = now;
            tracing::info!(events = publisher.sent, "demo traffic published");
        }
    }
    publisher.settle().await?;
    Ok(publisher.sent)
}
