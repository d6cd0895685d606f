//! Reading a stream again, up to where an older release had projected it, for what that
//! release read past.
//!
//! A migration that adds a projection of fields older releases never stored (a run's link
//! to an alert, a deploy's workload) cannot fill it from the rows. It records the stream and
//! its checkpoint in `stream_rereads`; before projecting anything new, that stream's projector
//! reads the stream again from its first message through that sequence and hands each event
//! to [`Projection::reapply`], which adds only those parts and must be idempotent. As far as
//! the stream still holds the messages, the upgraded database then equals a rebuilt one.
//! Progress is committed with each batch, so a restart resumes where it stopped.

use std::time::Duration;

use async_nats::jetstream;
use futures::{FutureExt, StreamExt};
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;

use super::{Message, Projection, ProjectorError};
use crate::window::to_unix_ms;

/// How long the stream may stay silent before it is taken to hold nothing more to re-read
/// (it no longer holds the last messages asked for).
const QUIET: Duration = Duration::from_secs(2);

/// Re-reads what `stream_rereads` asks of `projection`'s stream, if anything; returns once
/// done (the row deleted) or cancelled (progress kept).
pub(super) async fn run<P: Projection>(
    projection: &P,
    js: &jetstream::Context,
    writer: &SqlitePool,
    batch_size: usize,
    cancel: &CancellationToken,
) -> Result<(), ProjectorError> {
    let stream = projection.stream().name;
    let pending: Option<(i64, i64)> =
        sqlx::query_as("SELECT through_seq, done_seq FROM stream_rereads WHERE stream = ?1")
            .bind(stream)
            .fetch_optional(writer)
            .await?;
    let Some((through, done)) = pending else {
        return Ok(());
    };
    let (through, mut done) = (through.max(0) as u64, done.max(0) as u64);
    tracing::info!(
        stream,
        from = done + 1,
        through,
        "reading the stream again for what an older release did not keep"
    );
    if done < through {
        let mut messages = super::ordered_from(js, stream, done + 1).await?;
        while done < through {
            let mut raw = Vec::new();
            while raw.len() < batch_size {
                let next = if raw.is_empty() {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        next = tokio::time::timeout(QUIET, messages.next()) => match next {
                            Ok(next) => next,
                            Err(_) => break,
                        },
                    }
                } else {
                    match messages.next().now_or_never() {
                        Some(next) => next,
                        None => break,
                    }
                };
                match next {
                    Some(Ok(m)) => raw.push(m),
                    Some(Err(e)) => return Err(ProjectorError::bus("receiving", e)),
                    None => return Err(ProjectorError::ConsumerEnded),
                }
            }
            if raw.is_empty() {
                tracing::warn!(
                    stream,
                    from = done + 1,
                    through,
                    "the stream no longer holds these messages: what older releases did not \
                     keep of them stays missing"
                );
                break;
            }
            let mut events = Vec::with_capacity(raw.len());
            for m in &raw {
                let info = m
                    .info()
                    .map_err(|e| ProjectorError::bus("reading message metadata", e))?;
                let seq = info.stream_sequence;
                if seq > through {
                    // Nothing at or below `through` is left to deliver.
                    done = through;
                    break;
                }
                done = seq;
                let msg = Message {
                    seq,
                    subject: m.subject.as_str(),
                    payload: &m.payload,
                    published_ms: to_unix_ms(info.published),
                };
                // Dead letters were stored when the message was first projected.
                if let Ok(event) = super::decode_guarded(projection, &msg) {
                    events.push(event);
                }
            }
            let mut tx = writer.begin().await?;
            projection.reapply(&mut tx, &events).await?;
            sqlx::query("UPDATE stream_rereads SET done_seq = ?1 WHERE stream = ?2")
                .bind(done as i64)
                .bind(stream)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
    }
    sqlx::query("DELETE FROM stream_rereads WHERE stream = ?1")
        .bind(stream)
        .execute(writer)
        .await?;
    tracing::info!(stream, through = done, "read the stream again");
    Ok(())
}
