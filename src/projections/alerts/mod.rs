//! `alert.<provider>.<project_id>` → `alert_events`, `alert_recurrence`, `alert_freshness`.
//!
//! Every text field is redacted during decoding, so the raw content of an alert exists only
//! in the decoder's memory: never in a row, a dead letter, a response or a log line. The
//! first `(provider, provider_event_id)` is the original; later ones are stored and flagged
//! as duplicates. Recurrence groups are kept up to date here so that the API reads a few
//! rows instead of grouping every event.

mod decode;
mod memory;

use std::borrow::Cow;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::results::runs;
use crate::bus::streams::{self, StreamSpec};
use crate::db::rows_per_statement;
use crate::projector::{Message, Projection, Table};
use crate::redact;
use crate::retention::Class;
pub use decode::{
    decode, recurrence_key, redact_payload, AlertEvent, MAX_CONTENT_STORED, MAX_FIELD_LEN,
    MAX_OBJECT_BYTES, MAX_URL_LEN, STAGES,
};

/// The ALERTS stream's projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct AlertsProjection {
    /// The alerts' retention in ms (`None`: for ever). A dedupe key or recurrence group last
    /// seen longer than this before an event's publish time is new again for that event,
    /// whether or not the pruner has removed it yet.
    pub retention_ms: Option<i64>,
    /// The results' retention in ms (`None`: for ever), which runs linked to alerts follow.
    pub results_retention_ms: Option<i64>,
}

impl AlertsProjection {
    /// Whether a row last touched at `at` had expired when `event` was published.
    fn expired(&self, at: i64, event: &AlertEvent) -> bool {
        crate::retention::expired_at(at, event.received_at, self.retention_ms)
    }
}

/// Columns of an `alert_events` row.
const EVENT_COLUMNS: usize = 27;
/// Key pairs looked up or inserted per statement: a row-value `IN` list stays short.
const KEY_PAIRS_PER_STATEMENT: usize = 400;

impl Projection for AlertsProjection {
    type Event = AlertEvent;

    fn stream(&self) -> StreamSpec {
        streams::ALERTS
    }

    fn decode(&self, msg: &Message<'_>) -> Result<AlertEvent, String> {
        decode(msg)
    }

    fn dead_letter_payload<'a>(&self, payload: &'a [u8]) -> Cow<'a, [u8]> {
        Cow::Owned(redact_payload(payload))
    }

    async fn apply(&self, conn: &mut SqliteConnection, events: &[AlertEvent]) -> sqlx::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let duplicate = self.mark_duplicates(conn, events).await?;
        let rows: Vec<(&AlertEvent, bool)> = events.iter().zip(duplicate).collect();
        insert_events(conn, &rows).await?;
        // Runs that named these alerts before they were projected get their group now.
        let sightings: Vec<runs::Sighting<'_>> = rows
            .iter()
            .filter(|(_, dup)| !dup)
            .filter_map(|(e, _)| {
                Some((
                    e.provider.as_str(),
                    e.provider_event_id.as_str(),
                    e.project_id.as_str(),
                    e.recurrence_key.as_deref()?,
                    e.received_at,
                ))
            })
            .collect();
        runs::resolve_for_alerts(conn, &sightings, self.results_retention_ms).await?;
        self.fold_recurrence(conn, &rows).await?;
        update_freshness(conn, events).await
    }

    fn tables(&self) -> &'static [Table] {
        // `received_at` is the publish time, so events expire from the head of the table:
        // the pruner stops at the first one kept instead of reading every row.
        const TABLES: &[Table] = &[
            Table::kept(
                "alert_events",
                "seq",
                Class::Alerts,
                "received_at >= ?1",
                "DELETE FROM alert_events WHERE seq IN (SELECT seq FROM alert_events \
                 WHERE received_at < ?1 AND seq < COALESCE((SELECT seq FROM alert_events \
                 WHERE received_at >= ?1 ORDER BY seq LIMIT 1), 9223372036854775807) \
                 ORDER BY seq LIMIT ?2)",
            ),
            Table::kept(
                "alert_event_keys",
                "provider, provider_event_id",
                Class::Alerts,
                "first_received_at >= ?1",
                "DELETE FROM alert_event_keys WHERE (provider, provider_event_id) IN \
                 (SELECT provider, provider_event_id FROM alert_event_keys \
                 WHERE first_received_at < ?1 LIMIT ?2)",
            ),
            Table::kept(
                "alert_recurrence",
                "project_id, recurrence_key",
                Class::Alerts,
                "latest_received_at >= ?1",
                "DELETE FROM alert_recurrence WHERE rowid IN (SELECT rowid \
                 FROM alert_recurrence WHERE latest_received_at < ?1 LIMIT ?2)",
            ),
            // One row per provider and project: what freshness is judged by.
            Table::keyed("alert_freshness", "provider, project_id"),
        ];
        TABLES
    }

    async fn reset(&self, conn: &mut SqliteConnection) -> sqlx::Result<()> {
        super::results::runs::unresolve(conn).await?;
        super::delete_all(
            conn,
            &[
                "alert_events",
                "alert_event_keys",
                "alert_recurrence",
                "alert_freshness",
            ],
        )
        .await
    }
}

