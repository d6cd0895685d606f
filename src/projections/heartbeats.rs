//! `heartbeat.<agent_id>` → `agents`, `system_stats_samples`, `container_stats_samples`,
//! and the shared `workloads` ([`super::workloads`]).
//!
//! A large fleet beats mostly redundant state: `agents` gets one upsert per agent per batch
//! (its newest heartbeat), while every stats sample is kept.

use serde::Deserialize;
use serde_json::{Map, Value};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use crate::bus::envelope;
use crate::bus::streams::{self, StreamSpec};
use crate::bus::subjects;
use crate::db::rows_per_statement;
use crate::projections::workloads;
use crate::projector::{Message, Projection, Table, Window};

/// Longest hostname, version, container id or role.
pub const MAX_FIELD_LEN: usize = 256;
/// Most containers one heartbeat may report.
pub const MAX_CONTAINERS: usize = 512;
/// Largest `labels` object, as JSON.
pub const MAX_LABELS_BYTES: usize = 8 * 1024;

#[derive(Debug, Deserialize)]
struct Stats {
    #[serde(default)]
    cpu_percent: Option<f64>,
    #[serde(default)]
    memory_usage: Option<i64>,
    #[serde(default)]
    memory_limit: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct ContainerData {
    container_id: String,
    #[serde(default)]
    workload_id: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    cpu_percent: Option<f64>,
    #[serde(default)]
    memory_usage: Option<i64>,
    #[serde(default)]
    memory_limit: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct HeartbeatData {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    labels: Option<Map<String, Value>>,
    #[serde(default)]
    stats: Option<Stats>,
    #[serde(default)]
    containers: Vec<ContainerData>,
}

/// One container's sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSample {
    /// Container id.
    pub container_id: String,
    /// The workload it belongs to.
    pub workload_id: Option<String>,
    /// Its role in the workload.
    pub role: Option<String>,
    /// CPU, percent.
    pub cpu_percent: Option<f64>,
    /// Memory in use, bytes.
    pub memory_usage: Option<i64>,
    /// Memory limit, bytes.
    pub memory_limit: Option<i64>,
}

/// A system sample: cpu %, memory usage and memory limit (bytes), each when reported.
pub type SystemStats = (Option<f64>, Option<i64>, Option<i64>);

/// A validated heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// Stream sequence.
    pub seq: u64,
    /// The agent (subject token).
    pub agent_id: String,
    /// Heartbeat time: envelope time, else publish time.
    pub at: i64,
    /// Reported hostname.
    pub hostname: Option<String>,
    /// Agent version.
    pub version: Option<String>,
    /// Labels, as JSON.
    pub labels: Option<String>,
    /// System sample.
    pub stats: Option<SystemStats>,
    /// Container samples.
    pub containers: Vec<ContainerSample>,
}

fn bounded(name: &str, v: Option<String>) -> Result<Option<String>, String> {
    match v {
        Some(s) if s.len() > MAX_FIELD_LEN => {
            Err(format!("data.{name} must be at most {MAX_FIELD_LEN} bytes"))
        }
        other => Ok(other),
    }
}

fn measure(
    name: &str,
    cpu: Option<f64>,
    usage: Option<i64>,
    limit: Option<i64>,
) -> Result<(), String> {
    if cpu.is_some_and(|c| !c.is_finite() || c < 0.0) {
        return Err(format!("{name}.cpu_percent must be a number ≥ 0"));
    }
    if usage.is_some_and(|u| u < 0) || limit.is_some_and(|l| l < 0) {
        return Err(format!("{name} memory figures must be ≥ 0"));
    }
    Ok(())
}

