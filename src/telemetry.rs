//! Prometheus telemetry in the OpenMetrics text format, by `prometheus-client`.
//!
//! The hot path does not change: projection counters stay plain atomics (a collector reads
//! them at scrape time), batch histograms are observed once per batch, live-stream counters
//! are one relaxed add per frame. Facts that need the bus or the database (lag, gaps) are
//! gathered by the `/metrics` handler and encoded with the rest.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::projector::Progress;

/// Labels of an HTTP request: the route's template (never the raw path), method, status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// e.g. `/api/v1/topologies/{tid}`; `unmatched` for a 404 of no route.
    pub route: String,
    /// `GET`, `POST`, …
    pub method: String,
    /// `2xx` … `5xx`.
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: &'static str,
}

/// The daemon's metrics registry.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    http: Family<HttpLabels, Histogram>,
}

/// What the handler learned for this scrape.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Per stream: messages left to project (`None`: the stream could not be read).
    pub lag: Vec<(&'static str, Option<u64>)>,
    /// Per stream: messages the stream no longer held when the projection reached them.
    pub missing: Vec<(&'static str, u64)>,
    /// Connected to NATS now.
    pub bus_connected: bool,
    /// Connections (re)established since start, the first one included.
    pub bus_connects: u64,
    /// Permission violations NATS reported since start.
    pub bus_denied: u64,
    /// Live streams open.
    pub sse_open: u64,
    /// Event frames written to live streams.
    pub sse_deliveries: u64,
    /// Streams told to resync (they fell too far behind) and closed.
    pub sse_resyncs: u64,
    /// Topology snapshots read from SQLite for live streams.
    pub sse_snapshot_loads: u64,
    /// Durations windows' merged hours and start hours read from SQLite.
    pub durations_reads: u64,
    /// Per read model, what the pruner last saw.
    pub retention: Vec<crate::projector::prune::ModelReport>,
}

impl Telemetry {
    /// A registry with the projections' counters and histograms, HTTP request durations and
    /// process metrics.
    pub fn new(projections: Arc<[Progress]>) -> Self {
        let mut registry = Registry::default();
        let http = Family::<HttpLabels, Histogram>::new_with_constructor(
            http_histogram as fn() -> Histogram,
        );
        registry.register(
            "orrery_http_request_duration_seconds",
            "Time to answer an HTTP request (for a live stream: to its first byte), by route template, method and status class.",
            http.clone(),
        );
        registry.register_collector(Box::new(Projections(projections)));
        registry.register_collector(Box::new(Process));
        Self { registry, http }
    }

    /// Records one answered request.
    pub fn observe_http(&self, labels: HttpLabels, elapsed: Duration) {
        self.http
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The whole exposition: the registry, then the scrape's facts, then `# EOF`.
    pub fn encode(&self, scrape: Scrape) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let mut per_scrape = Registry::default();
        per_scrape.register_collector(Box::new(scrape));
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &per_scrape);
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}

/// 0.5 ms … 16 s.
fn http_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The status class label of a status code.
pub fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Encodes one metric family of `(labels, metric)` pairs.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (&'static str, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (stream, m) in rows {
        m.encode(metric.encode_family(&StreamLabel { stream })?)?;
    }
    Ok(())
}

fn single<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    m: M,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, m.metric_type())?;
    m.encode(metric)
}

/// The projectors' atomics and histograms, read at scrape time.
#[derive(Debug)]
struct Projections(Arc<[Progress]>);

