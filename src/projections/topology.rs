//! `topology.<tid>.status` and `topology.<tid>.mutation.<state>` → `topologies`,
//! `topology_mutations`; committed events are handed to the live hub.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use crate::bus::envelope;
use crate::bus::streams::{self, StreamSpec};
use crate::bus::subjects;
use crate::db::rows_per_statement;
use crate::live::{self, Hub, LiveEvent};
use crate::projector::{Message, Projection, Table};
use crate::retention::{expired_at, Class};
use crate::window::format_unix_ms;

/// Lifecycle states of a mutation.
pub const STATES: [&str; 4] = ["enqueued", "applying", "applied", "failed"];
/// Longest status, op or actor accepted.
const MAX_SHORT: usize = 128;
/// Longest error text kept.
const MAX_ERROR: usize = 4096;

/// What a topology event changes.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `topology.<tid>.status`.
    Status {
        /// New status.
        status: String,
        /// Display name, when given.
        name: Option<String>,
    },
    /// `topology.<tid>.mutation.<state>`.
    Mutation {
        /// Mutation identity within the topology.
        mutation_id: String,
        /// One of [`STATES`].
        state: &'static str,
        /// Operation name.
        op: Option<String>,
        /// Operation arguments, a JSON object as text.
        spec: Option<String>,
        /// Who asked for it.
        actor: Option<String>,
        /// Failure text (failed only).
        error: Option<String>,
    },
}

