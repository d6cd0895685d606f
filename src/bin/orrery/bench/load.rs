//! The HTTP load driver the benches share: query latency under concurrent clients, against a daemon started in this process on a
//! database the bench has already filled.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use orrery::{Application, Settings};

use super::Quantiles;

/// Latency of one endpoint under load.
#[derive(Debug, Serialize, Clone)]
pub struct Endpoint {
    /// The request path (with query).
    pub path: String,
    /// Requests made.
    pub requests: usize,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Requests per second achieved.
    pub rps: f64,
    /// Request → answer latency.
    #[serde(flatten)]
    pub latency: Quantiles,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "  {:<52} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  {:>6.0} req/s",
            self.path, self.latency.p50_ms, self.latency.p99_ms, self.latency.max_ms, self.rps
        )
    }
}

/// A daemon serving a bench database, without authentication, on a free loopback port.
pub struct LocalDaemon {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    cancel: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl LocalDaemon {
    /// Starts the daemon on `database` against `nats_url`, with `tweak` applied to its
    /// settings.
    pub async fn start(
        nats_url: &str,
        database: &Path,
        tweak: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<Self> {
        let mut settings = Settings {
            nats_url: Some(nats_url.to_owned()),
            database: Some(database.to_owned()),
            listen: Some("127.0.0.1:0".parse().expect("valid address")),
            insecure_no_auth: Some(true),
            ..Default::default()
        };
        tweak(&mut settings);
        let app = Application::build(settings.resolve()?).await?;
        let base = format!("http://127.0.0.1:{}", app.port());
        let cancel = app.shutdown_token();
        let handle = tokio::spawn(app.run_until_stopped());
        Ok(Self {
            base,
            cancel,
            handle,
        })
    }

    /// Stops the daemon and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.handle.await.context("daemon task")?
    }
}

/// Runs `requests` GETs of `path` from `concurrency` clients (after a short warm-up) and
/// reports their latency; any answer other than 200 fails the bench.
pub async fn measure(
    base: &str,
    path: &str,
    concurrency: usize,
    requests: usize,
) -> anyhow::Result<Endpoint> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let url = format!("{base}{path}");
    for _ in 0..concurrency.min(8) {
        let res = client.get(&url).send().await?;
        if !res.status().is_success() {
            bail!("GET {path}: {}", res.status());
        }
        res.bytes().await?;
    }
    let per_client = requests.div_ceil(concurrency);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let t = Instant::now();
                    let res = client.get(&url).send().await?;
                    let status = res.status();
                    res.bytes().await?;
                    if !status.is_success() {
                        bail!("status {status}");
                    }
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
                Ok::<_, anyhow::Error>(times)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(per_client * concurrency);
    for w in workers {
        all.extend(w.await.context("client task")??);
    }
    let elapsed = started.elapsed().max(Duration::from_micros(1));
    all.sort_by(f64::total_cmp);
    Ok(Endpoint {
        path: path.to_owned(),
        requests: all.len(),
        concurrency,
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        latency: Quantiles::of_sorted(&all),
    })
}