/// Validates one heartbeat message.
pub fn decode(msg: &Message<'_>) -> Result<Heartbeat, String> {
    let [_, agent_id] = subjects::split::<2>(msg.subject, "heartbeat").ok_or_else(|| {
        format!(
            "subject must be heartbeat.<agent_id> with a token of {}",
            subjects::TOKEN_FORM
        )
    })?;
    let env = envelope::decode::<HeartbeatData>(msg.payload)?;
    let d = env.data;
    if d.containers.len() > MAX_CONTAINERS {
        return Err(format!(
            "data.containers holds at most {MAX_CONTAINERS} entries"
        ));
    }
    let labels = match d.labels {
        None => None,
        Some(l) => {
            let s = Value::Object(l).to_string();
            if s.len() > MAX_LABELS_BYTES {
                return Err(format!(
                    "data.labels must be at most {MAX_LABELS_BYTES} bytes"
                ));
            }
            Some(s)
        }
    };
    let stats = match d.stats {
        None => None,
        Some(s) => {
            measure("data.stats", s.cpu_percent, s.memory_usage, s.memory_limit)?;
            Some((s.cpu_percent, s.memory_usage, s.memory_limit))
        }
    };
    let mut containers = Vec::with_capacity(d.containers.len());
    for (i, c) in d.containers.into_iter().enumerate() {
        if c.container_id.is_empty() || c.container_id.len() > MAX_FIELD_LEN {
            return Err(format!(
                "data.containers[{i}].container_id must be 1 to {MAX_FIELD_LEN} bytes"
            ));
        }
        if c.workload_id
            .as_deref()
            .is_some_and(|w| !subjects::is_token(w))
        {
            return Err(format!(
                "data.containers[{i}].workload_id must be {}",
                subjects::TOKEN_FORM
            ));
        }
        measure(
            &format!("data.containers[{i}]"),
            c.cpu_percent,
            c.memory_usage,
            c.memory_limit,
        )?;
        containers.push(ContainerSample {
            container_id: c.container_id,
            workload_id: c.workload_id,
            role: bounded("role", c.role)?,
            cpu_percent: c.cpu_percent,
            memory_usage: c.memory_usage,
            memory_limit: c.memory_limit,
        });
    }
    Ok(Heartbeat {
        seq: msg.seq,
        agent_id: agent_id.to_owned(),
        at: env.time_ms.unwrap_or(msg.published_ms),
        hostname: bounded("hostname", d.hostname)?,
        version: bounded("version", d.version)?,
        labels,
        stats,
        containers,
    })
}

/// The HEARTBEATS stream's projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeartbeatsProjection;

impl Projection for HeartbeatsProjection {
    type Event = Heartbeat;

    fn stream(&self) -> StreamSpec {
        streams::HEARTBEATS
    }

    fn decode(&self, msg: &Message<'_>) -> Result<Heartbeat, String> {
        decode(msg)
    }