/// A validated topology event.
#[derive(Debug, Clone)]
pub struct TopologyEvent {
    /// Topology id (subject token).
    pub topology_id: String,
    /// Stream sequence.
    pub seq: u64,
    /// Event time, Unix ms.
    pub ts: i64,
    /// JetStream publish time, Unix ms: what retention is judged against.
    pub published_ms: i64,
    /// The change.
    pub change: Change,
    /// The event as live clients receive it.
    pub live: LiveEvent,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusData {
    status: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct MutationData<'a> {
    mutation_id: String,
    #[serde(default)]
    op: Option<String>,
    #[serde(default, borrow)]
    spec: Option<&'a RawValue>,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

fn short(field: &str, v: &Option<String>) -> Result<(), String> {
    match v {
        Some(s) if s.is_empty() || s.len() > MAX_SHORT => {
            Err(format!("data.{field} must be 1 to {MAX_SHORT} characters"))
        }
        _ => Ok(()),
    }
}

/// Validates one topology message.
pub fn decode(msg: &Message<'_>) -> Result<TopologyEvent, String> {
    let bad_subject = || {
        format!(
            "subject must be topology.<tid>.status or topology.<tid>.mutation.<{}>, ids of {}",
            STATES.join("|"),
            subjects::TOKEN_FORM
        )
    };
    let mut parts = msg.subject.split('.');
    let (Some("topology"), Some(tid)) = (parts.next(), parts.next()) else {
        return Err(bad_subject());
    };
    if !subjects::is_token(tid) {
        return Err(bad_subject());
    }
    // Everything after `topology.<tid>.`; absent for a subject that stops at the id.
    let name = msg
        .subject
        .get("topology.".len() + tid.len() + 1..)
        .ok_or_else(bad_subject)?;
    let kind = match (parts.next(), parts.next(), parts.next()) {
        (Some("status"), None, None) => None,
        (Some("mutation"), Some(state), None) => Some(
            *STATES
                .iter()
                .find(|s| **s == state)
                .ok_or_else(bad_subject)?,
        ),
        _ => return Err(bad_subject()),
    };
    let env = envelope::decode::<&RawValue>(msg.payload)?;
    let ts = env.time_ms.unwrap_or(msg.published_ms);
    let change = match kind {
        None => {
            let d: StatusData = serde_json::from_str(env.data.get())
                .map_err(|e| format!("invalid status data: {e}"))?;
            short("status", &Some(d.status.clone()))?;
            short("name", &d.name)?;
            Change::Status {
                status: d.status,
                name: d.name,
            }
        }
        Some(state) => {
            let d: MutationData = serde_json::from_str(env.data.get())
                .map_err(|e| format!("invalid mutation data: {e}"))?;
            if !subjects::is_token(&d.mutation_id) {
                return Err(format!("data.mutation_id must be {}", subjects::TOKEN_FORM));
            }
            short("op", &d.op)?;
            short("actor", &d.actor)?;
            if d.spec
                .is_some_and(|s| !s.get().trim_start().starts_with('{'))
            {
                return Err("data.spec must be a JSON object".into());
            }
            let error = d.error.map(|mut e| {
                if e.len() > MAX_ERROR {
                    let mut cut = MAX_ERROR;
                    while !e.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    e.truncate(cut);
                }
                e
            });
            Change::Mutation {
                mutation_id: d.mutation_id,
                state,
                op: d.op,
                spec: d.spec.map(|s| s.get().to_owned()),
                actor: d.actor,
                error,
            }
        }
    };
    let live = LiveEvent::new(
        msg.seq,
        name.to_owned(),
        live::event_data(msg.subject, name, &format_unix_ms(ts), msg.seq, env.data),
    );
    Ok(TopologyEvent {
        topology_id: tid.to_owned(),
        seq: msg.seq,
        ts,
        published_ms: msg.published_ms,
        change,
        live,
    })
}

/// Writes a batch's topologies and mutations.
async fn write(conn: &mut SqliteConnection, events: &[TopologyEvent]) -> sqlx::Result<()> {
    // A chunk feeds two statements, of 5 and 11 binds a row.
    for chunk in events.chunks(rows_per_statement(11)) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO topologies (id, name, status, updated_at, last_seq) ");
        q.push_values(chunk, |mut b, e| {
            let (status, name) = match &e.change {
                Change::Status { status, name } => (Some(status.as_str()), name.as_deref()),
                Change::Mutation { .. } => (None, None),
            };
            b.push_bind(e.topology_id.as_str())
                .push_bind(name)
                .push_bind(status)
                .push_bind(e.ts)
                .push_bind(e.seq as i64);
        });
        q.push(
            " ON CONFLICT (id) DO UPDATE SET \
             name = COALESCE(excluded.name, topologies.name), \
             status = COALESCE(excluded.status, topologies.status), \
             updated_at = excluded.updated_at, last_seq = excluded.last_seq",
        );
        q.build().execute(&mut *conn).await?;

        let mutations: Vec<_> = chunk
            .iter()
            .filter_map(|e| match &e.change {
                Change::Mutation {
                    mutation_id,
                    state,
                    op,
                    spec,
                    actor,
                    error,
                } => Some((e, mutation_id, *state, op, spec, actor, error)),
                Change::Status { .. } => None,
            })
            .collect();
        if mutations.is_empty() {
            continue;
        }
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO topology_mutations (topology_id, mutation_id, op, spec, actor, \
             state, error, enqueued_at, enqueued_seq, updated_at, seq) ",
        );
        q.push_values(
            mutations,
            |mut b, (e, mutation_id, state, op, spec, actor, error)| {
                b.push_bind(e.topology_id.as_str())
                    .push_bind(mutation_id.as_str())
                    .push_bind(op.as_deref())
                    .push_bind(spec.as_deref())
                    .push_bind(actor.as_deref())
                    .push_bind(state)
                    .push_bind(error.as_deref())
                    .push_bind((state == "enqueued").then_some(e.ts))
                    .push_bind((state == "enqueued").then_some(e.seq as i64))
                    .push_bind(e.ts)
                    .push_bind(e.seq as i64);
            },
        );
        q.push(
            " ON CONFLICT (topology_id, mutation_id) DO UPDATE SET \
             op = COALESCE(excluded.op, topology_mutations.op), \
             spec = COALESCE(excluded.spec, topology_mutations.spec), \
             actor = COALESCE(excluded.actor, topology_mutations.actor), \
             state = excluded.state, error = excluded.error, \
             enqueued_at = COALESCE(topology_mutations.enqueued_at, excluded.enqueued_at), \
             enqueued_seq = COALESCE(topology_mutations.enqueued_seq, excluded.enqueued_seq), \
             updated_at = excluded.updated_at, seq = excluded.seq",
        );
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// The TOPOLOGY stream's projection; hands committed events to the hub.
pub struct TopologyProjection {
    hub: Arc<Hub>,
    /// Finished mutations' retention in ms (`None`: for ever). A mutation that had finished
    /// longer than this before an event about it was published is gone for that event,
    /// whether or not the pruner has removed it yet.
    retention_ms: Option<i64>,
}

impl TopologyProjection {
    /// A projection publishing to `hub`, keeping finished mutations for ever.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self {
            hub,
            retention_ms: None,
        }
    }

