//! The `orrery` command line: a thin shell over the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orrery::api::auth::{self, Role};
use orrery::{Application, Settings};
use tracing_subscriber::EnvFilter;

/// Orrery: NATS JetStream in, live SQLite read models, HTTP and SSE out.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: project the streams and serve the API.
    Serve(Settings),
    /// Create or upgrade the database schema, then exit.
    Migrate(Settings),
    /// Reset read models and replay them from the streams (stop the daemon first).
    Rebuild {
        /// Only this stream's read models (e.g. RESULTS).
        #[arg(long)]
        stream: Option<String>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Print an API token signed with the configured secret.
    Token {
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: Role,
        /// Lifetime, e.g. 1h, 30m, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Subject (who the token is for).
        #[arg(long, default_value = "orrery-cli")]
        sub: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Measure throughput on this machine.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// Publish N result events, then time the raw consumer and the projector's catch-up.
    Ingest {
        /// Events to publish.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// NATS to use; by default a private nats-server is started on a free port.
        #[arg(long)]
        nats_url: Option<String>,
        /// Projector batch size.
        #[arg(long, default_value_t = 4096)]
        batch_size: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Alert ingest with redaction on, then /alerts/recurrence latency with every event stored.
    Alerts {
        /// Alert events to publish and project.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// NATS to use; by default a private nats-server is started on a free port.
        #[arg(long)]
        nats_url: Option<String>,
        /// Projector batch size.
        #[arg(long, default_value_t = 4096)]
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
        /// NATS to use; by default a private nats-server is started on a free port.
        #[arg(long)]
        nats_url: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,async_nats=warn"));
    // Logs go to stderr so that `orrery token` and `orrery bench --json` print clean stdout.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(settings) => {
            let config = settings.resolve()?;
            init_tracing(config.log_json);
            if config.jwt_secret.is_none() {
                tracing::warn!(
                    "authentication is DISABLED (--insecure-no-auth): every caller is admin"
                );
            }
            let app = Application::build(config).await?;
            let token = app.shutdown_token();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutdown requested");
                token.cancel();
            });
            app.run_until_stopped().await
        }
        Command::Migrate(settings) => {
            let config = settings.resolve_for(false)?;
            init_tracing(config.log_json);
            orrery::db::open(&config.database, 1).await?.close().await;
            println!("database {} is up to date", config.database.display());
            Ok(())
        }
        Command::Rebuild { stream, settings } => {
            let config = settings.resolve_for(false)?;
            init_tracing(config.log_json);
            let n = orrery::rebuild::rebuild(&config, stream.as_deref()).await?;
            println!("replayed {n} messages into {}", config.database.display());
            Ok(())
        }
        Command::Token {
            role,
            ttl,
            sub,
            settings,
        } => {
            let config = settings.resolve()?;
            let secret = config
                .jwt_secret
                .context("authentication is disabled; there is no secret to sign with")?;
            let ttl = orrery::window::parse_duration(&ttl)
                .map_err(|e| anyhow::anyhow!("--ttl `{ttl}`: {e}"))?;
            println!("{}", auth::mint(&secret, &sub, role, ttl.as_secs())?);
            Ok(())
        }
        Command::Bench(Bench::Fanout {
            clients,
            topologies,
            rate,
            duration,
            nats_url,
            json,
        }) => {
            init_tracing(false);
            let duration = orrery::window::parse_duration(&duration)
                .map_err(|e| anyhow::anyhow!("--duration `{duration}`: {e}"))?;
            let (_nats, url) = bench_nats(nats_url)?;
            let report = orrery::bench::fanout::fanout(
                &url,
                orrery::bench::fanout::FanoutOptions {
                    clients,
                    topologies,
                    rate,
                    duration,
                },
            )
            .await?;
            print_report(&report, json)
        }
        Command::Bench(Bench::Alerts {
            events,
            nats_url,
            batch_size,
            concurrency,
            requests,
            json,
        }) => {
            init_tracing(false);
            let (_nats, url) = bench_nats(nats_url)?;
            let report =
                orrery::bench::alerts::run(&url, events, batch_size, concurrency, requests).await?;
            print_report(&report, json)
        }
        Command::Bench(Bench::Query {
            agents,
            samples,
            results,
            concurrency,
            requests,
            nats_url,
            json,
        }) => {
            init_tracing(false);
            let (_nats, url) = bench_nats(nats_url)?;
            let load = orrery::bench::fleet::QueryLoad {
                agents,
                samples,
                results,
                concurrency,
                requests,
            };
            let report = orrery::bench::fleet::run(&url, load).await?;
            print_report(&report, json)
        }
        Command::Bench(Bench::Ingest {
            events,
            nats_url,
            batch_size,
            json,
        }) => {
            init_tracing(false);
            let (private, url) = bench_nats(nats_url)?;
            let pid = private.as_ref().map(|n| n.pid());
            let report = orrery::bench::ingest(&url, pid, events, batch_size).await?;
            print_report(&report, json)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// glibc malloc showed up as a tenth of the projector's CPU (many small, short-lived message
// buffers); mimalloc measured faster on `orrery bench ingest`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The NATS a bench uses: `--nats-url`, else a private nats-server on a free port (kept
/// running while the returned handle lives).
fn bench_nats(
    nats_url: Option<String>,
) -> anyhow::Result<(Option<orrery::natsd::NatsServer>, String)> {
    Ok(match nats_url {
        Some(url) => (None, url),
        None => {
            let server = orrery::natsd::NatsServer::start()?;
            let url = server.url();
            (Some(server), url)
        }
    })
}

/// Prints a bench report as a table or, with `--json`, as JSON.
fn print_report<R: serde::Serialize + std::fmt::Display>(
    report: &R,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
