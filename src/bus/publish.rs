//! Publishing events that the API originates (enqueued mutations, rollback commands,
//! provider heartbeats, Alertmanager alerts), each de-duplicated by its `Nats-Msg-Id`.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, publish::PublishAck};

/// One event to publish: subject, `Nats-Msg-Id` and envelope bytes.
pub struct Outgoing {
    /// Subject to publish on.
    pub subject: String,
    /// Deduplication id (also the envelope id).
    pub msg_id: String,
    /// The envelope.
    pub body: Vec<u8>,
}

/// Why the bus did not confirm a publish.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Not every ack came back within the timeout.
    #[error("the bus did not acknowledge in time")]
    Timeout,
    /// JetStream refused or the connection failed.
    #[error("publishing to the bus failed: {0}")]
    Failed(#[from] async_nats::error::Error<PublishErrorKind>),
}

/// Publishes `events` in order with their `Nats-Msg-Id`, acks pipelined, and waits for every
/// ack within `timeout`; the acks come back in the order of `events`.
pub async fn publish_all(
    js: &jetstream::Context,
    timeout: Duration,
    events: Vec<Outgoing>,
) -> Result<Vec<PublishAck>, PublishError> {
    let publish = async {
        let mut pending = Vec::with_capacity(events.len());
        for e in events {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", e.msg_id.as_str());
            pending.push(
                js.publish_with_headers(e.subject, headers, e.body.into())
                    .await?,
            );
        }
        let mut acks = Vec::with_capacity(pending.len());
        for ack in pending {
            acks.push(ack.await?);
        }
        Ok(acks)
    };
    tokio::time::timeout(timeout, publish)
        .await
        .map_err(|_| PublishError::Timeout)?
}

/// [`publish_all`] for a single event.
pub async fn publish_one(
    js: &jetstream::Context,
    timeout: Duration,
    event: Outgoing,
) -> Result<PublishAck, PublishError> {
    let mut acks = publish_all(js, timeout, vec![event]).await?;
    // One event in, one ack out: `publish_all` returns an ack per event or an error.
    acks.pop().ok_or(PublishError::Timeout)
}
