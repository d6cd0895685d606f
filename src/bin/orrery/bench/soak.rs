//! `orrery bench soak`: the daemon, as its own process, under mixed traffic for as long as
//! asked — demo traffic on every stream, live-stream clients that join and leave, and query
//! clients — reporting at every interval its memory, open files, lag and query latencies, so
//! that a leak or a growing queue shows as a trend.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use orrery::config::Secret;
use orrery::token::{mint, Role};

use super::fanout::spawn_daemon_with;
use super::Quantiles;
use crate::demo::{self, DemoOpts};

/// What `bench soak` runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SoakOptions {
    /// How long to run.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Demo events per second, all streams together.
    pub rate: u32,
    /// Live-stream clients, each holding a stream 2–20 s, then reconnecting.
    pub sse_clients: usize,
    /// Query clients, each asking every 50 ms.
    pub query_clients: usize,
    /// Reporting interval.
    #[serde(with = "secs")]
    pub every: Duration,
    /// Every read model's retention, if set (else the daemon's defaults).
    #[serde(serialize_with = "secs::option")]
    pub retention: Option<Duration>,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn option<S: serde::Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

/// The daemon's state at the end of one interval.
#[derive(Debug, Serialize)]
pub struct Interval {
    /// Seconds since the traffic started.
    pub at_secs: u64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// The database file and its WAL, bytes: what the page caches grow towards.
    pub db_bytes: u64,
    /// Of which the WAL, bytes.
    pub wal_bytes: u64,
    /// Rows per table, read from the database file (empty if it could not be read): what
    /// grows, once the retention has passed.
    pub rows: BTreeMap<String, i64>,
    /// Bytes of pages per table and index (SQLite's `dbstat`), and `<free pages>`: where
    /// the file's bytes are when its rows no longer grow.
    pub bytes: BTreeMap<String, i64>,
    /// Messages behind, all projections together (`/ready`).
    pub lag: u64,
    /// Queries answered in the interval.
    pub queries: usize,
    /// Queries that failed or answered other than 200.
    pub query_errors: u64,
    /// Query latency in the interval.
    pub query: Quantiles,
    /// Live events delivered in the interval.
    pub sse_deliveries: u64,
    /// Live streams opened in the interval.
    pub sse_sessions: u64,
    /// Live streams refused or broken in the interval.
    pub sse_errors: u64,
}

/// Figures of one soak.
#[derive(Debug, Serialize)]
pub struct SoakReport {
    /// What ran.
    pub options: SoakOptions,
    /// Demo events published.
    pub published: u64,
    /// One row per interval.
    pub intervals: Vec<Interval>,
    /// Lag once the traffic stopped and the daemon had a moment to drain.
    pub final_lag: u64,
    /// Per query, its latency over the first and over the last interval: which one slows
    /// down as the data grows.
    pub queries: Vec<QueryTrend>,
}

/// One query's latency at the start and at the end of the soak.
#[derive(Debug, Serialize)]
pub struct QueryTrend {
    /// The request path.
    pub path: &'static str,
    /// Over the first interval.
    pub first: Quantiles,
    /// Over the last interval.
    pub last: Quantiles,
}

#[derive(Default)]
struct Counters {
    query_errors: AtomicU64,
    sse_deliveries: AtomicU64,
    sse_sessions: AtomicU64,
    sse_errors: AtomicU64,
}

/// Queries the soak asks, in turn.
const QUERIES: [&str; 8] = [
    "/api/v1/health/fleet",
    "/api/v1/results/stats?since=1h&success=false",
    "/api/v1/results/durations",
    "/api/v1/alerts/recurrence?limit=100",
    "/api/v1/topologies",
    "/api/v1/agents",
    "/api/v1/system/stats/top?by=memory",
    "/api/v1/system/stats/history?window=15m",
];

/// Topologies of the demo traffic, which the live clients follow.
const TOPOLOGIES: [&str; 3] = ["lab-eu", "lab-us", "honeynet-ap"];

