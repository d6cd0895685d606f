//! `orrery rebuild`: throw read models away and replay them from their streams.
//!
//! The bus is the truth, so this is always safe; run it with the daemon stopped, since a
//! running daemon keeps its own checkpoint in memory.

use anyhow::{bail, Context};
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::bus;
use crate::config::Config;
use crate::db;
use crate::projections;
use crate::projector::{AnyProjection, Outcome};

/// Where a replay stands, for a progress display: reported after every batch.
#[derive(Debug, Clone, Copy)]
pub struct Replay {
    /// The stream being replayed.
    pub stream: &'static str,
    /// Last sequence projected.
    pub checkpoint: u64,
    /// The stream's last sequence when the replay began: done once `checkpoint` reaches it.
    pub target: u64,
    /// Messages replayed so far in this stream.
    pub replayed: u64,
}

/// Resets and replays `stream` (or every projected stream), calling `progress` after each
/// batch; returns messages replayed. A damaged database file is set aside and every stream
/// replayed into a new one.
pub async fn rebuild(
    config: &Config,
    stream: Option<&str>,
    mut progress: impl FnMut(Replay),
) -> anyhow::Result<u64> {
    // Nobody listens during a rebuild.
    let roster = projections::roster(config, &projections::Listeners::unheard());
    if let Some(s) = stream {
        if !roster.iter().any(|p| p.stream().name == s) {
            let names: Vec<&str> = roster.iter().map(|p| p.stream().name).collect();
            bail!(
                "no projection reads stream `{s}` (projected: {})",
                names.join(", ")
            );
        }
    }
    let mut stream = stream;
    let db = match db::open_with(&config.database, 1, config.cache_mib).await {
        Ok(db) => db,
        Err(e) if e.downcast_ref::<db::Corrupt>().is_some() => {
            let aside = db::set_aside(&config.database)?;
            tracing::warn!(damaged = %aside.display(),
                "the database was damaged: set aside; rebuilding every read model from the bus");
            // A new file holds nothing: every stream is replayed, whatever --stream said.
            stream = None;
            db::open_with(&config.database, 1, config.cache_mib).await?
        }
        Err(e) => return Err(e),
    };
    let nats = bus::connect(&config.nats).await?;
    let js = jetstream::new(nats);
    let mut total = 0;
    for projection in roster {
        if stream.is_none_or(|s| s == projection.stream().name) {
            total += replay(projection, &js, &db.writer, config, &mut progress).await?;
        }
    }
    db.close().await;
    Ok(total)
}

async fn replay(
    projection: Box<dyn AnyProjection>,
    js: &jetstream::Context,
    writer: &sqlx::SqlitePool,
    config: &Config,
    progress: &mut impl FnMut(Replay),
) -> anyhow::Result<u64> {
    let name = projection.stream().name;
    let target = js
        .get_stream(name)
        .await
        .with_context(|| format!("reading stream {name}"))?
        .cached_info()
        .state
        .last_sequence;
    projection
        .reset(writer)
        .await
        .with_context(|| format!("resetting the {name} read model"))?;
    let mut projector = projection
        .projector(
            js.clone(),
            writer.clone(),
            // It runs alone: nothing else waits for the writer.
            crate::db::WriterDemand::default(),
            config.batch_size,
            config.batch_wait,
        )
        .await?;
    let cancel = CancellationToken::new();
    let mut replayed = 0u64;
    while projector.checkpoint() < target {
        match projector.step(&cancel).await? {
            Outcome::Applied { messages, .. } => {
                replayed += messages as u64;
                progress(Replay {
                    stream: name,
                    checkpoint: projector.checkpoint(),
                    target,
                    replayed,
                });
            }
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
