//! `orrery bench …`: figures measured on the machine at hand, one module per subcommand —
//! [`ingest`], [`query`], [`alerts`], [`fanout`] and [`cluster`] — with [`load`], the HTTP load driver
//! they share, and the helpers below that put events on the bus and project them.

pub mod alerts;
pub mod cluster;
pub mod fanout;
pub mod ingest;
pub mod load;
pub mod query;
pub mod soak;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream;
use async_nats::HeaderMap;
use clap::Subcommand;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use orrery::bus::streams::{self, Provisioning, StreamSpec};
use orrery::natsd::NatsServer;
use orrery::projector::Outcome;
use orrery::{db, projections, Settings};

#[derive(Subcommand)]
pub enum Bench {
    /// A 3-node JetStream cluster with R3 streams: publish rate, a fresh replica's time to
    /// ready with and without a snapshot, and what a stream-leader loss costs.
    Cluster {
        /// Results published before the replica measurements.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Publish rate while the stream leader is killed, events/s.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Length of the leader-loss run, seconds (the kill comes a third of the way in).
        #[arg(long, default_value_t = 30)]
        failover_secs: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Publish N result events, then time the raw consumer and the projector's catch-up.
    Ingest {
        /// Events to publish.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// NATS to use; by default a private nats-server is started on a free port.
        #[arg(long)]
        nats_url: Option<String>,
        /// Projector batch size (the daemon's default unless given).
        #[arg(long, default_value_t = orrery::config::DEFAULT_BATCH_SIZE)]
        batch_size: usize,
        /// The window realistic finish times are spread over, e.g. 24h, 1h.
        #[arg(long, default_value = "24h")]
        spread: String,
        /// Only the best case (sequential ids, one timestamp), labelled as such; without
        /// it or --realistic, the realistic shape and then the best case are both measured.
        #[arg(long, conflicts_with = "realistic")]
        sequential: bool,
        /// Only the realistic shape (UUIDs, spread finish times).
        #[arg(long)]
        realistic: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Alert ingest with redaction on, runs linked to those alerts, then /alerts/recurrence
    /// and work-item preview latency with every event stored.
    Alerts {
        /// Alert events to publish and project.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Runs linked to the alerts (results with data.links).
        #[arg(long, default_value_t = 200_000)]
        runs: u64,
        /// Alerts per second published during the last measure (pages change with each
        /// commit).
        #[arg(long, default_value_t = 500)]
        live_rate: u64,
        /// NATS to use; by default a private nats-server is started on a free port.
        #[arg(long)]
        nats_url: Option<String>,
        /// Projector batch size (the daemon's default unless given).
        #[arg(long, default_value_t = orrery::config::DEFAULT_BATCH_SIZE)]
        batch_size: usize,
        /// Concurrent HTTP clients for the query phase.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Requests per query measured.
        #[arg(long, default_value_t = 3200)]
        requests: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A fleet's heartbeats and results through the bus, then fleet health, badge and
    /// durations latency under concurrent clients.
    Query {
        /// Distinct agents.
        #[arg(long, default_value_t = 10_000)]
        agents: u64,
        /// Heartbeats (one system sample each; a tenth add a container sample).
        #[arg(long, default_value_t = 1_000_000)]
        samples: u64,
        /// Execution results, spread over the last seven days.
        #[arg(long, default_value_t = 5_000_000)]
        results: u64,
        /// Concurrent HTTP clients.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Requests per endpoint.
        #[arg(long, default_value_t = 3200)]
        requests: usize,
        /// NATS to use (with empty streams); by default a private nats-server is started.
        #[arg(long)]
        nats_url: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The daemon as its own process under mixed traffic for a long time: demo events on
    /// every stream, live clients joining and leaving, queries; prints its memory, open
    /// files, lag and query latency at every interval.
    Soak {
        /// How long, e.g. 10m.
        #[arg(long, default_value = "10m")]
        duration: String,
        /// Reporting interval, e.g. 1m.
        #[arg(long, default_value = "1m")]
        every: String,
        /// Demo events per second, all streams together.
        #[arg(long, default_value_t = 500)]
        rate: u32,
        /// Live-stream clients, each reconnecting every 2–20 s.
        #[arg(long, default_value_t = 100)]
        sse_clients: usize,
        /// Query clients, each asking every 50 ms.
        #[arg(long, default_value_t = 4)]
        query_clients: usize,
        /// Run the daemon with every read model's retention set to this (e.g. 2m), to see
        /// a month of traffic in minutes: the database should level off once the first
        /// retention has passed. Stats samples keep their 60 s minimum.
        #[arg(long)]
        retention: Option<String>,
        /// NATS to use; by default a private nats-server is started on a free port.
        #[arg(long)]
        nats_url: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Hold many SSE streams over many topologies under a publish rate; report deliveries,
    /// latency and the daemon's memory per connection.
    Fanout {
        /// SSE connections.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Topologies the connections are spread over.
        #[arg(long, default_value_t = 100)]
        topologies: usize,
        /// Events per second, spread over the topologies.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// How long to publish, e.g. 10s.
        #[arg(long, default_value = "10s")]
        duration: String,
        /// Results to load into the database first, finished 2 to 32 days ago (a month of
        /// data to prune while the clients listen).
        #[arg(long, default_value_t = 0)]
        backlog: u64,
        /// The daemon's results retention during the measure, e.g. 1d; 0 keeps the backlog
        /// (the same load without pruning).
        #[arg(long, default_value = "1d")]
        backlog_retention: String,
        /// Then measure this peer the same way, in the same run: `nchan` (nginx with the
        /// nchan module: `apt-get install nginx-light libnginx-mod-nchan`).
        #[arg(long, value_parser = ["nchan"])]
        peer: Option<String>,
        /// Keep one core busy with a spinning thread while measuring (a CPU-bound neighbour).
        #[arg(long)]
        cpu_neighbour: bool,
        /// Realistic results waiting in the bus when the daemon starts: the live stream is
        /// measured while the projector catches up on them.
        #[arg(long, default_value_t = 0)]
        catch_up: u64,
        /// The nginx binary for `--peer nchan`.
        #[arg(long, default_value = "/usr/sbin/nginx")]
        nginx: std::path::PathBuf,
        /// The nchan module for `--peer nchan`.
        #[arg(long, default_value = "/usr/lib/nginx/modules/ngx_nchan_module.so")]
        nchan_module: std::path::PathBuf,
        /// NATS to use; by default a private nats-server is started on a free port.
        #[arg(long)]
        nats_url: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one benchmark and prints its report.
pub async fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Ingest {
            events,
            nats_url,
            batch_size,
            spread,
            sequential,
            realistic,
            json,
        } => {
            let spread = orrery::window::parse_duration(&spread)
                .ok()
                .filter(|d| !d.is_zero() && d.as_secs() <= 365 * 86_400)
                .with_context(|| format!("--spread `{spread}`: accepts 1s to 365d, e.g. 24h"))?;
            let real = ingest::Shape::Realistic {
                spread_secs: spread.as_secs(),
            };
            let shapes = match (sequential, realistic) {
                (true, _) => vec![ingest::Shape::Sequential],
                (false, true) => vec![real],
                (false, false) => vec![real, ingest::Shape::Sequential],
            };
            let (private, url) = bench_nats(nats_url)?;
            let pid = private.as_ref().map(|n| n.pid());
            let mut reports = Vec::new();
            for shape in shapes {
                reports.push(ingest::run(&url, pid, events, batch_size, shape).await?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                for r in &reports {
                    println!("{r}\n");
                }
            }
            Ok(())
        }
        Bench::Cluster {
            events,
            rate,
            failover_secs,
            json,
        } => {
            if rate == 0 || failover_secs < 3 {
                bail!("--rate must be above 0 and --failover-secs at least 3");
            }
            let opts = cluster::ClusterOpts {
                events,
                rate,
                failover: Duration::from_secs(failover_secs),
            };
            print_report(&cluster::run(opts).await?, json)
        }
        Bench::Alerts {
            events,
            runs,
            live_rate,
            nats_url,
            batch_size,
            concurrency,
            requests,
            json,
        } => {
            let (_nats, url) = bench_nats(nats_url)?;
            let report = alerts::run(
                &url,
                events,
                runs,
                live_rate,
                batch_size,
                concurrency,
                requests,
            )
            .await?;
            print_report(&report, json)
        }
        Bench::Query {
            agents,
            samples,
            results,
            concurrency,
            requests,
            nats_url,
            json,
        } => {
            let (_nats, url) = bench_nats(nats_url)?;
            let load = query::QueryLoad {
                agents,
                samples,
                results,
                concurrency,
                requests,
            };
            print_report(&query::run(&url, load).await?, json)
        }
        Bench::Soak {
            duration,
            every,
            rate,
            sse_clients,
            query_clients,
            retention,
            nats_url,
            json,
        } => {
            let parse = |flag: &str, v: &str| {
                orrery::window::parse_duration(v)
                    .map_err(|e| anyhow::anyhow!("--{flag} `{v}`: {e}"))
            };
            let opts = soak::SoakOptions {
                duration: parse("duration", &duration)?,
                every: parse("every", &every)?,
                rate,
                sse_clients,
                query_clients,
                retention: retention.map(|r| parse("retention", &r)).transpose()?,
            };
            let (_nats, url) = bench_nats(nats_url)?;
            print_report(&soak::run(&url, opts).await?, json)
        }
        Bench::Fanout {
            clients,
            topologies,
            rate,
            duration,
            backlog,
            backlog_retention,
            peer,
            cpu_neighbour,
            catch_up,
            nginx,
            nchan_module,
            nats_url,
            json,
        } => {
            let duration = orrery::window::parse_duration(&duration)
                .map_err(|e| anyhow::anyhow!("--duration `{duration}`: {e}"))?;
            let backlog_retention = if backlog_retention == "0" {
                Duration::ZERO
            } else {
                orrery::window::parse_duration(&backlog_retention).map_err(|e| {
                    anyhow::anyhow!("--backlog-retention `{backlog_retention}`: {e}")
                })?
            };
            let (_nats, url) = bench_nats(nats_url)?;
            let opts = fanout::FanoutOptions {
                clients,
                topologies,
                rate,
                duration,
                backlog,
                backlog_retention,
                peer: peer.map(|_| fanout::Nchan {
                    nginx,
                    module: nchan_module,
                }),
                cpu_neighbour,
                catch_up,
            };
            if let Some(peer) = &opts.peer {
                for path in [&peer.nginx, &peer.module] {
                    if !path.exists() {
                        anyhow::bail!(
                            "--peer nchan: {} not found (apt-get install nginx-light \
                             libnginx-mod-nchan, or --nginx / --nchan-module)",
                            path.display()
                        );
                    }
                }
            }
            print_report(&fanout::run(&url, opts).await?, json)
        }
    }
}

/// The NATS a bench uses: `--nats-url`, else a private nats-server on a free port (kept
/// running while the returned handle lives).
fn bench_nats(nats_url: Option<String>) -> anyhow::Result<(Option<NatsServer>, String)> {
    Ok(match nats_url {
        Some(url) => (None, url),
        None => {
            let server = NatsServer::start()?;
            let url = server.url();
            (Some(server), url)
        }
    })
}

/// Prints a bench report as a table or, with `--json`, as JSON.
fn print_report<R: Serialize + std::fmt::Display>(report: &R, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

/// Latency percentiles in milliseconds (nearest rank).
#[derive(Debug, Serialize, Default, Clone, Copy)]
pub struct Quantiles {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Quantiles {
    /// The quantiles of samples sorted ascending, in ms (all 0 when there are none).
    pub fn of_sorted(sorted_ms: &[f64]) -> Self {
        let at = |q: f64| {
            let rank = ((q * sorted_ms.len() as f64).ceil() as usize).clamp(1, sorted_ms.len());
            sorted_ms[rank - 1]
        };
        match sorted_ms.last() {
            None => Self::default(),
            Some(&max_ms) => Self {
                p50_ms: at(0.50),
                p99_ms: at(0.99),
                max_ms,
            },
        }
    }
}

/// Events per second.
fn eps(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Connects to `nats_url` and provisions Orrery's streams, as the daemon would.
async fn connect_provisioned(
    nats_url: &str,
    max_age: Duration,
) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("connecting to {nats_url}"))?;
    let js = jetstream::new(client);
    streams::provision(
        &js,
        Provisioning {
            replicas: 1,
            max_age,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("provisioning streams: {e}"))?;
    Ok(js)
}

/// The last sequence of stream `name`.
async fn last_seq(js: &jetstream::Context, name: &str) -> anyhow::Result<u64> {
    Ok(js.get_stream(name).await?.cached_info().state.last_sequence)
}

/// Projects the roster's read model of `stream` into `db` from just after `from` until
/// `last` is committed, and returns how long that took.
async fn catch_up(
    stream: StreamSpec,
    js: &jetstream::Context,
    db: &db::Db,
    batch_size: usize,
    from: u64,
    last: u64,
) -> anyhow::Result<Duration> {
    if from > 0 {
        sqlx::query("INSERT INTO checkpoints (stream, last_seq, updated_at) VALUES (?, ?, 0)")
            .bind(stream.name)
            .bind(from as i64)
            .execute(&db.writer)
            .await?;
    }
    // The read models as the daemon configures them by default.
    let config = Settings {
        insecure_no_auth: Some(true),
        ..Default::default()
    }
    .resolve()?;
    let projection = projections::roster(&config, &projections::Listeners::unheard())
        .into_iter()
        .find(|p| p.stream() == stream)
        .with_context(|| format!("no read model consumes {}", stream.name))?;
    let mut projector = projection
        .projector(
            js.clone(),
            db.writer.clone(),
            db.demand.clone(),
            batch_size,
            config.batch_wait,
        )
        .await?;
    let cancel = CancellationToken::new();
    let started = Instant::now();
    while projector.checkpoint() < last {
        if let Outcome::Idle = projector.step(&cancel).await? {
            bail!(
                "projector went idle at {} of {last}",
                projector.checkpoint()
            );
        }
    }
    Ok(started.elapsed())
}

/// Publishes `events` messages made by `make(i)` (subject, body) with up to 4096 acks in
/// flight; returns how long it took.
async fn publish_with(
    js: &jetstream::Context,
    events: u64,
    run: &str,
    mut make: impl FnMut(u64) -> (String, Vec<u8>),
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    // On a terminal a bar shows the load; elsewhere (CI, --json into a file) it stays hidden.
    let bar = indicatif::ProgressBar::new(events);
    bar.set_style(crate::progress::bar_style(
        "publishing [{bar:36}] {percent:>3}% {human_pos}/{human_len} {rate} ETA {eta}",
    ));
    let mut inflight = std::collections::VecDeque::with_capacity(4096);
    for i in 0..events {
        if i % 1024 == 0 {
            bar.set_position(i);
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{run}-{i}").as_str());
        let (subject, body) = make(i);
        let ack = js
            .publish_with_headers(subject, headers, body.into())
            .await
            .context("publishing")?;
        inflight.push_back(ack);
        if inflight.len() >= 4096 {
            inflight.pop_front().expect("non-empty").await?;
        }
    }
    for ack in inflight {
        ack.await?;
    }
    bar.finish_and_clear();
    Ok(started.elapsed())
}