impl Collector for Projections {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = |f: fn(&Progress) -> u64| {
            self.0
                .iter()
                .map(move |p| (p.stream.name, ConstCounter::new(f(p))))
        };
        let c = MetricType::Counter;
        family(
            &mut e,
            "orrery_projected_messages",
            "Messages whose effect was committed.",
            c,
            counter(|p| p.counters.messages.load(Ordering::Relaxed)),
        )?;
        family(
            &mut e,
            "orrery_dead_letters",
            "Messages stored in dead_letters.",
            c,
            counter(|p| p.counters.dead_letters.load(Ordering::Relaxed)),
        )?;
        family(
            &mut e,
            "orrery_projection_batches",
            "Committed batches.",
            c,
            counter(|p| p.counters.batches.load(Ordering::Relaxed)),
        )?;
        family(
            &mut e,
            "orrery_projection_errors",
            "Failed projection steps (retried).",
            c,
            counter(|p| p.counters.errors.load(Ordering::Relaxed)),
        )?;
        family(
            &mut e,
            "orrery_projection_stalls",
            "Consumers reopened after going silent with messages left in the stream.",
            c,
            counter(|p| p.counters.stalls.load(Ordering::Relaxed)),
        )?;
        family(
            &mut e,
            "orrery_projection_checkpoint",
            "Last committed stream sequence.",
            MetricType::Gauge,
            self.0.iter().map(|p| {
                (
                    p.stream.name,
                    ConstGauge::new(*p.checkpoint.borrow() as i64),
                )
            }),
        )?;
        family(
            &mut e,
            "orrery_projection_rate",
            "Messages projected per second lately (sampled twice a second): with the lag, catch-up progress.",
            MetricType::Gauge,
            self.0.iter().map(|p| {
                let rate = p.counters.rate.load(Ordering::Relaxed);
                (p.stream.name, ConstGauge::new(rate as i64))
            }),
        )?;
        family(
            &mut e,
            "orrery_projection_batch_size",
            "Messages per committed batch.",
            MetricType::Histogram,
            self.0
                .iter()
                .map(|p| (p.stream.name, p.counters.batch_sizes.clone())),
        )?;
        family(
            &mut e,
            "orrery_projection_commit_seconds",
            "Seconds from a batch's transaction start to its commit.",
            MetricType::Histogram,
            self.0
                .iter()
                .map(|p| (p.stream.name, p.counters.commit_seconds.clone())),
        )
    }
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        family(&mut e, "orrery_projection_lag",
            "Messages the stream holds after the checkpoint (absent when the stream cannot be read).",
            MetricType::Gauge,
            self.lag.iter().filter_map(|(s, l)| Some((*s, ConstGauge::new((*l)? as i64)))))?;
        family(
            &mut e,
            "orrery_projection_missing_events",
            "Messages a projection never saw because the stream no longer held them (see /ready).",
            MetricType::Gauge,
            self.missing
                .iter()
                .map(|(s, n)| (*s, ConstGauge::new(*n as i64))),
        )?;
        single(
            &mut e,
            "orrery_bus_connected",
            "1 while connected to NATS.",
            ConstGauge::new(i64::from(self.bus_connected)),
        )?;
        single(
            &mut e,
            "orrery_bus_reconnects",
            "Connections to NATS re-established after a loss.",
            ConstCounter::new(self.bus_connects.saturating_sub(1)),
        )?;
        single(
            &mut e,
            "orrery_bus_permission_denied",
            "Publishes and subscriptions NATS refused for want of a permission (the log and \
             /ready name the subject).",
            ConstCounter::new(self.bus_denied),
        )?;
        single(
            &mut e,
            "orrery_sse_streams_open",
            "Live streams open now.",
            ConstGauge::new(self.sse_open as i64),
        )?;
        single(
            &mut e,
            "orrery_sse_deliveries",
            "Event frames written to live streams.",
            ConstCounter::new(self.sse_deliveries),
        )?;
        single(
            &mut e,
            "orrery_sse_resyncs",
            "Live streams told to resync (they fell too far behind) and closed.",
            ConstCounter::new(self.sse_resyncs),
        )?;
        single(&mut e, "orrery_sse_snapshot_loads",
            "Snapshots read from SQLite (a connect that finds the topology's view in memory reads none).",
            ConstCounter::new(self.sse_snapshot_loads))?;
        single(
            &mut e,
            "orrery_durations_cache_reads",
            "Parts of /results/durations windows (merged whole hours, a window's start hour) read from SQLite rather than memory.",
            ConstCounter::new(self.durations_reads),
        )?;
        let r = &self.retention;
        family(
            &mut e,
            "orrery_retention_seconds",
            "How long a read model keeps its rows, by event time (absent: for ever).",
            MetricType::Gauge,
            r.iter()
                .filter_map(|m| Some((m.stream, ConstGauge::new(m.retention_secs? as i64)))),
        )?;
        family(
            &mut e,
            "orrery_retention_oldest_kept_timestamp_seconds",
            "Event time of the oldest row a read model holds, Unix seconds (absent: it holds none).",
            MetricType::Gauge,
            r.iter()
                .filter_map(|m| Some((m.stream, ConstGauge::new(m.oldest_ms?.div_euclid(1000))))),
        )?;
        family(
            &mut e,
            "orrery_retention_cutoff_timestamp_seconds",
            "Rows of a read model with an event time before this are past its retention, Unix seconds.",
            MetricType::Gauge,
            r.iter()
                .filter_map(|m| Some((m.stream, ConstGauge::new(m.cutoff_ms?.div_euclid(1000))))),
        )?;
        family(
            &mut e,
            "orrery_retention_pruned_rows",
            "Rows the pruner deleted since the daemon started.",
            MetricType::Counter,
            r.iter()
                .map(|m| (m.stream, ConstCounter::new(m.pruned_rows))),
        )
    }
}

/// A `<key> <n> kB` line of a `/proc/<pid>/status` text, in bytes.
fn status_bytes(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Resident memory of process `pid` in bytes (Linux; 0 where unknown): for benchmarks and
/// tests that watch a daemon they started.
pub fn resident_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS:")
}

/// Peak resident memory of process `pid` in bytes (Linux; 0 where unknown).
pub fn peak_resident_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmHWM:")
}

fn proc_status_bytes(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| status_bytes(&s, key))
        .unwrap_or(0)
}

/// Process metrics from `/proc/self` (Linux); absent elsewhere.
#[derive(Debug)]
struct Process;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on every Linux platform).
const TICKS: f64 = 100.0;

impl Collector for Process {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |key: &str| status_bytes(&status, key).map(|b| b as i64);
        if let Some(rss) = kib("VmRSS:") {
            single(
                &mut e,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                ConstGauge::new(rss),
            )?;
        }
        if let Some(vm) = kib("VmSize:") {
            single(
                &mut e,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                ConstGauge::new(vm),
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            single(
                &mut e,
                "process_open_fds",
                "Open file descriptors.",
                ConstGauge::new(fds.count() as i64),
            )?;
        }
        // Fields after the command name (which may hold spaces): state is field 3, utime 14,
        // stime 15, starttime 22 — indexes 0, 11, 12 and 19 after the closing parenthesis.
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        if let (Some(user), Some(system)) = (field(11), field(12)) {
            single(
                &mut e,
                "process_cpu_seconds",
                "User and system CPU time in seconds.",
                ConstCounter::new((user + system) / TICKS),
            )?;
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
        });
        if let (Some(start), Some(boot)) = (field(19), boot) {
            single(
                &mut e,
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
                ConstGauge::new((boot + start / TICKS) as i64),
            )?;
        }
        Ok(())
    }
}