    /// The same, forgetting finished mutations after `retention_ms` (`None`: never).
    pub fn with_retention(mut self, retention_ms: Option<i64>) -> Self {
        self.retention_ms = retention_ms;
        self
    }
}

/// Mutation keys looked up per statement.
const KEYS_PER_STATEMENT: usize = 400;

/// A mutation event's (topology, mutation) and state.
fn mutation(e: &TopologyEvent) -> Option<((&str, &str), &'static str)> {
    match &e.change {
        Change::Mutation {
            mutation_id, state, ..
        } => Some(((e.topology_id.as_str(), mutation_id.as_str()), *state)),
        Change::Status { .. } => None,
    }
}

/// Deletes the stored mutations the batch names that had finished longer than `retention_ms`
/// before the event naming them was published, so that they are written afresh, as on a
/// replica whose pruner already removed them. `Ok(false)` when that would have to happen
/// between two events of the batch (a mutation finishing, then named again past its
/// retention): the caller then applies the batch one event at a time.
async fn forget_expired(
    conn: &mut SqliteConnection,
    events: &[TopologyEvent],
    retention_ms: i64,
) -> sqlx::Result<bool> {
    let mut keys: Vec<(&str, &str)> = events.iter().filter_map(mutation).map(|(k, _)| k).collect();
    keys.sort_unstable();
    keys.dedup();
    let stored = super::times_of_pairs(
        conn,
        "SELECT topology_id, mutation_id, updated_at FROM topology_mutations \
         WHERE state IN ('applied', 'failed') AND (topology_id, mutation_id) IN (",
        &keys,
    )
    .await?;
    // Per key: when it finished, if it has, and whether this batch wrote that.
    let mut latest: HashMap<(&str, &str), (Option<i64>, bool)> = HashMap::new();
    let mut stale = Vec::new();
    for e in events {
        let Some((key, state)) = mutation(e) else {
            continue;
        };
        let (finished, in_batch) = latest
            .get(&key)
            .copied()
            .unwrap_or((stored.get(&key).copied(), false));
        if finished.is_some_and(|at| expired_at(at, e.published_ms, Some(retention_ms))) {
            if in_batch {
                return Ok(false);
            }
            stale.push(key);
        }
        let done = matches!(state, "applied" | "failed");
        latest.insert(key, (done.then_some(e.ts), true));
    }
    for chunk in stale.chunks(KEYS_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "DELETE FROM topology_mutations WHERE (topology_id, mutation_id) IN (",
        );
        q.push_values(chunk, |mut b, (t, m)| {
            b.push_bind(*t).push_bind(*m);
        });
        q.push(")");
        q.build().execute(&mut *conn).await?;
    }
    Ok(true)
}

impl Projection for TopologyProjection {
    type Event = TopologyEvent;

    fn stream(&self) -> StreamSpec {
        streams::TOPOLOGY
    }

    fn decode(&self, msg: &Message<'_>) -> Result<TopologyEvent, String> {
        decode(msg)
    }

