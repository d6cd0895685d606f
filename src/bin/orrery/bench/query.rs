//! `orrery bench query`: a fleet's worth of heartbeats and results loaded through the bus,
//! then the latency of the fleet health, badge and durations endpoints under load, and the
//! memory and database size they cost.

use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use super::load::{measure, Endpoint};
use super::{catch_up, connect_provisioned, eps, publish_with};
use orrery::bus::streams;
use orrery::db;
use orrery::window::{format_unix_ms, now_ms};

/// What `bench query` loads.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QueryLoad {
    /// Distinct agents beating.
    pub agents: u64,
    /// Heartbeats, each with a system sample (a tenth also carry a container sample).
    pub samples: u64,
    /// Execution results, spread over the last seven days.
    pub results: u64,
    /// Concurrent HTTP clients.
    pub concurrency: usize,
    /// Requests per endpoint measured.
    pub requests: usize,
}

/// Figures of one `bench query` run.
#[derive(Debug, Serialize)]
pub struct QueryReport {
    /// What was loaded.
    pub load: QueryLoad,
    /// Heartbeat projection from a fresh database, events/s.
    pub heartbeat_ingest_eps: f64,
    /// Results projection from a fresh database, events/s.
    pub results_ingest_eps: f64,
    /// Endpoint latencies.
    pub endpoints: Vec<Endpoint>,
    /// The daemon's resident memory after the measures, bytes (its own process).
    pub daemon_rss_bytes: u64,
    /// The daemon's peak resident memory, bytes.
    pub daemon_peak_rss_bytes: u64,
    /// The database file and its WAL after the measures, bytes.
    pub database_bytes: u64,
}

const DAY_MS: i64 = 86_400_000;

/// The fleet health endpoint, measured first and last.
const FLEET: &str = "/api/v1/health/fleet";