    async fn apply(&self, conn: &mut SqliteConnection, events: &[Heartbeat]) -> sqlx::Result<()> {
        // Newest heartbeat per agent in this batch (by event time, then stream order).
        let mut newest: std::collections::HashMap<&str, &Heartbeat> = Default::default();
        for e in events {
            newest
                .entry(&e.agent_id)
                .and_modify(|cur| {
                    if e.at >= cur.at {
                        *cur = e;
                    }
                })
                .or_insert(e);
        }
        // In key order, here and below: consecutive inserts then land on the same B-tree
        // pages, which SQLite finds warm in its cache.
        let mut agents: Vec<&Heartbeat> = newest.into_values().collect();
        agents.sort_unstable_by(|a, b| a.agent_id.cmp(&b.agent_id));
        for chunk in agents.chunks(rows_per_statement(6)) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO agents (agent_id, hostname, version, labels, last_heartbeat, last_seq) ",
            );
            q.push_values(chunk, |mut b, e| {
                b.push_bind(e.agent_id.as_str())
                    .push_bind(e.hostname.as_deref())
                    .push_bind(e.version.as_deref())
                    .push_bind(e.labels.as_deref())
                    .push_bind(e.at)
                    .push_bind(e.seq as i64);
            });
            // An older heartbeat replayed late never moves an agent back in time.
            q.push(
                " ON CONFLICT (agent_id) DO UPDATE SET hostname = excluded.hostname, \
                 version = excluded.version, labels = excluded.labels, \
                 last_heartbeat = excluded.last_heartbeat, last_seq = excluded.last_seq \
                 WHERE excluded.last_heartbeat >= agents.last_heartbeat",
            );
            q.build().execute(&mut *conn).await?;
        }

        let mut system: Vec<(&Heartbeat, SystemStats)> = events
            .iter()
            .filter_map(|e| e.stats.map(|s| (e, s)))
            .collect();
        system.sort_unstable_by(|(a, _), (b, _)| (&a.agent_id, a.at).cmp(&(&b.agent_id, b.at)));
        for chunk in system.chunks(rows_per_statement(6)) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR IGNORE INTO system_stats_samples \
                 (seq, agent_id, at, cpu_percent, memory_usage, memory_limit) ",
            );
            q.push_values(chunk, |mut b, (e, (cpu, usage, limit))| {
                b.push_bind(e.seq as i64)
                    .push_bind(e.agent_id.as_str())
                    .push_bind(e.at)
                    .push_bind(*cpu)
                    .push_bind(*usage)
                    .push_bind(*limit);
            });
            q.build().execute(&mut *conn).await?;
        }

        let containers: Vec<(&Heartbeat, usize, &ContainerSample)> = events
            .iter()
            .flat_map(|e| e.containers.iter().enumerate().map(move |(i, c)| (e, i, c)))
            .collect();
        for chunk in containers.chunks(rows_per_statement(10)) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR IGNORE INTO container_stats_samples (seq, idx, agent_id, container_id, \
                 workload_id, role, at, cpu_percent, memory_usage, memory_limit) ",
            );
            q.push_values(chunk, |mut b, (e, i, c)| {
                b.push_bind(e.seq as i64)
                    .push_bind(*i as i64)
                    .push_bind(e.agent_id.as_str())
                    .push_bind(c.container_id.as_str())
                    .push_bind(c.workload_id.as_deref())
                    .push_bind(c.role.as_deref())
                    .push_bind(e.at)
                    .push_bind(c.cpu_percent)
                    .push_bind(c.memory_usage)
                    .push_bind(c.memory_limit);
            });
            q.build().execute(&mut *conn).await?;
        }
        let mut touched: Vec<&str> = containers
            .iter()
            .filter_map(|(_, _, c)| c.workload_id.as_deref())
            .collect();
        touched.sort_unstable();
        touched.dedup();
        workloads::insert(conn, &touched).await
    }

    fn tables(&self) -> &'static [Table] {
        // Samples are pruned by the clock: only those within the retention of the newest
        // one are the same on every replica at the same checkpoint.
        const TABLES: &[Table] = &[
            Table::keyed("agents", "agent_id"),
            Table {
                name: "system_stats_samples",
                key: "seq",
                window: Some(Window::Samples(
                    "at >= (SELECT MAX(at) FROM system_stats_samples) - ?1",
                )),
                window_since: 0,
            },
            Table {
                name: "container_stats_samples",
                key: "seq, idx",
                window: Some(Window::Samples(
                    "at >= (SELECT MAX(at) FROM container_stats_samples) - ?1",
                )),
                window_since: 0,
            },
        ];
        TABLES
    }

    async fn reset(&self, conn: &mut SqliteConnection) -> sqlx::Result<()> {
        // `workloads` is shared with the deploy ledger: see `projections::workloads`.
        super::delete_all(
            conn,
            &["agents", "system_stats_samples", "container_stats_samples"],
        )
        .await
    }
}

