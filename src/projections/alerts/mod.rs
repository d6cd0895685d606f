//! `alert.<provider>.<project_id>` → `alert_events`, `alert_recurrence`, `alert_freshness`.
//!
//! Every text field is redacted during decoding, so the raw content of an alert exists only
//! in the decoder's memory: never in a row, a dead letter, a response or a log line. The
//! first `(provider, provider_event_id)` is the original; later ones are stored and flagged
//! as duplicates. Recurrence groups are kept up to date here so that the API reads a few
//! rows instead of grouping every event.

mod decode;

use std::borrow::Cow;
use std::collections::HashMap;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use crate::bus::streams::{self, StreamSpec};
use crate::db::rows_per_statement;
use crate::projector::{Message, Projection, Table};
use crate::redact;
pub use decode::{
    decode, recurrence_key, redact_payload, AlertEvent, MAX_CONTENT_STORED, MAX_FIELD_LEN,
    MAX_OBJECT_BYTES, MAX_URL_LEN, STAGES,
};

/// The ALERTS stream's projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct AlertsProjection;

/// Columns of an `alert_events` row.
const EVENT_COLUMNS: usize = 27;
/// Key pairs looked up or inserted per statement: a row-value `IN` list stays short.
const KEY_PAIRS_PER_STATEMENT: usize = 400;

/// One recurrence group's change within a batch.
struct GroupDelta<'a> {
    project_id: &'a str,
    key: &'a str,
    provider: &'a str,
    occurrences: i64,
    duplicates: i64,
    first: i64,
    latest: i64,
    latest_seq: i64,
}

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
        let duplicate = mark_duplicates(conn, events).await?;
        let rows: Vec<(&AlertEvent, bool)> = events.iter().zip(duplicate).collect();
        insert_events(conn, &rows).await?;
        // Runs that named these alerts before they were projected get their group now.
        let sightings: Vec<(&str, &str, &str, &str)> = rows
            .iter()
            .filter(|(_, dup)| !dup)
            .filter_map(|(e, _)| {
                Some((
                    e.provider.as_str(),
                    e.provider_event_id.as_str(),
                    e.project_id.as_str(),
                    e.recurrence_key.as_deref()?,
                ))
            })
            .collect();
        super::results::runs::resolve_for_alerts(conn, &sightings).await?;
        fold_recurrence(conn, &rows).await?;
        update_freshness(conn, events).await
    }

    fn tables(&self) -> &'static [Table] {
        const TABLES: &[Table] = &[
            Table::keyed("alert_events", "seq"),
            Table::keyed("alert_event_keys", "provider, provider_event_id"),
            Table::keyed("alert_recurrence", "project_id, recurrence_key"),
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

/// Flags each event of a batch that repeats a `(provider, provider_event_id)` seen before
/// (in an earlier batch or earlier in this one) and records the new keys.
async fn mark_duplicates(
    conn: &mut SqliteConnection,
    events: &[AlertEvent],
) -> sqlx::Result<Vec<bool>> {
    // Which keys were seen before this batch, then walk the batch in order.
    let mut keys: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.provider.as_str(), e.provider_event_id.as_str()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut seen: std::collections::HashSet<(String, String)> = Default::default();
    for chunk in keys.chunks(KEY_PAIRS_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT provider, provider_event_id FROM alert_event_keys \
             WHERE (provider, provider_event_id) IN (",
        );
        q.push_values(chunk, |mut b, (p, id)| {
            b.push_bind(*p).push_bind(*id);
        });
        q.push(")");
        let found: Vec<(String, String)> = q.build_query_as().fetch_all(&mut *conn).await?;
        seen.extend(found);
    }
    let mut fresh: Vec<(&str, &str)> = Vec::new();
    let duplicate: Vec<bool> = events
        .iter()
        .map(|e| {
            let key = (e.provider.clone(), e.provider_event_id.clone());
            if seen.contains(&key) {
                true
            } else {
                fresh.push((&e.provider, &e.provider_event_id));
                seen.insert(key);
                false
            }
        })
        .collect();
    for chunk in fresh.chunks(KEY_PAIRS_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT OR IGNORE INTO alert_event_keys (provider, provider_event_id) ",
        );
        q.push_values(chunk, |mut b, (p, id)| {
            b.push_bind(*p).push_bind(*id);
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(duplicate)
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

/// Folds a batch into the recurrence groups (events arrive in stream order); synthetic
/// events have no group.
async fn fold_recurrence(
    conn: &mut SqliteConnection,
    rows: &[(&AlertEvent, bool)],
) -> sqlx::Result<()> {
    let mut groups: Vec<GroupDelta<'_>> = Vec::new();
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    for (e, dup) in rows {
        let Some(key) = e.recurrence_key.as_deref() else {
            continue;
        };
        let at = e.received_at;
        match index.get(&(e.project_id.as_str(), key)) {
            Some(&i) => {
                let g = &mut groups[i];
                g.occurrences += 1;
                g.duplicates += i64::from(*dup);
                g.latest = at;
                g.latest_seq = e.seq as i64;
                g.provider = &e.provider;
            }
            None => {
                index.insert((&e.project_id, key), groups.len());
                groups.push(GroupDelta {
                    project_id: &e.project_id,
                    key,
                    provider: &e.provider,
                    occurrences: 1,
                    duplicates: i64::from(*dup),
                    first: at,
                    latest: at,
                    latest_seq: e.seq as i64,
                });
            }
        }
    }
    for chunk in groups.chunks(rows_per_statement(8)) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO alert_recurrence (project_id, recurrence_key, provider, \
             occurrence_total, duplicate_total, first_received_at, latest_received_at, \
             latest_seq) ",
        );
        q.push_values(chunk, |mut b, g| {
            b.push_bind(g.project_id)
                .push_bind(g.key)
                .push_bind(g.provider)
                .push_bind(g.occurrences)
                .push_bind(g.duplicates)
                .push_bind(g.first)
                .push_bind(g.latest)
                .push_bind(g.latest_seq);
        });
        q.push(
            " ON CONFLICT (project_id, recurrence_key) DO UPDATE SET \
             provider = excluded.provider, \
             occurrence_total = occurrence_total + excluded.occurrence_total, \
             duplicate_total = duplicate_total + excluded.duplicate_total, \
             first_received_at = MIN(first_received_at, excluded.first_received_at), \
             latest_received_at = excluded.latest_received_at, \
             latest_seq = excluded.latest_seq",
        );
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
