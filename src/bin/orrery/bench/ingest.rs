//! `orrery bench ingest`: publishes N result events, then times (1) the raw ordered-consumer
//! ceiling — the same consumption with no decoding and no SQLite — and (2) the projector's
//! catch-up from a fresh database to lag 0, and prints both with their ratio.
//!
//! The events are what agents send ([`Shape::Realistic`]: random UUID v4 ids, seven jobs,
//! 300 agents, finish times spread at random over a window), or the labelled best case
//! ([`Shape::Sequential`]: ids in key order and one timestamp), which flatters the B-trees.

use std::time::{Duration, Instant};

use anyhow::bail;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde::Serialize;

use super::{catch_up, connect_provisioned, eps, last_seq, publish_with};
use orrery::bus::streams;
use orrery::db;

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux configuration that matters here.
    Some((utime + stime) / 100.0)
}

/// CPU cost of one phase, in microseconds per event.
#[derive(Debug, Serialize, Default, Clone, Copy)]
pub struct CpuCost {
    /// This process (decode, SQLite, client).
    pub orrery_us: f64,
    /// The private nats-server, when the bench started one.
    pub nats_server_us: Option<f64>,
}

/// Measures CPU used by this process and, optionally, the nats-server across a phase.
struct CpuMeter {
    nats_pid: Option<u32>,
    start_self: Option<f64>,
    start_nats: Option<f64>,
}

impl CpuMeter {
    fn start(nats_pid: Option<u32>) -> Self {
        Self {
            nats_pid,
            start_self: cpu_seconds(None),
            start_nats: nats_pid.and_then(|p| cpu_seconds(Some(p))),
        }
    }

    fn per_event(&self, events: u64) -> CpuCost {
        let per =
            |start: Option<f64>, now: Option<f64>| Some((now? - start?) * 1e6 / events as f64);
        CpuCost {
            orrery_us: per(self.start_self, cpu_seconds(None)).unwrap_or(f64::NAN),
            nats_server_us: self
                .nats_pid
                .and_then(|p| per(self.start_nats, cpu_seconds(Some(p)))),
        }
    }
}

/// What the published results look like.
#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// What agents send: UUID v4 `id` and `result_id`, 7 jobs, 300 agents, one in ten
    /// failing, finished at random times over the last `spread_secs`, 0.2–30 s long.
    Realistic {
        /// The window finish times are spread over.
        spread_secs: u64,
    },
    /// The best case, labelled as such: `bench-<i>` ids in key order, one timestamp.
    Sequential,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Realistic { spread_secs } => write!(
                f,
                "realistic: UUID ids, finish times spread over {:.1} h",
                *spread_secs as f64 / 3600.0
            ),
            Self::Sequential => f.write_str("best case: sequential ids, one timestamp"),
        }
    }
}

/// Figures of one `bench ingest` run.
#[derive(Debug, Serialize)]
pub struct IngestReport {
    /// What the events looked like.
    pub shape: Shape,
    /// Events published and projected.
    pub events: u64,
    /// Publish rate with acks pipelined, events/s.
    pub publish_eps: f64,
    /// Ordered consumer alone, events/s.
    pub raw_consumer_eps: f64,
    /// Projector from a fresh database to lag 0, events/s.
    pub catchup_eps: f64,
    /// `catchup_eps / raw_consumer_eps`.
    pub ratio: f64,
    /// Projector batch size used.
    pub batch_size: usize,
    /// Rows found in `execution_results` afterwards (must equal `events`).
    pub rows: u64,
    /// CPU per event while consuming raw.
    pub raw_cpu: CpuCost,
    /// CPU per event while catching up.
    pub catchup_cpu: CpuCost,
    /// The daemon's own catch-up, black box (only with a private nats-server).
    pub daemon: Option<DaemonCatchUp>,
}

/// `orrery serve` started on a fresh database with the events already in the stream, timed
/// from its start until `/ready` reports every lag 0: start-up, every read model and the
/// background tasks included.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct DaemonCatchUp {
    /// From starting the process to lag 0, seconds.
    pub seconds: f64,
    /// Events in the stream per second of that.
    pub eps: f64,
    /// The daemon's peak resident memory (`VmHWM`), MiB.
    pub peak_rss_mib: Option<f64>,
    /// Its database file and WAL afterwards, MiB.
    pub database_mib: f64,
    /// `/ready` polls once it first answered, every 50 ms until lag 0.
    pub ready_polls: u64,
    /// Of them, those that got no answer within 5 s.
    pub ready_unanswered: u64,
    /// The slowest answer, ms.
    pub ready_slowest_ms: f64,
}