/// Deletes the samples older than `retention` before the newest, in transactions sized as
/// the pruner's ([`crate::projector::prune::delete_in_chunks`]); returns rows deleted.
///
/// "The newest" is the lesser of the newest sample's time and the HEARTBEATS high-water mark
/// (the newest publish time committed): both are the same on every replica at the same
/// checkpoint, whatever its clock says, so a replica catching up on a week-old stream keeps
/// what a replica that never stopped keeps. The lesser, because `at` is the agent's clock: an
/// agent a month ahead must not sweep away everyone else's recent samples. Since this
/// cutoff is never later than the digest's (`MAX(at) - retention`), no hashed row is pruned.
pub async fn prune_samples(
    writer: &sqlx::SqlitePool,
    retention: std::time::Duration,
) -> sqlx::Result<u64> {
    let retention_ms = crate::retention::millis(retention);
    let high_water: Option<i64> =
        sqlx::query_scalar("SELECT high_water_ms FROM checkpoints WHERE stream = ?1")
            .bind(streams::HEARTBEATS.name)
            .fetch_optional(writer)
            .await?;
    let Some(high_water) = high_water else {
        return Ok(0);
    };
    let mut total = 0;
    for (table, key) in [
        ("system_stats_samples", "seq"),
        ("container_stats_samples", "rowid"),
    ] {
        let newest: Option<i64> = sqlx::query_scalar(&format!("SELECT MAX(at) FROM {table}"))
            .fetch_one(writer)
            .await?;
        let Some(newest) = newest else { continue };
        let cutoff = newest.min(high_water).saturating_sub(retention_ms);
        let sql = format!(
            "DELETE FROM {table} WHERE {key} IN \
             (SELECT {key} FROM {table} WHERE at < ?1 LIMIT ?2)"
        );
        total +=
            crate::projector::prune::delete_in_chunks(writer, &sql, cutoff, None, None, |_| {})
                .await?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg<'a>(subject: &'a str, payload: &'a [u8]) -> Message<'a> {
        Message {
            seq: 3,
            subject,
            payload,
            published_ms: 9_000,
        }
    }

    #[test]
    fn decodes_the_fixture_shape() {
        let p = br#"{"id":"e","time":"1970-01-01T00:00:01Z","data":{"hostname":"h","version":"1.8.2","labels":{"site":"osaka"},"stats":{"cpu_percent":17.5,"memory_usage":2,"memory_limit":8},"containers":[{"container_id":"c1","workload_id":"shop","role":"web","cpu_percent":12.0,"memory_usage":1,"memory_limit":4}]}}"#;
        let h = decode(&msg("heartbeat.agent-1", p)).unwrap();
        assert_eq!(h.agent_id, "agent-1");
        assert_eq!(h.at, 1_000);
        assert_eq!(h.stats, Some((Some(17.5), Some(2), Some(8))));
        assert_eq!(h.containers[0].workload_id.as_deref(), Some("shop"));
        let bare = decode(&msg("heartbeat.a", br#"{"id":"e","data":{}}"#)).unwrap();
        assert_eq!(
            (bare.at, bare.stats, bare.containers.len()),
            (9_000, None, 0)
        );
    }

    #[test]
    fn rejects_hostile_input() {
        let many = format!(
            r#"{{"id":"e","data":{{"containers":[{}]}}}}"#,
            vec![r#"{"container_id":"c"}"#; MAX_CONTAINERS + 1].join(",")
        );
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("heartbeat", br#"{"id":"e","data":{}}"#.to_vec()),
            ("heartbeat.a.b", br#"{"id":"e","data":{}}"#.to_vec()),
            ("heartbeat.a", b"{".to_vec()),
            (
                "heartbeat.a",
                br#"{"id":"e","data":{"stats":{"cpu_percent":-1}}}"#.to_vec(),
            ),
            (
                "heartbeat.a",
                br#"{"id":"e","data":{"stats":{"memory_usage":"lots"}}}"#.to_vec(),
            ),
            (
                "heartbeat.a",
                br#"{"id":"e","data":{"containers":[{"container_id":""}]}}"#.to_vec(),
            ),
            (
                "heartbeat.a",
                br#"{"id":"e","data":{"containers":[{"container_id":"c","workload_id":"a b"}]}}"#
                    .to_vec(),
            ),
            (
                "heartbeat.a",
                br#"{"id":"e","data":{"labels":"x"}}"#.to_vec(),
            ),
            ("heartbeat.a", many.into_bytes()),
        ];
        for (subject, payload) in cases {
            assert!(decode(&msg(subject, &payload)).is_err(), "{subject}");
        }
    }
}