/// Inserts the events with their duplicate flags.
async fn insert_events(
    conn: &mut SqliteConnection,
    rows: &[(&AlertEvent, bool)],
) -> sqlx::Result<()> {
    for chunk in rows.chunks(rows_per_statement(EVENT_COLUMNS)) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT OR IGNORE INTO alert_events (seq, event_id, project_id, provider, stage, \
             provider_event_id, alertname, severity, namespace, target_resource, fingerprint, \
             recurrence_key, labels, annotations, content_redacted, content_sha256, \
             content_length, has_redacted_content, redaction_version, source_url, source_refs, \
             source_ref_counts, source_ref_total, is_duplicate, is_synthetic, provider_ts, received_at) ",
        );
        q.push_values(chunk, |mut b, (e, dup)| {
            b.push_bind(e.seq as i64)
                .push_bind(e.event_id.as_str())
                .push_bind(e.project_id.as_str())
                .push_bind(e.provider.as_str())
                .push_bind(e.stage.as_str())
                .push_bind(e.provider_event_id.as_str())
                .push_bind(e.alertname.as_deref())
                .push_bind(e.severity.as_deref())
                .push_bind(e.namespace.as_deref())
                .push_bind(e.target_resource.as_deref())
                .push_bind(e.fingerprint.as_deref())
                .push_bind(e.recurrence_key.as_deref())
                .push_bind(e.labels.as_deref())
                .push_bind(e.annotations.as_deref())
                .push_bind(e.content_redacted.as_deref())
                .push_bind(e.content_sha256.as_deref())
                .push_bind(e.content_length)
                .push_bind(e.has_redacted_content)
                .push_bind(redact::VERSION)
                .push_bind(e.source_url.as_deref())
                .push_bind(e.source_refs.as_deref())
                .push_bind(e.source_ref_counts.as_str())
                .push_bind(e.source_ref_total)
                .push_bind(*dup)
                .push_bind(e.is_synthetic)
                .push_bind(e.provider_ts)
                .push_bind(e.received_at);
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Keeps the last event per provider and project, heartbeats included.
async fn update_freshness(conn: &mut SqliteConnection, events: &[AlertEvent]) -> sqlx::Result<()> {
    let mut latest: Vec<&AlertEvent> = Vec::new();
    for e in events.iter().rev() {
        if !latest
            .iter()
            .any(|l| l.provider == e.provider && l.project_id == e.project_id)
        {
            latest.push(e);
        }
    }
    for chunk in latest.chunks(rows_per_statement(4)) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO alert_freshness (provider, project_id, last_received_at, last_stage) ",
        );
        q.push_values(chunk, |mut b, e| {
            b.push_bind(e.provider.as_str())
                .push_bind(e.project_id.as_str())
                .push_bind(e.received_at)
                .push_bind(e.stage.as_str());
        });
        q.push(
            " ON CONFLICT (provider, project_id) DO UPDATE SET \
             last_received_at = MAX(last_received_at, excluded.last_received_at), \
             last_stage = excluded.last_stage",
        );
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}