/// Times a daemon's catch-up over the `events` the stream holds.
async fn daemon_catch_up(
    nats_url: &str,
    events: u64,
    batch_size: usize,
) -> anyhow::Result<DaemonCatchUp> {
    let started = Instant::now();
    let mut daemon = super::fanout::spawn_daemon_with(
        nats_url,
        &[
            ("ORRERY_READY_MAX_LAG", "0".to_owned()),
            ("ORRERY_BATCH_SIZE", batch_size.to_string()),
            ("ORRERY_INSECURE_NO_AUTH", "true".to_owned()),
            // Its warnings (no auth, the purged stream's gap) are expected here.
            ("RUST_LOG", "error".to_owned()),
        ],
    )?;
    let http = reqwest::Client::new();
    // Bounded: a daemon slower than 2,000 events/s is a failure to report, not to wait out.
    let limit = Duration::from_secs(60 + events / 2_000);
    // Polled as a health probe would, to show it answers all along the catch-up.
    let polls = daemon.wait_ready_within(&http, limit).await?;
    let seconds = started.elapsed().as_secs_f64();
    const MIB: f64 = 1_048_576.0;
    let peak = orrery::telemetry::peak_resident_bytes(daemon.child.id());
    Ok(DaemonCatchUp {
        seconds,
        eps: events as f64 / seconds,
        peak_rss_mib: (peak > 0).then(|| peak as f64 / MIB),
        database_mib: daemon.database_bytes() as f64 / MIB,
        ready_polls: polls.asked,
        ready_unanswered: polls.unanswered,
        ready_slowest_ms: polls.slowest.as_secs_f64() * 1e3,
    })
}

/// The jobs of the realistic shape.
const JOBS: [&str; 7] = [
    "probe-http",
    "probe-dns",
    "scan-web",
    "scan-ports",
    "mail-thread",
    "file-drop",
    "traffic-replay",
];

/// One realistic result: subject and body.
pub(super) fn realistic_event(
    rng: &mut fastrand::Rng,
    now_ms: i64,
    spread_ms: i64,
) -> (String, Vec<u8>) {
    const KINDS: [&str; 4] = ["traffic", "file", "email", "job"];
    let finished = now_ms - rng.i64(0..spread_ms.max(1));
    let took = rng.i64(200..30_000);
    let agent = rng.u32(0..300);
    let body = format!(
        r#"{{"specversion":"1.0","id":"{id}","type":"result","source":"agent/agent-{agent:04}","time":"{f}","data":{{"result_id":"{rid}","job_id":"{job}","exit_code":{code},"started_at":"{s}","finished_at":"{f}"}}}}"#,
        id = uuid::Uuid::new_v4(),
        rid = uuid::Uuid::new_v4(),
        job = JOBS[rng.usize(0..JOBS.len())],
        code = u8::from(rng.u8(0..10) == 0),
        s = orrery::window::format_unix_ms(finished - took),
        f = orrery::window::format_unix_ms(finished),
    );
    (
        format!("result.{}.agent-{agent:04}", KINDS[rng.usize(0..4)]),
        body.into_bytes(),
    )
}

/// One result event body of the sequential best case.
fn result_event(i: u64) -> Vec<u8> {
    let ok = i % 10 != 0;
    format!(
        r#"{{"specversion":"1.0","id":"bench-{i}","type":"result","source":"agent/bench","time":"2026-11-22T10:00:03Z","data":{{"result_id":"bench-r-{i}","job_id":"probe-{job}","exit_code":{code},"started_at":"2026-11-22T10:00:01.250Z","finished_at":"2026-11-22T10:00:03.000Z"}}}}"#,
        job = i % 50,
        code = if ok { 0 } else { 1 },
    )
    .into_bytes()
}

