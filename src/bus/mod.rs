//! The NATS side: connection, stream provisioning, subject rules, the event envelope and
//! publishing.
//!
//! JetStream is the source of truth; everything here is about reaching it reliably and
//! reading what it holds without trusting the publisher.

pub mod envelope;
pub mod publish;
pub mod streams;
pub mod subjects;

use std::time::Duration;

use anyhow::Context;
use async_nats::{Client, ConnectOptions};

use crate::config::NatsConfig;

/// Connects to NATS in the background: the returned client retries the first connection and
/// every later one forever, so the daemon can start (and answer `/health`) before the bus is up.
#[tracing::instrument(skip_all, fields(url = %config.url))]
pub async fn connect(config: &NatsConfig) -> anyhow::Result<Client> {
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
    let options = options
        .name("orrery")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempts| {
            // Capped exponential backoff: quick after a blip, gentle when NATS is down for long.
            Duration::from_millis((100u64 << attempts.min(5)).min(2_000))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                other => tracing::debug!(event = %other, "NATS event"),
            }
        });
    let servers: Vec<&str> = config.url.split(',').map(str::trim).collect();
    let addrs = servers
        .iter()
        .map(|s| s.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing NATS URL `{}`", config.url))?;
    options
        .connect(addrs)
        .await
        .context("configuring the NATS connection")
}

/// `true` while the client holds a live connection to a server.
pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}
