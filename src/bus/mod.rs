//! The NATS side: connection, stream provisioning, subject rules, the event envelope and
//! publishing.
//!
//! JetStream is the source of truth; everything here is about reaching it reliably and
//! reading what it holds without trusting the publisher.

pub mod envelope;
pub mod events;
pub mod publish;
pub mod streams;
pub mod subjects;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::{Client, ConnectOptions};

use crate::secret::Secret;
pub use events::BusEvents;

/// How to reach NATS: the bus's own connection settings (the configuration fills them in).
#[derive(Clone, Debug, Default)]
pub struct NatsConfig {
    /// Server URL(s), comma separated.
    pub url: String,
    /// User for user/password auth.
    pub user: Option<String>,
    /// Password for user/password auth.
    pub password: Option<Secret>,
    /// Token auth.
    pub token: Option<Secret>,
    /// Credentials file.
    pub creds: Option<PathBuf>,
    /// NKey seed.
    pub nkey: Option<Secret>,
    /// CA certificate for TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    /// Client key for mutual TLS.
    pub tls_key: Option<PathBuf>,
}

/// Connects to NATS in the background: the returned client retries the first connection and
/// every later one forever, so the daemon can start (and answer `/health`) before the bus is up.
pub async fn connect(config: &NatsConfig) -> anyhow::Result<Client> {
    connect_watching(config, Arc::default()).await
}

/// The authentication and TLS of `config`, shared by the daemon's connection and by
/// [`diagnose`].
async fn credentials(config: &NatsConfig) -> anyhow::Result<ConnectOptions> {
    let mut options = match &config.creds {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .with_context(|| format!("reading NATS credentials {}", path.display()))?,
        None => ConnectOptions::new(),
    };
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_owned());
    }
    if let Some(seed) = &config.nkey {
        options = options.nkey(seed.expose().to_owned());
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(options
        .name("orrery")
        .connection_timeout(Duration::from_secs(5)))
}

fn server_addrs(config: &NatsConfig) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    config
        .url
        .split(',')
        .map(|s| s.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing NATS URL `{}`", config.url))
}

/// [`connect`], counting (re)connections in `events` and recording, and logging with its
/// subject, every permission the server denies.
#[tracing::instrument(skip_all, fields(url = %config.url))]
pub async fn connect_watching(
    config: &NatsConfig,
    events: Arc<BusEvents>,
) -> anyhow::Result<Client> {
    let options = credentials(config)
        .await?
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            // Capped exponential backoff: quick after a blip, gentle when NATS is down for long.
            Duration::from_millis((100u64 << attempts.min(5)).min(2_000))
        })
        .event_callback(move |event| {
            let events = Arc::clone(&events);
            async move {
                match event {
                    async_nats::Event::Connected => {
                        events.connects.fetch_add(1, Ordering::Relaxed);
                        events.set_unreachable(None);
                        tracing::info!("connected to NATS")
                    }
                    async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                    async_nats::Event::ServerError(async_nats::ServerError::Other(message)) => {
                        match events.server_error(&message, std::time::Instant::now()) {
                            Some(denial) if denial.worth_logging() => tracing::error!(
                                operation = denial.operation,
                                subject = %denial.subject,
                                times = denial.count,
                                "NATS denied a permission Orrery needs: grant it to this user"
                            ),
                            Some(_) => {}
                            None => tracing::warn!(error = %message, "NATS server error"),
                        }
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        });
    options
        .connect(server_addrs(config)?)
        .await
        .context("configuring the NATS connection")
}

/// Why NATS cannot be reached with `config` right now, in the words of one fresh attempt
/// (`TLS error: invalid peer certificate: UnknownIssuer`, `authorization violation`…), or
/// `None` if that attempt connects. The daemon's own connection retries in silence: its
/// events say only "TLS error", not which certificate or why.
pub async fn diagnose(config: &NatsConfig) -> Option<String> {
    let attempt = async {
        let client = credentials(config)
            .await?
            .connect(server_addrs(config)?)
            .await?;
        drop(client);
        anyhow::Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(error_chain(e.as_ref())),
        Err(_) => Some("no answer within 10 s".to_owned()),
    }
}

/// `error: its source: its source…`, each cause once.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// Waits up to `limit` for the client's first (or next) connection; `true` once connected.
pub async fn wait_connected(client: &Client, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !is_connected(client) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// `true` while the client holds a live connection to a server.
pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// The oldest nats-server Orrery runs against, as (major, minor). Before 2.11 a message lost
/// during a leader election could block its own retries for the whole duplicate window: a
/// silent loss for publishers that retry with the same `Nats-Msg-Id`, as Orrery's do.
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 11);

/// Checks the version a server announced (`2.15.1`, `2.11.0-RC.2`); the error is the one
/// line an operator reads.
pub fn check_server_version(version: &str) -> Result<(), String> {
    let (major, minor) = MIN_SERVER_VERSION;
    let mut parts = version.trim().trim_start_matches('v').split(['.', '-']);
    let number = |part: Option<&str>| part.and_then(|p| p.parse::<u64>().ok());
    match (number(parts.next()), number(parts.next())) {
        (Some(a), Some(b)) if (a, b) >= (major, minor) => Ok(()),
        (Some(_), Some(_)) => Err(format!(
            "nats-server {version} is too old: Orrery needs {major}.{minor} or later \
             (older servers can lose a message published during a leader election)"
        )),
        _ => Err(format!(
            "nats-server announced version `{}`, which cannot be read: Orrery needs \
             {major}.{minor} or later",
            version.escape_debug()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::check_server_version;

    #[test]
    fn server_versions_from_2_11_pass_and_older_or_unreadable_ones_are_refused() {
        for ok in [
            "2.11.0",
            "2.15.1",
            "2.11.0-RC.2",
            "v2.12.3",
            "3.0.0",
            "2.100.1",
        ] {
            assert_eq!(check_server_version(ok), Ok(()), "{ok}");
        }
        for old in ["2.10.26", "2.9.0", "1.4.1", "2.1"] {
            let error = check_server_version(old).unwrap_err();
            assert!(error.contains(old) && error.contains("2.11"), "{error}");
        }
        for unreadable in [
            "",
            "two.eleven",
            "2",
            "2.x.1",
            "-1.20",
            "99999999999999999999999.1",
        ] {
            let error = check_server_version(unreadable).unwrap_err();
            assert!(error.contains("cannot be read"), "{unreadable}: {error}");
        }
    }
}