/// Publishes `events` results of `shape` into RESULTS with up to 4096 acks in flight.
async fn publish(
    js: &jetstream::Context,
    events: u64,
    run: &str,
    shape: Shape,
) -> anyhow::Result<Duration> {
    const KINDS: [&str; 4] = ["traffic", "file", "email", "job"];
    match shape {
        Shape::Sequential => {
            publish_with(js, events, run, |i| {
                (
                    format!("result.{}.agent-{:04}", KINDS[(i % 4) as usize], i % 1000),
                    result_event(i),
                )
            })
            .await
        }
        Shape::Realistic { spread_secs } => {
            // Seeded: two runs publish the same times and jobs (the ids are random).
            let mut rng = fastrand::Rng::with_seed(42);
            let now = orrery::window::now_ms();
            let spread = i64::try_from(spread_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
            publish_with(js, events, run, |_| realistic_event(&mut rng, now, spread)).await
        }
    }
}

async fn raw_consume(js: &jetstream::Context, from: u64, to: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let stream = js.get_stream_no_info(streams::RESULTS.name).await?;
    let mut messages = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    while let Some(m) = messages.next().await {
        let m = m?;
        if m.info().map_err(|e| anyhow::anyhow!(e))?.stream_sequence >= to {
            break;
        }
    }
    Ok(started.elapsed())
}

/// Runs the ingest benchmark against `nats_url` (RESULTS is created if missing).
pub async fn run(
    nats_url: &str,
    nats_pid: Option<u32>,
    events: u64,
    batch_size: usize,
    shape: Shape,
) -> anyhow::Result<IngestReport> {
    if events == 0 {
        bail!("--events must be at least 1");
    }
    let js = connect_provisioned(nats_url, Duration::from_secs(86_400)).await?;
    if nats_pid.is_some() {
        // A private server: the stream holds only this shape's events, so that a daemon
        // started on it catches up exactly these. (Another's bus is never purged.)
        js.get_stream(streams::RESULTS.name).await?.purge().await?;
    }
    let before = last_seq(&js, streams::RESULTS.name).await?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let publish_time = publish(&js, events, &run, shape).await?;
    let last = last_seq(&js, streams::RESULTS.name).await?;
    if last - before != events {
        bail!(
            "expected {events} new messages in RESULTS, found {}",
            last - before
        );
    }

    let meter = CpuMeter::start(nats_pid);
    let raw_time = raw_consume(&js, before + 1, last).await?;
    let raw_cpu = meter.per_event(events);

    let dir = tempfile::tempdir()?;
    let db = db::open(&dir.path().join("bench.db"), 1).await?;
    let meter = CpuMeter::start(nats_pid);
    let catchup_time = catch_up(streams::RESULTS, &js, &db, batch_size, before, last).await?;
    let catchup_cpu = meter.per_event(events);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM execution_results")
        .fetch_one(&db.writer)
        .await?;
    db.close().await;
    let daemon = match nats_pid {
        Some(_) => Some(daemon_catch_up(nats_url, events, batch_size).await?),
        None => None,
    };

    let raw = eps(events, raw_time);
    let catchup = eps(events, catchup_time);
    Ok(IngestReport {
        shape,
        events,
        publish_eps: eps(events, publish_time),
        raw_consumer_eps: raw,
        catchup_eps: catchup,
        ratio: catchup / raw,
        batch_size,
        rows: rows as u64,
        raw_cpu,
        catchup_cpu,
        daemon,
    })
}

impl std::fmt::Display for IngestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "orrery bench ingest — {} result events ({}), batch size {}",
            self.events, self.shape, self.batch_size
        )?;
        writeln!(f, "  {:<34} {:>12}", "measure", "events/s")?;
        writeln!(
            f,
            "  {:<34} {:>12.0}",
            "publish (acks pipelined)", self.publish_eps
        )?;
        writeln!(
            f,
            "  {:<34} {:>12.0}",
            "raw ordered consumer (ceiling)", self.raw_consumer_eps
        )?;
        writeln!(
            f,
            "  {:<34} {:>12.0}",
            "projector catch-up to lag 0", self.catchup_eps
        )?;
        writeln!(
            f,
            "  {:<34} {:>11.0}%",
            "catch-up / ceiling",
            self.ratio * 100.0
        )?;
        let cpu = |c: &CpuCost| match c.nats_server_us {
            Some(n) => format!("{:.2} µs orrery + {n:.2} µs nats-server", c.orrery_us),
            None => format!("{:.2} µs orrery", c.orrery_us),
        };
        writeln!(f, "  CPU per event, raw consumer: {}", cpu(&self.raw_cpu))?;
        writeln!(
            f,
            "  CPU per event, catch-up:     {}",
            cpu(&self.catchup_cpu)
        )?;
        if let Some(d) = &self.daemon {
            writeln!(
                f,
                "  {:<34} {:>12.0}   ({:.1} s from start to lag 0)",
                "daemon start to lag 0 (black box)", d.eps, d.seconds
            )?;
            let rss = d
                .peak_rss_mib
                .map_or_else(|| "unknown".to_owned(), |m| format!("{m:.0} MiB"));
            writeln!(
                f,
                "  daemon peak RSS {rss}, database {:.0} MiB",
                d.database_mib
            )?;
            writeln!(
                f,
                "  /ready while catching up: {} polls, {} unanswered, slowest {:.0} ms",
                d.ready_polls, d.ready_unanswered, d.ready_slowest_ms
            )?;
        }
        write!(f, "  rows projected: {}", self.rows)
    }
}