/// Runs the query benchmark against `nats_url` (a server with empty streams).
pub async fn run(nats_url: &str, load: QueryLoad) -> anyhow::Result<QueryReport> {
    if load.agents == 0 || load.samples == 0 || load.results == 0 {
        bail!("--agents, --samples and --results must be at least 1");
    }
    let js = connect_provisioned(nats_url, Duration::from_secs(8 * 86_400)).await?;
    for s in [streams::HEARTBEATS, streams::RESULTS] {
        let state = js.get_stream(s.name).await?.cached_info().state.clone();
        if state.last_sequence != 0 {
            bail!(
                "stream {} is not empty; run against a fresh nats-server",
                s.name
            );
        }
    }
    let run = uuid::Uuid::new_v4().simple().to_string();
    let now = now_ms();

    // Every agent beats every 10 s; the newest beat of each is seconds old.
    let beats_per_agent = load.samples.div_ceil(load.agents) as i64;
    publish_with(&js, load.samples, &run, |i| {
        let agent = i % load.agents;
        let round = (i / load.agents) as i64;
        let at = now - (beats_per_agent - round) * 10_000;
        let container = if i % 10 == 0 {
            format!(
                r#","containers":[{{"container_id":"c{agent}","workload_id":"w{w}","role":"web","cpu_percent":{cpu}.5,"memory_usage":{mem},"memory_limit":1073741824}}]"#,
                w = agent % 500,
                cpu = i % 97,
                mem = (i % 1000) * 1_048_576,
            )
        } else {
            String::new()
        };
        let body = format!(
            r#"{{"id":"{id}","time":"{t}","data":{{"hostname":"agent-{agent}.corp","version":"1.8.2","labels":{{"site":"s{s}"}},"stats":{{"cpu_percent":{cpu}.0,"memory_usage":{mem},"memory_limit":8589934592}}{container}}}}}"#,
            id = uuid::Uuid::new_v4(),
            t = format_unix_ms(at),
            s = agent % 7,
            cpu = i % 100,
            mem = (i % 8192) * 1_048_576,
        );
        (format!("heartbeat.agent-{agent:05}"), body.into_bytes())
    })
    .await?;

    const KINDS: [&str; 4] = ["traffic", "file", "email", "job"];
    let span = 7 * DAY_MS;
    publish_with(&js, load.results, &run, |i| {
        let finished = now - span + (i as i64 * span) / load.results as i64;
        let duration = (i * 7_919) % 5_000;
        let body = format!(
            r#"{{"id":"{id}","data":{{"result_id":"{result_id}","job_id":"probe-{job}","exit_code":{code},"started_at":"{s}","finished_at":"{f}"}}}}"#,
            id = uuid::Uuid::new_v4(),
            result_id = uuid::Uuid::new_v4(),
            job = i % 200,
            code = u8::from(i % 10 == 0),
            s = format_unix_ms(finished - duration as i64),
            f = format_unix_ms(finished),
        );
        (
            format!("result.{}.agent-{:05}", KINDS[(i % 4) as usize], i % load.agents),
            body.into_bytes(),
        )
    })
    .await?;

    let dir = tempfile::tempdir()?;
    let path = super::fanout::database_in(dir.path());
    let db = db::open(&path, 1).await?;
    let hb_time = catch_up(streams::HEARTBEATS, &js, &db, 4096, 0, load.samples).await?;
    let res_time = catch_up(streams::RESULTS, &js, &db, 4096, 0, load.results).await?;
    // The daemon merges duration blocks in the background as results arrive; bring the
    // loaded database to that steady state before measuring.
    while orrery::projections::results::compact_duration_blocks(&db.writer, 10_000).await? > 0 {}
    db.close().await;

    // The daemon runs as its own process, so that its memory is its own. Loading takes
    // minutes; agents count as active for the hour after their last beat so that the health
    // answer measured is the usual `ok`, not `degraded`.
    let mut daemon = super::fanout::spawn_daemon_in(
        dir,
        nats_url,
        &[
            ("ORRERY_INSECURE_NO_AUTH", "true".to_owned()),
            ("ORRERY_AGENT_STALE_AFTER_SECS", "3600".to_owned()),
        ],
    )?;
    let http = reqwest::Client::new();
    daemon
        .wait_ready_within(&http, Duration::from_secs(600))
        .await?;
    let mut endpoints = Vec::new();
    // Fleet health is measured first and again last: the first measure meets the daemon
    // just after `/ready` (empty page caches, the durations warmer's first read), the last
    // one settled. Back to back at 5M results its p99 was 50, 38, 30 ms.
    for query in [
        FLEET,
        "/api/v1/results/stats?since=1h&success=false&kind=traffic",
        "/api/v1/results/stats?since=24h&success=false",
        "/api/v1/results/durations",
        FLEET,
    ] {
        endpoints.push(measure(&daemon.base, query, load.concurrency, load.requests).await?);
    }
    let pid = daemon.child.id();
    Ok(QueryReport {
        load,
        heartbeat_ingest_eps: eps(load.samples, hb_time),
        results_ingest_eps: eps(load.results, res_time),
        endpoints,
        daemon_rss_bytes: orrery::telemetry::resident_bytes(pid),
        daemon_peak_rss_bytes: orrery::telemetry::peak_resident_bytes(pid),
        database_bytes: daemon.database_bytes(),
    })
}

impl std::fmt::Display for QueryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.load;
        writeln!(
            f,
            "orrery bench query — {} agents, {} heartbeats, {} results over 7 days; {} clients",
            l.agents, l.samples, l.results, l.concurrency
        )?;
        writeln!(
            f,
            "  heartbeat ingest   {:>10.0} events/s",
            self.heartbeat_ingest_eps
        )?;
        writeln!(
            f,
            "  results ingest     {:>10.0} events/s",
            self.results_ingest_eps
        )?;
        for (i, e) in self.endpoints.iter().enumerate() {
            let again = self.endpoints[..i].iter().any(|p| p.path == e.path);
            writeln!(f, "{e}{}", if again { "  (again, settled)" } else { "" })?;
        }
        writeln!(
            f,
            "  daemon RSS {:.0} MiB (peak {:.0} MiB), database {:.0} MiB",
            self.daemon_rss_bytes as f64 / 1_048_576.0,
            self.daemon_peak_rss_bytes as f64 / 1_048_576.0,
            self.database_bytes as f64 / 1_048_576.0
        )
    }
}
