//! The `orrery` command line: a thin shell over the library. `orrery bench` lives beside it
//! in [`bench`]: the daemon's library carries no benchmark code.

mod bench;
mod demo;
mod progress;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orrery::token::{self, Role};
use orrery::{Application, Refusal, Settings};
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
    /// Give the space of pruned rows back to the file system by rewriting the database
    /// (stop the daemon first; needs free disk space the size of the file).
    Compact(Settings),
    /// Reset read models and replay them from the streams (stop the daemon first).
    Rebuild {
        /// Only this stream's read models (e.g. RESULTS).
        #[arg(long)]
        stream: Option<String>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Print, per read model, its checkpoint and a hash of its rows (replicas at the same
    /// checkpoints print the same).
    Digest(Settings),
    /// Print the OpenAPI 3.1 document the daemon serves at /api/v1/openapi.json (to generate
    /// a client without a running daemon).
    Openapi,
    /// Write a snapshot of the database to --snapshot-bucket now (safe beside a serving
    /// daemon with the same settings) and print what it holds.
    Snapshot(Settings),
    /// Copy the database to FILE, a consistent online copy with its checkpoints and digest
    /// recorded inside (safe beside a serving daemon with the same settings).
    Backup {
        /// The backup file to write (never overwritten).
        file: std::path::PathBuf,
        #[command(flatten)]
        settings: Settings,
    },
    /// Put the backup FILE in place as --database (which must not exist) once its digest
    /// and schema check out; `serve` then catches up from its checkpoints.
    Restore {
        /// The backup file, as `orrery backup` wrote it.
        file: std::path::PathBuf,
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
        /// Limit the token to these projects (alerts, work items): repeat or separate with
        /// commas; without it, every project.
        #[arg(long = "project", value_delimiter = ',')]
        projects: Vec<String>,
        /// Limit the token to these topologies: repeat or separate with commas; without it,
        /// every topology.
        #[arg(long = "topology", value_delimiter = ',')]
        topologies: Vec<String>,
        /// Print a single-use sign-in link for the dashboard instead (valid 5 minutes; the
        /// session it opens lasts --ttl).
        #[arg(long)]
        login_url: bool,
        /// The dashboard's address for --login-url [default: http://<--listen>].
        #[arg(long)]
        base_url: Option<String>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Publish realistic, continuous traffic to the configured bus (Ctrl-C stops it): agents
    /// heartbeating, results, topology mutations, alerts with secrets to redact, deploys.
    Demo {
        /// Events per second, all kinds together (1–10000).
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// Stop after this long, e.g. 30s, 10m; without it, runs until Ctrl-C.
        #[arg(long)]
        duration: Option<String>,
        /// Agents that heartbeat every 10 s and report results (1–10000).
        #[arg(long, default_value_t = 24)]
        agents: u32,
        #[command(flatten)]
        settings: Settings,
    },
    /// Measure throughput on this machine.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Ask the daemon at --listen for /ready (or /health) and exit 0 when it answers 200:
    /// a container health check that needs no shell or curl in the image.
    Probe {
        /// ready: caught up, connected and not draining; health: the process answers.
        #[arg(value_enum, default_value = "ready")]
        probe: Probe,
        /// Give up after this long, e.g. 5s.
        #[arg(long, default_value = "5s")]
        timeout: String,
        #[command(flatten)]
        settings: Settings,
    },
}

/// What `orrery probe` asks.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Probe {
    Ready,
    Health,
}

/// Where a client on this host reaches a server listening on `listen`: a wildcard listen
/// address is no place to connect or browse to, its loopback is.
fn local_address(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut at = listen;
    if at.ip().is_unspecified() {
        at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    at
}

/// `orrery probe`: Ok when the daemon answers 200, else an error naming what it said.
async fn probe(
    listen: std::net::SocketAddr,
    probe: Probe,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let path = match probe {
        Probe::Ready => "/ready",
        Probe::Health => "/health",
    };
    let url = format!("http://{}{path}", local_address(listen));
    let client = reqwest::Client::builder().timeout(timeout).build()?;
    let res = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("{url} did not answer"))?;
    let status = res.status();
    let body = res.text().await.unwrap_or_default();
    // /ready's reasons are what an operator reads in `docker inspect` or `kubectl describe`.
    let said: String = body.chars().take(500).collect();
    anyhow::ensure!(status.is_success(), "{url} answered {status}: {said}");
    println!("{url} answered {status}");
    Ok(())
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

/// A NATS client once connected, or an error after 30 s (for commands that need the bus
/// now, unlike `serve`, which starts without it).
async fn connect_now(config: &orrery::Config) -> anyhow::Result<async_nats::Client> {
    let nats = orrery::bus::connect(&config.nats).await?;
    let wait = orrery::snapshot::RESTORE_WAIT;
    anyhow::ensure!(
        orrery::bus::wait_connected(&nats, wait).await,
        "NATS at {} did not answer within {wait:?}",
        config.nats.url
    );
    Ok(nats)
}

/// A setting that cannot be used is the operator's to fix: exit code 2, one line (a TOML
/// parser's multi-line report is folded onto it).
fn refused(error: anyhow::Error) -> anyhow::Error {
    let text = format!("{error:#}");
    let line: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Refusal(line.join(" ")).into()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(settings) => {
            let config = settings.resolve().map_err(refused)?;
            init_tracing(config.log_json);
            if config.jwt_secret.is_none() && config.oidc.is_none() {
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
            let config = settings.resolve_for(false).map_err(refused)?;
            init_tracing(config.log_json);
            orrery::db::open(&config.database, 1).await?.close().await;
            println!("database {} is up to date", config.database.display());
            Ok(())
        }
        Command::Compact(settings) => {
            let config = settings.resolve_for(false).map_err(refused)?;
            init_tracing(config.log_json);
            let (before, after) = orrery::db::compact(&config.database).await?;
            println!(
                "database {}: {before} bytes before, {after} after",
                config.database.display()
            );
            Ok(())
        }
        Command::Rebuild { stream, settings } => {
            let config = settings.resolve_for(false).map_err(refused)?;
            init_tracing(config.log_json);
            let mut display = progress::ReplayDisplay::new();
            let n =
                orrery::rebuild::rebuild(&config, stream.as_deref(), |r| display.update(r)).await?;
            display.finish();
            println!("replayed {n} messages into {}", config.database.display());
            Ok(())
        }
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&orrery::api::openapi_document())?
            );
            Ok(())
        }
        Command::Digest(settings) => {
            let config = settings.resolve_for(false).map_err(refused)?;
            init_tracing(config.log_json);
            let read_models = orrery::projections::read_models(&config);
            let digest =
                orrery::digest::digest(&config.database, &read_models, config.retention).await?;
            println!("{}", serde_json::to_string_pretty(&digest)?);
            Ok(())
        }
        Command::Snapshot(settings) => {
            let config = settings.resolve_for(false).map_err(refused)?;
            init_tracing(config.log_json);
            let snapshots = config
                .snapshot
                .clone()
                .ok_or_else(|| refused(anyhow::anyhow!("--snapshot-bucket is not set")))?;
            let js = async_nats::jetstream::new(connect_now(&config).await?);
            let read_models = orrery::projections::read_models(&config);
            let info = orrery::snapshot::take(
                &config.database,
                &js,
                &snapshots,
                &read_models,
                config.retention,
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
        Command::Backup { file, settings } => {
            let config = settings.resolve_for(false).map_err(refused)?;
            init_tracing(config.log_json);
            let read_models = orrery::projections::read_models(&config);
            let info =
                orrery::backup::backup(&config.database, &file, &read_models, config.retention)
                    .await?;
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
        Command::Restore { file, settings } => {
            let config = settings.resolve_for(false).map_err(refused)?;
            init_tracing(config.log_json);
            let read_models = orrery::projections::read_models(&config);
            let info = orrery::backup::restore(&file, &config.database, &read_models).await?;
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
        Command::Demo {
            rate,
            duration,
            agents,
            settings,
        } => {
            let config = settings.resolve_for(false).map_err(refused)?;
            init_tracing(config.log_json);
            for (flag, value) in [("--rate", rate), ("--agents", agents)] {
                if !(1..=10_000).contains(&value) {
                    return Err(refused(anyhow::anyhow!(
                        "{flag} {value}: accepts 1 to 10000"
                    )));
                }
            }
            let duration = duration
                .map(|d| {
                    orrery::window::parse_duration(&d)
                        .map_err(|e| refused(anyhow::anyhow!("--duration `{d}`: {e}")))
                })
                .transpose()?;
            let js = async_nats::jetstream::new(connect_now(&config).await?);
            eprintln!(
                "publishing demo traffic to {} at {rate} events/s{} (Ctrl-C stops)",
                config.nats.url,
                duration.map_or(String::new(), |d| format!(" for {d:?}"))
            );
            let opts = demo::DemoOpts {
                rate,
                duration,
                agents,
            };
            let provisioning = orrery::bus::streams::Provisioning {
                replicas: config.stream_replicas,
                max_age: config.stream_max_age,
            };
            let sent = demo::run(js, provisioning, opts).await?;
            eprintln!("published {sent} events");
            Ok(())
        }
        Command::Token {
            role,
            ttl,
            sub,
            projects,
            topologies,
            login_url,
            base_url,
            settings,
        } => {
            for (flag, ids) in [("--project", &projects), ("--topology", &topologies)] {
                if let Some(bad) = ids.iter().find(|id| !orrery::bus::subjects::is_token(id)) {
                    return Err(refused(anyhow::anyhow!(
                        "{flag} `{}`: accepts ids that are {}",
                        bad.escape_debug(),
                        orrery::bus::subjects::TOKEN_FORM
                    )));
                }
            }
            let mut template = token::Claims::new(&sub, role, 0);
            template.projects = (!projects.is_empty()).then_some(projects);
            template.topologies = (!topologies.is_empty()).then_some(topologies);
            let config = settings.resolve().map_err(refused)?;
            let secret = config
                .jwt_secret
                .context("authentication is disabled; there is no secret to sign with")?;
            let ttl = orrery::window::parse_duration(&ttl)
                .map_err(|e| anyhow::anyhow!("--ttl `{ttl}`: {e}"))?;
            if login_url {
                let base =
                    base_url.unwrap_or_else(|| format!("http://{}", local_address(config.listen)));
                let login = token::mint_login_scoped(&secret, &template, ttl.as_secs())?;
                println!("{}/#login={login}", base.trim_end_matches('/'));
            } else {
                println!("{}", token::mint_scoped(&secret, &template, ttl.as_secs())?);
            }
            Ok(())
        }
        Command::Bench(bench) => {
            init_tracing(false);
            bench::run(bench).await
        }
        Command::Probe {
            probe: what,
            timeout,
            settings,
        } => {
            let config = settings.resolve_for(false).map_err(refused)?;
            let timeout = orrery::window::parse_duration(&timeout)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .and_then(|t| {
                    anyhow::ensure!(
                        !t.is_zero() && t <= std::time::Duration::from_secs(600),
                        "accepts 1ms to 10m"
                    );
                    Ok(t)
                })
                .map_err(|e| refused(anyhow::anyhow!("--timeout `{timeout}`: {e}")))?;
            probe(config.listen, what, timeout).await
        }
    }
}

/// Turns transparent huge pages off for this process, unless the operator asked mimalloc
/// for them (`MIMALLOC_ALLOW_THP`).
///
/// mimalloc asks for huge pages on its arenas, so every connection's few KiB of buffers
/// touched a 2 MiB page the kernel first had to clear: 10,000 SSE clients cost 27 KiB each
/// and the kernel's page clearing was 42% of the daemon's CPU during their connect storm;
/// without huge pages 16 KiB each, and the storm took half as long (`orrery bench fanout`).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
        // A kernel without it refuses with EINVAL, and the process runs as before.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}

fn main() -> ExitCode {
    // Before the runtime starts its threads and allocates their buffers.
    no_transparent_huge_pages();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run_main()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print as clap wants; a bad argument is one line and exit 2.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.render().to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: bad arguments"));
            return ExitCode::from(2);
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // 2 as clap uses for a bad argument: what the operator must change, not a crash.
            if e.downcast_ref::<Refusal>().is_some()
                || e.downcast_ref::<orrery::db::Corrupt>().is_some()
                || e.downcast_ref::<orrery::db::Unwritable>().is_some()
                || e.downcast_ref::<orrery::db::TooNew>().is_some()
                || e.downcast_ref::<orrery::backup::Refused>().is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

// glibc malloc showed up as a tenth of the projector's CPU (many small, short-lived message
// buffers); mimalloc measured faster on `orrery bench ingest`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
