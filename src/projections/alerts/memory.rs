//! What the ALERTS projection remembers between batches — which `(provider,
//! provider_event_id)` it has seen, and each recurrence group's running figures — and when it
//! forgets: a key or group last seen longer than the alerts' retention before an event's
//! publish time is new again for that event, on every replica, pruned yet or not.

use std::collections::HashMap;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::{AlertEvent, AlertsProjection, KEY_PAIRS_PER_STATEMENT};
use crate::db::rows_per_statement;
use crate::projections::times_of_pairs;

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
    /// The stored group had expired (or this batch outlived an earlier delta of it): the
    /// delta replaces the stored figures instead of adding to them.
    restart: bool,
}

impl AlertsProjection {
    /// Flags each event of a batch that repeats a `(provider, provider_event_id)` seen before
    /// (in an earlier batch or earlier in this one) and records the new keys with the time
    /// they were first seen and that sighting's group, which linked runs look up.
    pub(super) async fn mark_duplicates(
        &self,
        conn: &mut SqliteConnection,
        events: &[AlertEvent],
    ) -> sqlx::Result<Vec<bool>> {
        // Which keys were seen before this batch, and when, then walk the batch in order.
        let mut keys: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.provider.as_str(), e.provider_event_id.as_str()))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut seen = times_of_pairs(
            conn,
            "SELECT provider, provider_event_id, first_received_at FROM alert_event_keys \
             WHERE (provider, provider_event_id) IN (",
            &keys,
        )
        .await?;
        // Per new key, the sighting that set it last (a key can expire within a batch).
        let mut fresh: HashMap<(&str, &str), &AlertEvent> = HashMap::new();
        let duplicate: Vec<bool> = events
            .iter()
            .map(|e| {
                let key = (e.provider.as_str(), e.provider_event_id.as_str());
                match seen.get(&key) {
                    Some(&at) if !self.expired(at, e) => true,
                    _ => {
                        seen.insert(key, e.received_at);
                        fresh.insert(key, e);
                        false
                    }
                }
            })
            .collect();
        let mut fresh: Vec<((&str, &str), &AlertEvent)> = fresh.into_iter().collect();
        fresh.sort_unstable_by_key(|(key, _)| *key);
        for chunk in fresh.chunks(KEY_PAIRS_PER_STATEMENT) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO alert_event_keys (provider, provider_event_id, first_received_at, \
                 project_id, recurrence_key) ",
            );
            q.push_values(chunk, |mut b, ((p, id), e)| {
                b.push_bind(*p)
                    .push_bind(*id)
                    .push_bind(e.received_at)
                    .push_bind(e.project_id.as_str())
                    .push_bind(e.recurrence_key.as_deref());
            });
            q.push(
                " ON CONFLICT (provider, provider_event_id) DO UPDATE SET \
                 first_received_at = excluded.first_received_at, \
                 project_id = excluded.project_id, recurrence_key = excluded.recurrence_key",
            );
            q.build().execute(&mut *conn).await?;
        }
        Ok(duplicate)
    }

    /// Folds a batch into the recurrence groups (events arrive in stream order); synthetic
    /// events have no group.
    pub(super) async fn fold_recurrence(
        &self,
        conn: &mut SqliteConnection,
        rows: &[(&AlertEvent, bool)],
    ) -> sqlx::Result<()> {
        let stored = match self.retention_ms {
            Some(_) => self.stored_latest(conn, rows).await?,
            None => HashMap::new(),
        };
        let mut groups: Vec<GroupDelta<'_>> = Vec::new();
        let mut index: HashMap<(&str, &str), usize> = HashMap::new();
        for (e, dup) in rows {
            let Some(key) = e.recurrence_key.as_deref() else {
                continue;
            };
            let group = (e.project_id.as_str(), key);
            let at = e.received_at;
            let delta = GroupDelta {
                project_id: &e.project_id,
                key,
                provider: &e.provider,
                occurrences: 1,
                duplicates: i64::from(*dup),
                first: at,
                latest: at,
                latest_seq: e.seq as i64,
                restart: stored.get(&group).is_some_and(|&t| self.expired(t, e)),
            };
            match index.get(&group) {
                Some(&i) if self.expired(groups[i].latest, e) => {
                    groups[i] = GroupDelta {
                        restart: true,
                        ..delta
                    };
                }
                Some(&i) => {
                    let g = &mut groups[i];
                    g.occurrences += 1;
                    g.duplicates += i64::from(*dup);
                    g.latest = at;
                    g.latest_seq = e.seq as i64;
                    g.provider = &e.provider;
                }
                None => {
                    index.insert(group, groups.len());
                    groups.push(delta);
                }
            }
        }
        for restart in [false, true] {
            let part: Vec<&GroupDelta<'_>> =
                groups.iter().filter(|g| g.restart == restart).collect();
            for chunk in part.chunks(rows_per_statement(8)) {
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
                q.push(if restart {
                    " ON CONFLICT (project_id, recurrence_key) DO UPDATE SET \
                     provider = excluded.provider, \
                     occurrence_total = excluded.occurrence_total, \
                     duplicate_total = excluded.duplicate_total, \
                     first_received_at = excluded.first_received_at, \
                     latest_received_at = excluded.latest_received_at, \
                     latest_seq = excluded.latest_seq"
                } else {
                    " ON CONFLICT (project_id, recurrence_key) DO UPDATE SET \
                     provider = excluded.provider, \
                     occurrence_total = occurrence_total + excluded.occurrence_total, \
                     duplicate_total = duplicate_total + excluded.duplicate_total, \
                     first_received_at = MIN(first_received_at, excluded.first_received_at), \
                     latest_received_at = excluded.latest_received_at, \
                     latest_seq = excluded.latest_seq"
                });
                q.build().execute(&mut *conn).await?;
            }
        }
        Ok(())
    }

    /// When each stored group the batch touches was last seen.
    async fn stored_latest<'a>(
        &self,
        conn: &mut SqliteConnection,
        rows: &[(&'a AlertEvent, bool)],
    ) -> sqlx::Result<HashMap<(&'a str, &'a str), i64>> {
        let mut groups: Vec<(&str, &str)> = rows
            .iter()
            .filter_map(|(e, _)| Some((e.project_id.as_str(), e.recurrence_key.as_deref()?)))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        times_of_pairs(
            conn,
            "SELECT project_id, recurrence_key, latest_received_at FROM alert_recurrence \
             WHERE (project_id, recurrence_key) IN (",
            &groups,
        )
        .await
    }
}
