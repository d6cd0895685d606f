//! `orrery rebuild`: throw a read model away and replay it from its stream.
//!
//! The bus is the truth, so this is always safe; run it with the daemon stopped, since a
//! running daemon keeps its own checkpoint in memory.

use anyhow::{bail, Context};
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::bus::{self, streams};
use crate::config::Config;
use crate::db::{self, Db};
use crate::live::Hub;
use crate::projections::alerts::AlertsProjection;
use crate::projections::heartbeats::HeartbeatsProjection;
use crate::projections::results::ResultsProjection;
use crate::projections::topology::TopologyProjection;
use crate::projector::{self, Outcome, Projection, Projector};
use std::sync::Arc;

/// Streams that have a projection today.
pub const PROJECTED: [&str; 4] = [
    streams::RESULTS.name,
    streams::TOPOLOGY.name,
    streams::ALERTS.name,
    streams::HEARTBEATS.name,
];

/// Resets and replays `stream` (or every projected stream); returns messages replayed.
pub async fn rebuild(config: &Config, stream: Option<&str>) -> anyhow::Result<u64> {
    if let Some(s) = stream {
        if !PROJECTED.contains(&s) {
            bail!(
                "no projection reads stream `{s}` (projected: {})",
                PROJECTED.join(", ")
            );
        }
    }
    let db = db::open(&config.database, 1).await?;
    let nats = bus::connect(&config.nats).await?;
    let js = jetstream::new(nats);
    let mut total = 0;
    if stream.is_none_or(|s| s == streams::RESULTS.name) {
        total += replay(
            ResultsProjection {
                deploy_keep: config.fleet.deploy_history_keep,
            },
            &js,
            &db,
            config,
        )
        .await?;
    }
    if stream.is_none_or(|s| s == streams::TOPOLOGY.name) {
        // Nobody listens during a rebuild; the hub only satisfies the projection.
        let hub = Arc::new(Hub::new(1, 1, 0));
        total += replay(TopologyProjection::new(hub), &js, &db, config).await?;
    }
    if stream.is_none_or(|s| s == streams::HEARTBEATS.name) {
        total += replay(HeartbeatsProjection, &js, &db, config).await?;
    }
    if stream.is_none_or(|s| s == streams::ALERTS.name) {
        total += replay(AlertsProjection, &js, &db, config).await?;
    }
    db.close().await;
    Ok(total)
}

async fn replay<P: Projection>(
    projection: P,
    js: &jetstream::Context,
    db: &Db,
    config: &Config,
) -> anyhow::Result<u64> {
    let name = projection.stream().name;
    let target = js
        .get_stream(name)
        .await
        .with_context(|| format!("reading stream {name}"))?
        .cached_info()
        .state
        .last_sequence;
    projector::reset(&projection, &db.writer)
        .await
        .with_context(|| format!("resetting the {name} read model"))?;
    let mut projector = Projector::new(
        projection,
        js.clone(),
        db.writer.clone(),
        config.batch_size,
        config.batch_wait,
    )
    .await?;
    let cancel = CancellationToken::new();
    let mut replayed = 0u64;
    while projector.checkpoint() < target {
        match projector.project_next_batch(&cancel).await? {
            Outcome::Applied { messages, .. } => replayed += messages as u64,
            Outcome::Started { .. } => {}
            // Messages at the end of the stream may have been deleted: nothing more to read.
            Outcome::Idle | Outcome::Stopped => break,
        }
    }
    tracing::info!(
        stream = name,
        replayed,
        checkpoint = projector.checkpoint(),
        "rebuilt"
    );
    Ok(replayed)
}