/// Runs the soak against the NATS at `nats_url`.
pub async fn run(nats_url: &str, opts: SoakOptions) -> anyhow::Result<SoakReport> {
    if opts.rate == 0 || opts.every.is_zero() || opts.duration < opts.every {
        bail!("--rate must be above 0 and --every at least 1 s and no longer than --duration");
    }
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut env = vec![
        ("ORRERY_JWT_SECRET", secret.clone()),
        (
            "ORRERY_SSE_MAX_STREAMS_PER_USER",
            opts.sse_clients.to_string(),
        ),
        (
            "ORRERY_SSE_MAX_CONNECTIONS",
            (opts.sse_clients + 16).to_string(),
        ),
    ];
    if let Some(r) = opts.retention {
        let secs = r.as_secs().max(1).to_string();
        for name in [
            "ORRERY_RESULTS_RETENTION_SECS",
            "ORRERY_ALERTS_RETENTION_SECS",
            "ORRERY_MUTATIONS_RETENTION_SECS",
            "ORRERY_DEAD_LETTERS_RETENTION_SECS",
            "ORRERY_WORK_ITEMS_RETENTION_SECS",
        ] {
            env.push((name, secs.clone()));
        }
        env.push((
            "ORRERY_SAMPLE_RETENTION_SECS",
            r.as_secs().max(60).to_string(),
        ));
    }
    let mut daemon = spawn_daemon_with(nats_url, &env)?;
    let http = reqwest::Client::new();
    daemon.wait_ready(&http).await?;
    let pid = daemon.child.id();
    let base = daemon.base.clone();
    let token = mint(
        &Secret::new(&secret),
        "soak",
        Role::Viewer,
        opts.duration.as_secs() + 3_600,
    )?;

    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    let provisioning = orrery::bus::streams::Provisioning {
        replicas: 1,
        max_age: Duration::from_secs(86_400),
    };
    let demo_opts = DemoOpts {
        rate: opts.rate,
        duration: Some(opts.duration),
        agents: 50,
    };
    let traffic = tokio::spawn(demo::run(js, provisioning, demo_opts));

    // Live clients follow the demo's topologies: wait until the daemon knows them.
    let known = Instant::now();
    while topologies_known(&http, &base, &token).await < TOPOLOGIES.len() {
        if known.elapsed() > Duration::from_secs(30) {
            bail!("the demo's topologies were not projected within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let stop = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    // (query index, ms) of the current interval.
    let latencies: Arc<Mutex<Vec<(usize, f64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..opts.sse_clients {
        let url = format!(
            "{base}/topologies/{}/events",
            TOPOLOGIES[i % TOPOLOGIES.len()]
        );
        tasks.push(tokio::spawn(live_client(
            http.clone(),
            url,
            token.clone(),
            Arc::clone(&counters),
            stop.clone(),
        )));
    }
    for i in 0..opts.query_clients {
        tasks.push(tokio::spawn(query_client(
            http.clone(),
            base.clone(),
            token.clone(),
            i,
            Arc::clone(&counters),
            Arc::clone(&latencies),
            stop.clone(),
        )));
    }

    let started = Instant::now();
    let mut intervals = Vec::new();
    // Per query: its sorted latencies over the first interval and over the latest one.
    let mut trends: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + opts.every, opts.every);
    while started.elapsed() + opts.every / 2 < opts.duration {
        ticker.tick().await;
        let taken = std::mem::take(&mut *orrery::sync::lock(&latencies));
        let per_query = per_query(&taken);
        if trends.is_empty() {
            trends = per_query.iter().map(|q| (q.clone(), Vec::new())).collect();
        } else {
            for (t, q) in trends.iter_mut().zip(per_query) {
                t.1 = q;
            }
        }
        let mut lat: Vec<f64> = taken.iter().map(|(_, ms)| *ms).collect();
        lat.sort_by(f64::total_cmp);
        let (rows, bytes) = table_sizes(&daemon.database()).await;
        let row = Interval {
            at_secs: started.elapsed().as_secs(),
            rss_bytes: orrery::telemetry::resident_bytes(pid),
            fds: open_fds(pid),
            db_bytes: daemon.database_bytes(),
            wal_bytes: daemon.wal_bytes(),
            rows,
            bytes,
            lag: lag(&http, &base).await,
            queries: lat.len(),
            query_errors: counters.query_errors.swap(0, Ordering::Relaxed),
            query: Quantiles::of_sorted(&lat),
            sse_deliveries: counters.sse_deliveries.swap(0, Ordering::Relaxed),
            sse_sessions: counters.sse_sessions.swap(0, Ordering::Relaxed),
            sse_errors: counters.sse_errors.swap(0, Ordering::Relaxed),
        };
        eprintln!("{row}");
        intervals.push(row);
    }
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let published = traffic.await??;
    // The last events need a moment to be projected.
    let drained = Instant::now();
    let mut final_lag = lag(&http, &base).await;
    while final_lag > 0 && drained.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        final_lag = lag(&http, &base).await;
    }
    let queries = QUERIES
        .iter()
        .zip(&trends)
        .map(|(path, (first, last))| QueryTrend {
            path,
            first: Quantiles::of_sorted(first),
            last: Quantiles::of_sorted(if last.is_empty() { first } else { last }),
        })
        .collect();
    Ok(SoakReport {
        options: opts,
        published,
        intervals,
        final_lag,
        queries,
    })
}

/// Latencies of one interval split per query, each sorted.
fn per_query(samples: &[(usize, f64)]) -> Vec<Vec<f64>> {
    let mut out = vec![Vec::new(); QUERIES.len()];
    for (i, ms) in samples {
        out[*i].push(*ms);
    }
    for v in &mut out {
        v.sort_by(f64::total_cmp);
    }
    out
}

/// How many of the demo's topologies the daemon lists.
async fn topologies_known(http: &reqwest::Client, base: &str, token: &str) -> usize {
    let listed: Option<serde_json::Value> = match http
        .get(format!("{base}/api/v1/topologies"))
        .bearer_auth(token)
        .send()
        .await
    {
        Ok(r) => r.json().await.ok(),
        Err(_) => None,
    };
    listed.map_or(0, |v| {
        v["items"].as_array().map_or(0, |items| {
            items
                .iter()
                .filter(|t| TOPOLOGIES.iter().any(|id| t["id"] == *id))
                .count()
        })
    })
}

/// Open file descriptors of `pid` (0 when /proc cannot tell).
fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Messages behind, all projections together, as `/ready` says (`u64::MAX` if it cannot be
/// read: a soak must not mistake a dead daemon for a current one).
async fn lag(http: &reqwest::Client, base: &str) -> u64 {
    let ready: Option<serde_json::Value> = match http.get(format!("{base}/ready")).send().await {
        Ok(r) => r.json().await.ok(),
        Err(_) => None,
    };
    ready
        .and_then(|v| {
            v["projections"]
                .as_array()
                .map(|ps| ps.iter().filter_map(|p| p["lag"].as_u64()).sum())
        })
        .unwrap_or(u64::MAX)
}

/// Opens a live stream, reads it for 2–20 s, closes it, and again, until `stop`.
async fn live_client(
    http: reqwest::Client,
    url: String,
    token: String,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut rng = fastrand::Rng::new();
    while !stop.is_cancelled() {
        let hold = Duration::from_millis(rng.u64(2_000..20_000));
        let res = tokio::select! {
            _ = stop.cancelled() => return,
            r = http.get(&url).bearer_auth(&token).send() => r,
        };
        match res {
            Ok(r) if r.status().is_success() => {
                counters.sse_sessions.fetch_add(1, Ordering::Relaxed);
                let mut body = r.bytes_stream();
                let until = tokio::time::sleep(hold);
                tokio::pin!(until);
                loop {
                    let chunk = tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = &mut until => break,
                        c = body.next() => c,
                    };
                    match chunk {
                        Some(Ok(bytes)) => {
                            let frames = bytes.windows(4).filter(|w| w == b"\nid:").count()
                                + usize::from(bytes.starts_with(b"id:"));
                            counters
                                .sse_deliveries
                                .fetch_add(frames as u64, Ordering::Relaxed);
                        }
                        _ => {
                            counters.sse_errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
            _ => {
                counters.sse_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..1_000))).await;
    }
}

/// Asks the [`QUERIES`] in turn every 50 ms until `stop`, recording each latency.
async fn query_client(
    http: reqwest::Client,
    base: String,
    token: String,
    first: usize,
    counters: Arc<Counters>,
    latencies: Arc<Mutex<Vec<(usize, f64)>>>,
    stop: CancellationToken,
) {
    let mut next = first;
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let query = next % QUERIES.len();
        let path = QUERIES[query];
        next += 1;
        let started = Instant::now();
        let ok = match http
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
            .await
        {
            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            orrery::sync::lock(&latencies).push((query, started.elapsed().as_secs_f64() * 1e3));
        } else {
            counters.query_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Rows per table, and bytes of pages per table and index (`dbstat`) with the free pages
/// under `<free pages>`, of the database at `path`, read-only beside the serving daemon;
/// either map is empty if it cannot be read (the report goes on without it).
async fn table_sizes(path: &std::path::Path) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true);
    let Ok(mut conn) = sqlx::SqliteConnection::connect_with(&options).await else {
        return Default::default();
    };
    let rows = table_rows(&mut conn).await.unwrap_or_default();
    let bytes = btree_bytes(&mut conn).await.unwrap_or_default();
    let _ = conn.close().await;
    (rows, bytes)
}

async fn table_rows(conn: &mut sqlx::SqliteConnection) -> sqlx::Result<BTreeMap<String, i64>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut rows = BTreeMap::new();
    for table in tables {
        // Names come from the schema, quoted.
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM \"{}\"",
            table.replace('"', "\"\"")
        ))
        .fetch_one(&mut *conn)
        .await?;
        rows.insert(table, n);
    }
    Ok(rows)
}

async fn btree_bytes(conn: &mut sqlx::SqliteConnection) -> sqlx::Result<BTreeMap<String, i64>> {
    let mut bytes: BTreeMap<String, i64> =
        sqlx::query_as("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
    let free: i64 = sqlx::query_scalar(
        "SELECT freelist_count * page_size FROM pragma_freelist_count, pragma_page_size",
    )
    .fetch_one(&mut *conn)
    .await?;
    bytes.insert("<free pages>".to_owned(), free);
    Ok(bytes)
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "  {:>6} s  rss {:>7.1} MiB  db {:>7.1} MiB (wal {:>6.1})  fds {:>4}  lag {:>6}  queries {:>6} (errors {:>3}) p50 {:>6.2} ms p99 {:>7.2} ms  live: {:>4} opened, {:>7} delivered, {:>3} errors",
            self.at_secs,
            self.rss_bytes as f64 / 1_048_576.0,
            self.db_bytes as f64 / 1_048_576.0,
            self.wal_bytes as f64 / 1_048_576.0,
            self.fds,
            self.lag,
            self.queries,
            self.query_errors,
            self.query.p50_ms,
            self.query.p99_ms,
            self.sse_sessions,
            self.sse_deliveries,
            self.sse_errors,
        )
    }
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "orrery bench soak — {:.0} s, {} events/s of demo traffic, {} live clients joining and leaving, {} query clients",
            o.duration.as_secs_f64(),
            o.rate,
            o.sse_clients,
            o.query_clients
        )?;
        if let Some(r) = o.retention {
            writeln!(
                f,
                "  every read model's retention: {:.0} s (samples: at least 60 s)",
                r.as_secs_f64()
            )?;
        }
        for row in &self.intervals {
            writeln!(f, "{row}")?;
        }
        if let (Some(first), Some(last)) = (self.intervals.first(), self.intervals.last()) {
            writeln!(
                f,
                "  first → last interval: rss {:.1} → {:.1} MiB, db {:.1} → {:.1} MiB, fds {} → {}",
                first.rss_bytes as f64 / 1_048_576.0,
                last.rss_bytes as f64 / 1_048_576.0,
                first.db_bytes as f64 / 1_048_576.0,
                last.db_bytes as f64 / 1_048_576.0,
                first.fds,
                last.fds
            )?;
        }
        // From halfway: with a retention, by then what levels off has.
        if let (Some(half), Some(last)) = (
            self.intervals.get(self.intervals.len() / 2),
            self.intervals.last(),
        ) {
            writeln!(
                f,
                "  rows per table that grew from {} s to {} s:",
                half.at_secs, last.at_secs
            )?;
            for (table, &n) in &last.rows {
                let before = half.rows.get(table).copied().unwrap_or(0);
                if n > before {
                    writeln!(f, "    {table:<32} {before:>9} → {n:>9}")?;
                }
            }
            writeln!(
                f,
                "  tables and indexes that grew by more than 64 KiB from {} s to {} s:",
                half.at_secs, last.at_secs
            )?;
            for (name, &n) in &last.bytes {
                let before = half.bytes.get(name).copied().unwrap_or(0);
                if n > before + 65_536 {
                    writeln!(
                        f,
                        "    {name:<40} {:>8.2} → {:>8.2} MiB",
                        before as f64 / 1_048_576.0,
                        n as f64 / 1_048_576.0
                    )?;
                }
            }
        }
        writeln!(f, "  per query, first → last interval:")?;
        for q in &self.queries {
            writeln!(
                f,
                "    {:<44} p50 {:>6.2} → {:>6.2} ms  p99 {:>6.2} → {:>6.2} ms",
                q.path, q.first.p50_ms, q.last.p50_ms, q.first.p99_ms, q.last.p99_ms
            )?;
        }
        write!(
            f,
            "  published {} events; lag after the traffic stopped: {}",
            self.published, self.final_lag
        )
    }
}
