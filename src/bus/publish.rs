//! Publishing events that the API originates (enqueued mutations, rollback commands,
//! provider heartbeats, Alertmanager alerts), each de-duplicated by its `Nats-Msg-Id`.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use async_nats::jetstream::{self, context::PublishErrorKind, publish::PublishAck};

use super::BusEvents;

/// One event to publish: subject, `Nats-Msg-Id` and envelope bytes.
pub struct Outgoing {
    /// Subject to publish on.
    pub subject: String,
    /// Deduplication id (also the envelope id).
    pub msg_id: String,
    /// The envelope.
    pub body: Bytes,
    /// Publish only if the last message on `subject` has this sequence (0: none yet):
    /// JetStream refuses it otherwise, so two writers cannot both append.
    pub expected_last_subject_seq: Option<u64>,
}

/// Why the bus did not confirm a publish.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Not every ack came back within the timeout, however often it was tried.
    #[error("the bus did not acknowledge in time")]
    Timeout,
    /// Another message landed on the subject since the sequence the publish expected.
    #[error("another event was recorded on {0} meanwhile")]
    Superseded(String),
    /// The server refused the publish for want of a permission: no retry can help.
    #[error("NATS denied publish to `{0}`: grant Orrery's NATS user that permission (README: NATS permissions)")]
    Denied(String),
    /// JetStream refused or the connection failed.
    #[error("publishing to the bus failed: {0}")]
    Failed(#[from] async_nats::error::Error<PublishErrorKind>),
}

/// How long a publish is retried: on a cluster, publishes fail for a few seconds while a
/// new stream leader is elected (measured: 4–8 s after the leader is killed).
pub const RETRY_FOR: Duration = Duration::from_secs(20);

/// Publishes `events` in order with their `Nats-Msg-Id`, acks pipelined, and waits for every
/// ack; the acks come back in the order of `events`. An attempt that fails or takes longer
/// than `attempt_timeout` is repeated whole, with the same ids, for up to [`RETRY_FOR`]:
/// JetStream drops what already landed as duplicates and acks it with the original
/// sequence. A publish the server denies (it says so on the connection, seen by `bus`)
/// fails at once with [`PublishError::Denied`] naming the subject.
pub async fn publish_all(
    js: &jetstream::Context,
    bus: &BusEvents,
    attempt_timeout: Duration,
    events: Vec<Outgoing>,
) -> Result<Vec<PublishAck>, PublishError> {
    let deadline = Instant::now() + RETRY_FOR;
    let mut delay = Duration::from_millis(100);
    loop {
        let started = std::time::Instant::now();
        let denied = || {
            events
                .iter()
                .find(|e| bus.publish_denied_since(&e.subject, started))
                .map(|e| PublishError::Denied(e.subject.clone()))
        };
        let publishing = tokio::time::timeout(attempt_timeout, attempt(js, &events));
        tokio::pin!(publishing);
        // The server says "denied" on the connection, not in an ack: wait for whichever
        // comes first, so a denied publish fails now instead of at the timeout.
        let result = loop {
            let next_denial = bus.next_denial();
            tokio::select! {
                result = &mut publishing => break result.unwrap_or(Err(PublishError::Timeout)),
                () = next_denial => {
                    if let Some(error) = denied() {
                        return Err(error);
                    }
                }
            }
        };
        if result.is_err() {
            if let Some(error) = denied() {
                return Err(error);
            }
        }
        match result {
            Ok(acks) => return Ok(acks),
            // Final: retrying cannot make the expectation true. (A retry of a publish that
            // did land is answered as a duplicate first, by its Nats-Msg-Id.)
            Err(PublishError::Failed(e)) if e.kind() == PublishErrorKind::WrongLastSequence => {
                let subject = events
                    .iter()
                    .find(|e| e.expected_last_subject_seq.is_some())
                    .map_or_else(String::new, |e| e.subject.clone());
                return Err(PublishError::Superseded(subject));
            }
            Err(error) if Instant::now() + delay < deadline => {
                tracing::debug!(%error, retry_in_ms = delay.as_millis() as u64,
                    "publish not acknowledged; retrying with the same ids");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(error) => return Err(error),
        }
    }
}

/// One attempt of [`publish_all`].
async fn attempt(
    js: &jetstream::Context,
    events: &[Outgoing],
) -> Result<Vec<PublishAck>, PublishError> {
    let mut pending = Vec::with_capacity(events.len());
    for e in events {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", e.msg_id.as_str());
        if let Some(seq) = e.expected_last_subject_seq {
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                seq.to_string().as_str(),
            );
        }
        pending.push(
            js.publish_with_headers(e.subject.clone(), headers, e.body.clone())
                .await?,
        );
    }
    let mut acks = Vec::with_capacity(pending.len());
    for ack in pending {
        acks.push(ack.await?);
    }
    Ok(acks)
}

/// [`publish_all`] for a single event.
pub async fn publish_one(
    js: &jetstream::Context,
    bus: &BusEvents,
    timeout: Duration,
    event: Outgoing,
) -> Result<PublishAck, PublishError> {
    let mut acks = publish_all(js, bus, timeout, vec![event]).await?;
    // One event in, one ack out: `publish_all` returns an ack per event or an error.
    acks.pop().ok_or(PublishError::Timeout)
}