    async fn apply(
        &self,
        conn: &mut SqliteConnection,
        events: &[TopologyEvent],
    ) -> sqlx::Result<()> {
        let Some(retention) = self.retention_ms else {
            return write(conn, events).await;
        };
        if forget_expired(conn, events, retention).await? {
            return write(conn, events).await;
        }
        for e in events {
            let one = std::slice::from_ref(e);
            forget_expired(conn, one, retention).await?;
            write(conn, one).await?;
        }
        Ok(())
    }

    fn committed(&self, events: &[TopologyEvent]) {
        for e in events {
            self.hub.publish(&e.topology_id, e.live.clone());
        }
    }

    fn tables(&self) -> &'static [Table] {
        const TABLES: &[Table] = &[
            Table::keyed("topologies", "id"),
            // Only finished mutations leave: a topology's pending work is its current state.
            Table::kept(
                "topology_mutations",
                "topology_id, mutation_id",
                Class::Mutations,
                "state NOT IN ('applied', 'failed') OR updated_at >= ?1",
                "DELETE FROM topology_mutations WHERE rowid IN (SELECT rowid \
                 FROM topology_mutations WHERE state IN ('applied', 'failed') \
                 AND updated_at < ?1 LIMIT ?2)",
            ),
        ];
        TABLES
    }

    async fn reset(&self, conn: &mut SqliteConnection) -> sqlx::Result<()> {
        super::delete_all(conn, &["topology_mutations", "topologies"]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg<'a>(subject: &'a str, payload: &'a [u8]) -> Message<'a> {
        Message {
            seq: 9,
            subject,
            payload,
            published_ms: 1_000,
        }
    }

    #[test]
    fn decodes_status_and_mutations() {
        let s = decode(&msg(
            "topology.lab-eu.status",
            br#"{"id":"e","time":"1970-01-01T00:00:02Z","data":{"status":"active","name":"EU lab"}}"#,
        ))
        .unwrap();
        assert_eq!(s.topology_id, "lab-eu");
        assert_eq!(s.ts, 2_000);
        assert_eq!(s.live.name, "status");
        let m = decode(&msg(
            "topology.lab-eu.mutation.failed",
            br#"{"id":"e","data":{"mutation_id":"mut-17","op":"add_decky","error":"bridge gone"}}"#,
        ))
        .unwrap();
        assert_eq!(m.live.name, "mutation.failed");
        assert!(matches!(
            m.change,
            Change::Mutation {
                state: "failed",
                ..
            }
        ));
        let live: serde_json::Value = serde_json::from_str(&m.live.data).unwrap();
        assert_eq!(live["topic"], "topology.lab-eu.mutation.failed");
        assert_eq!(live["type"], "mutation.failed");
        assert_eq!(live["seq"], 9);
        assert_eq!(live["payload"]["mutation_id"], "mut-17");
    }

    #[test]
    fn rejects_bad_subjects_and_data() {
        let ok = br#"{"id":"e","data":{"mutation_id":"m1"}}"#;
        for subject in [
            "topology.lab.mutation.done",
            "topology.lab.mutation",
            "topology.lab",
            "topology.la b.status",
            "topology.lab.status.extra",
            "topo.lab.status",
        ] {
            assert!(decode(&msg(subject, ok)).is_err(), "{subject}");
        }
        for payload in [
            &br#"{"id":"e","data":{"status":""}}"#[..],
            br#"{"id":"e","data":{"status":"x","color":"red"}}"#,
            br#"{"id":"e","data":{"status":7}}"#,
            br#"{"id":"e","data":[]}"#,
        ] {
            assert!(decode(&msg("topology.lab.status", payload)).is_err());
        }
        for payload in [
            &br#"{"id":"e","data":{"op":"x"}}"#[..],
            br#"{"id":"e","data":{"mutation_id":"a.b"}}"#,
            br#"{"id":"e","data":{"mutation_id":"m","spec":[1]}}"#,
        ] {
            assert!(decode(&msg("topology.lab.mutation.enqueued", payload)).is_err());
        }
    }
}
