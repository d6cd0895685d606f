//! Runs linked to alerts: a result whose `data.links` names the alert it answered, with the
//! run's state, repair kind and verification, kept in `alert_runs`.
//!
//! A run and its alert arrive on different streams with their own checkpoints, so either may
//! be projected first. The run's group — the `(project_id, recurrence_key)` of its alert — is
//! filled by whichever projection comes second: here when the alert is already known, and by
//! the alerts projection ([`resolve_for_alerts`]) when the alert arrives later. A run linked
//! by `recurrence_key` has its key at once and belongs to that key's groups in every project.
//!
//! Runs leave with the results' retention by their own time, as results do. A group's
//! figures are running totals over every run it was given, like an alert recurrence group's
//! counts, so pruning a run changes no figure and replicas agree whether or not they pruned
//! it; the group itself goes, with its incidents, once its newest run is past the retention.
//! A run joining a group that had expired when the run was published starts the group afresh,
//! pruned by this replica or not ([`crate::retention::expired_at`]).

use std::collections::HashMap;

use serde::Deserialize;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use crate::bus::subjects;
use crate::db::rows_per_statement;
use crate::retention::expired_at;

/// Longest `provider_event_id`, `recurrence_key` or `incident_id` accepted.
pub const MAX_LINK_LEN: usize = 512;

/// The run states a linked result may report.
pub const RUN_STATES: [&str; 4] = ["running", "succeeded", "failed", "needs_approval"];
/// The repair kinds a linked result may report.
pub const REPAIRS: [&str; 3] = ["auto", "manual", "none"];

/// `data.links` as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LinksData {
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    provider_event_id: Option<String>,
    #[serde(default)]
    recurrence_key: Option<String>,
    #[serde(default)]
    incident_id: Option<String>,
}

/// What a run names: one alert event, or a whole recurrence key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// `{"provider", "provider_event_id"}`.
    Event {
        /// The alert's provider.
        provider: String,
        /// The provider's id of the alert event.
        provider_event_id: String,
    },
    /// `{"recurrence_key"}`.
    Key(String),
}

/// A result that answered an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// What it answered.
    pub link: Link,
    /// The incident it belongs to, if any.
    pub incident_id: Option<String>,
    /// One of [`RUN_STATES`].
    pub run_state: String,
    /// One of [`REPAIRS`].
    pub repair: String,
    /// Whether the repair was verified to have worked.
    pub verified: bool,
}

fn bounded(name: &str, v: Option<String>) -> Result<Option<String>, String> {
    match v {
        Some(s) if s.is_empty() || s.len() > MAX_LINK_LEN => Err(format!(
            "data.links.{name} must be 1 to {MAX_LINK_LEN} bytes"
        )),
        other => Ok(other),
    }
}

/// Validates the run fields of a result: `None` when it has no `links`.
pub(super) fn decode(
    links: Option<LinksData>,
    run_state: Option<String>,
    repair: Option<String>,
    verified: Option<bool>,
) -> Result<Option<Run>, String> {
    let Some(l) = links else {
        if run_state.is_some() || repair.is_some() || verified.is_some() {
            return Err("data.run_state, data.repair and data.verified need data.links".into());
        }
        return Ok(None);
    };
    let incident_id = bounded("incident_id", l.incident_id)?;
    let link = match (
        bounded("provider", l.provider)?,
        bounded("provider_event_id", l.provider_event_id)?,
        bounded("recurrence_key", l.recurrence_key)?,
    ) {
        (Some(provider), Some(provider_event_id), None) => {
            if !subjects::is_token(&provider) {
                return Err(format!(
                    "data.links.provider must be {}",
                    subjects::TOKEN_FORM
                ));
            }
            Link::Event {
                provider,
                provider_event_id,
            }
        }
        (None, None, Some(key)) => Link::Key(key),
        _ => {
            return Err(
                "data.links must be {\"provider\", \"provider_event_id\"} or \
                 {\"recurrence_key\"}, optionally with \"incident_id\""
                    .into(),
            )
        }
    };
    let run_state = run_state.ok_or("data.run_state is required with data.links")?;
    if !RUN_STATES.contains(&run_state.as_str()) {
        return Err(format!(
            "data.run_state must be one of {}",
            RUN_STATES.join(", ")
        ));
    }
    let repair = repair.unwrap_or_else(|| "none".to_owned());
    if !REPAIRS.contains(&repair.as_str()) {
        return Err(format!("data.repair must be one of {}", REPAIRS.join(", ")));
    }
    Ok(Some(Run {
        link,
        incident_id,
        run_state,
        repair,
        verified: verified.unwrap_or(false),
    }))
}

/// Deletes at most `?2` runs older than the cutoff `?1`, oldest first.
pub(super) const PRUNE_RUNS: &str = "DELETE FROM alert_runs WHERE rowid IN (\
     SELECT rowid FROM alert_runs WHERE recorded_at < ?1 ORDER BY recorded_at LIMIT ?2)";

/// Deletes at most `?2` groups whose newest run is older than the cutoff `?1`; their
/// incidents go with them (trigger `alert_run_groups_incidents`).
pub(super) const PRUNE_GROUPS: &str = "DELETE FROM alert_run_groups \
     WHERE (recurrence_key, project_id) IN (SELECT recurrence_key, project_id \
     FROM alert_run_groups WHERE newest_recorded_at < ?1 LIMIT ?2)";

/// The incidents `orrery digest` hashes at cutoff `?1`: those of groups kept.
pub(super) const KEEP_INCIDENTS: &str = "EXISTS (SELECT 1 FROM alert_run_groups g \
     WHERE g.recurrence_key = alert_run_incidents.recurrence_key \
     AND g.project_id = alert_run_incidents.project_id AND g.newest_recorded_at >= ?1)";

/// Deletes at most `?2` incidents of expired groups (normally none: the trigger takes them
/// with their group).
pub(super) const PRUNE_INCIDENTS: &str = "DELETE FROM alert_run_incidents \
     WHERE (recurrence_key, project_id, incident_id) IN (\
     SELECT i.recurrence_key, i.project_id, i.incident_id \
     FROM alert_run_groups g JOIN alert_run_incidents i \
     ON i.recurrence_key = g.recurrence_key AND i.project_id = g.project_id \
     WHERE g.newest_recorded_at < ?1 LIMIT ?2)";

/// One linked run of a batch, with the result fields it is stored with.
pub(super) struct NewRun<'a> {
    pub result_id: &'a str,
    pub seq: u64,
    pub agent_id: &'a str,
    pub recorded_at: i64,
    pub published_ms: i64,
    pub run: &'a Run,
}

/// A group as `alert_run_groups` keys it: (recurrence_key, project_id or '').
type GroupKey<'a> = (&'a str, &'a str);

/// (provider, provider_event_id) → (project_id, recurrence_key) of the alert's first
/// sighting.
/// Keyed by the batch's own strings, so that looking a run up allocates nothing.
type Sightings<'r> = HashMap<(&'r str, &'r str), (String, String)>;

/// The group `run` joins: its alert's, or its key's in every project (`''`); `None` while its
/// alert is not projected yet.
fn group_of<'a>(run: &'a NewRun<'_>, sightings: &'a Sightings<'_>) -> Option<GroupKey<'a>> {
    match &run.run.link {
        Link::Event {
            provider,
            provider_event_id,
        } => sightings
            .get(&(provider.as_str(), provider_event_id.as_str()))
            .map(|(project, key)| (key.as_str(), project.as_str())),
        Link::Key(key) => Some((key.as_str(), "")),
    }
}

/// The newest run time of the stored groups among `keys` (sorted, distinct).
async fn newest_of<'k>(
    conn: &mut SqliteConnection,
    keys: &[GroupKey<'k>],
) -> sqlx::Result<HashMap<GroupKey<'k>, i64>> {
    crate::projections::times_of_pairs(
        conn,
        "SELECT recurrence_key, project_id, newest_recorded_at FROM alert_run_groups \
         WHERE (recurrence_key, project_id) IN (",
        keys,
    )
    .await
}

/// Deletes groups whole, with their runs and incidents, as the pruner would have (every run
/// of an expired group is past the retention too: none is newer than the group's newest).
async fn forget(conn: &mut SqliteConnection, stale: &[GroupKey<'_>]) -> sqlx::Result<()> {
    // Rare (a group coming back after a quiet retention): a statement per table and group.
    for (key, project) in stale {
        sqlx::query(
            "DELETE FROM alert_runs WHERE recurrence_key = ?1 \
             AND project_id IS NULLIF(?2, '')",
        )
        .bind(key)
        .bind(project)
        .execute(&mut *conn)
        .await?;
        // Its incidents go with it (trigger `alert_run_groups_incidents`).
        sqlx::query("DELETE FROM alert_run_groups WHERE recurrence_key = ?1 AND project_id = ?2")
            .bind(key)
            .bind(project)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Forgets the groups of `runs` that had expired when the run joining them was published.
/// `Ok(false)` when that would have to happen between two runs of the batch (a group joined,
/// then joined again past its retention): the caller then stores the runs one at a time.
async fn forget_expired(
    conn: &mut SqliteConnection,
    runs: &[NewRun<'_>],
    sightings: &Sightings<'_>,
    retention_ms: i64,
) -> sqlx::Result<bool> {
    let mut keys: Vec<GroupKey<'_>> = runs.iter().filter_map(|r| group_of(r, sightings)).collect();
    keys.sort_unstable();
    keys.dedup();
    let stored = newest_of(conn, &keys).await?;
    // Per group: its newest run, and whether this batch joined it. A re-sent result id is
    // counted as joining, though its insert is ignored: a known limit at the retention edge.
    let mut latest: HashMap<GroupKey<'_>, (Option<i64>, bool)> = HashMap::new();
    let mut stale = Vec::new();
    for run in runs {
        let Some(key) = group_of(run, sightings) else {
            continue;
        };
        let (mut newest, joined) = latest
            .get(&key)
            .copied()
            .unwrap_or((stored.get(&key).copied(), false));
        if newest.is_some_and(|at| expired_at(at, run.published_ms, Some(retention_ms))) {
            if joined {
                return Ok(false);
            }
            stale.push(key);
            newest = None;
        }
        let newest = newest.map_or(run.recorded_at, |n| n.max(run.recorded_at));
        latest.insert(key, (Some(newest), true));
    }
    forget(conn, &stale).await?;
    Ok(true)
}

/// Stores the linked runs of a batch (a result id seen before is ignored, as in
/// `execution_results`), each with its group when its alert is already projected; under
/// the results' retention `retention_ms`, a group expired when a run joins it starts afresh.
pub(super) async fn insert(
    conn: &mut SqliteConnection,
    runs: &[NewRun<'_>],
    retention_ms: Option<i64>,
) -> sqlx::Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let sightings = sightings_of(conn, runs).await?;
    let Some(retention_ms) = retention_ms else {
        return write(conn, runs, &sightings).await;
    };
    if forget_expired(conn, runs, &sightings, retention_ms).await? {
        return write(conn, runs, &sightings).await;
    }
    for run in runs {
        let one = std::slice::from_ref(run);
        forget_expired(conn, one, &sightings, retention_ms).await?;
        write(conn, one, &sightings).await?;
    }
    Ok(())
}

/// The groups of the alerts `runs` name that are projected already: each dedupe key holds
/// the group of its first sighting, so this reads neither the alert rows nor their index.
async fn sightings_of<'r>(
    conn: &mut SqliteConnection,
    runs: &[NewRun<'r>],
) -> sqlx::Result<Sightings<'r>> {
    let mut keys: Vec<(&str, &str)> = runs
        .iter()
        .filter_map(|r| match &r.run.link {
            Link::Event {
                provider,
                provider_event_id,
            } => Some((provider.as_str(), provider_event_id.as_str())),
            Link::Key(_) => None,
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    crate::projections::values_of_pairs(
        conn,
        "SELECT provider, provider_event_id, project_id, recurrence_key FROM alert_event_keys \
         WHERE recurrence_key IS NOT NULL AND (provider, provider_event_id) IN (",
        &keys,
        |(p, e, project, key): (String, String, String, String)| ((p, e), (project, key)),
    )
    .await
}

/// Inserts `runs` and folds those with a group into its figures.
async fn write(
    conn: &mut SqliteConnection,
    runs: &[NewRun<'_>],
    sightings: &Sightings<'_>,
) -> sqlx::Result<()> {
    // Rows inserted here get rowids above the largest now; a known result id inserts none.
    let rowid_before: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(rowid), 0) FROM alert_runs")
        .fetch_one(&mut *conn)
        .await?;
    // In key order, consecutive inserts walk the result id index forwards (as results'
    // rows do). The sort is stable: of two runs with one result id, the first still wins.
    let mut sorted: Vec<&NewRun<'_>> = runs.iter().collect();
    sorted.sort_by(|a, b| a.result_id.cmp(b.result_id));
    let mut inserted = 0u64;
    for chunk in sorted.chunks(rows_per_statement(12)) {
        // OR IGNORE rather than ON CONFLICT (result_id) DO NOTHING: the latter leaves the
        // other constraints at ABORT, so SQLite copies every page the statement dirties into
        // a statement journal to undo it (measured: 20 µs per run). Every other constraint is
        // checked by `decode` before, so only a known result id is ignored. No RETURNING:
        // SQLite stages every row it returns, and sqlx hands each over one at a time
        // (measured with the sort above: 11.7 → 4.6 µs per run).
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT OR IGNORE INTO alert_runs (result_id, seq, agent_id, recorded_at, link_provider, \
             link_event_id, incident_id, run_state, repair, verified, project_id, \
             recurrence_key) ",
        );
        q.push_values(chunk, |mut b, r| {
            let (provider, event_id) = match &r.run.link {
                Link::Event {
                    provider,
                    provider_event_id,
                } => (Some(provider.as_str()), Some(provider_event_id.as_str())),
                Link::Key(_) => (None, None),
            };
            let group = group_of(r, sightings);
            // A run linked by key alone has no project: its group's '' stands for every one.
            let project = group.map(|g| g.1).filter(|p| !p.is_empty());
            let key = group.map(|g| g.0);
            b.push_bind(r.result_id)
                .push_bind(r.seq as i64)
                .push_bind(r.agent_id)
                .push_bind(r.recorded_at)
                .push_bind(provider)
                .push_bind(event_id)
                .push_bind(r.run.incident_id.as_deref())
                .push_bind(r.run.run_state.as_str())
                .push_bind(r.run.repair.as_str())
                .push_bind(r.run.verified)
                .push_bind(project)
                .push_bind(key);
        });
        inserted += q.build().execute(&mut *conn).await?.rows_affected();
    }
    // Folded once for the whole batch: one update per group instead of one per run.
    if inserted == runs.len() as u64 {
        let grouped: Vec<GroupedRun> = runs.iter().map(|r| grouped(r, sightings)).collect();
        return fold(conn, &grouped).await;
    }
    // Some result ids were known: fold what this batch actually inserted.
    let grouped: Vec<GroupedRun> = sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM alert_runs WHERE rowid > ?1"
    ))
    .bind(rowid_before)
    .fetch_all(&mut *conn)
    .await?;
    fold(conn, &grouped).await
}

/// `run` as [`RUN_COLUMNS`] would read it back once inserted.
fn grouped(run: &NewRun<'_>, sightings: &Sightings<'_>) -> GroupedRun {
    let group = group_of(run, sightings);
    (
        group.map(|g| g.0.to_owned()),
        group.map_or(String::new(), |g| g.1.to_owned()),
        run.seq as i64,
        run.result_id.to_owned(),
        run.agent_id.to_owned(),
        run.run.run_state.clone(),
        run.run.repair.clone(),
        run.run.verified,
        run.run.incident_id.clone(),
        run.recorded_at,
    )
}

/// What a run with a group adds to its group's figures.
const RUN_COLUMNS: &str = "recurrence_key, COALESCE(project_id, ''), seq, result_id, agent_id, \
                           run_state, repair, verified, incident_id, recorded_at";

/// A run as [`RUN_COLUMNS`] reads it (`recurrence_key` NULL: no group yet).
type GroupedRun = (
    Option<String>,
    String,
    i64,
    String,
    String,
    String,
    String,
    bool,
    Option<String>,
    i64,
);

/// What a group's runs of one batch add to its figures: counts, and its newest run and
/// newest repair by stream sequence.
struct GroupDelta<'a> {
    key: &'a str,
    project: &'a str,
    counts: [i64; 9],
    latest: &'a GroupedRun,
    repair: Option<&'a GroupedRun>,
    newest_recorded_at: i64,
}

impl<'a> GroupDelta<'a> {
    fn of(key: &'a str, run: &'a GroupedRun) -> Self {
        let mut delta = Self {
            key,
            project: run.1.as_str(),
            counts: [0; 9],
            latest: run,
            repair: None,
            newest_recorded_at: run.9,
        };
        delta.count(run);
        delta
    }

    /// Counts `run` in (total, the four states, the three repair kinds, verified).
    fn count(&mut self, run: &'a GroupedRun) {
        let state = RUN_STATES.iter().position(|s| *s == run.5);
        let repair = REPAIRS.iter().position(|r| *r == run.6);
        self.counts[0] += 1;
        if let Some(i) = state {
            self.counts[1 + i] += 1;
        }
        if let Some(i) = repair {
            self.counts[5 + i] += 1;
        }
        self.counts[8] += i64::from(run.7);
        if run.2 > self.latest.2 {
            self.latest = run;
        }
        if run.6 != "none" && self.repair.is_none_or(|r| run.2 > r.2) {
            self.repair = Some(run);
        }
        self.newest_recorded_at = self.newest_recorded_at.max(run.9);
    }
}

/// Adds runs that just got their group to `alert_run_groups` and `alert_run_incidents`,
/// first summed per group, so that a group takes one update however many runs it got.
async fn fold(conn: &mut SqliteConnection, runs: &[GroupedRun]) -> sqlx::Result<()> {
    let mut deltas: Vec<GroupDelta<'_>> = Vec::new();
    let mut at: HashMap<GroupKey<'_>, usize> = HashMap::new();
    for run in runs {
        let Some(key) = run.0.as_deref() else {
            continue;
        };
        match at.get(&(key, run.1.as_str())) {
            Some(&i) => deltas[i].count(run),
            None => {
                at.insert((key, run.1.as_str()), deltas.len());
                deltas.push(GroupDelta::of(key, run));
            }
        }
    }
    for chunk in deltas.chunks(rows_per_statement(24)) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO alert_run_groups (recurrence_key, project_id, total, running, \
             succeeded, failed, needs_approval, auto, manual, none, verified, latest_seq, \
             latest_result_id, latest_agent_id, latest_state, latest_repair, latest_verified, \
             latest_incident_id, repair_seq, repair_result_id, repair_kind, repair_state, \
             repair_verified, newest_recorded_at) ",
        );
        q.push_values(chunk, |mut b, d| {
            let (_, _, seq, id, agent, state, repair, verified, incident, _) = d.latest;
            let r = d.repair;
            b.push_bind(d.key).push_bind(d.project);
            for n in d.counts {
                b.push_bind(n);
            }
            b.push_bind(*seq)
                .push_bind(id.as_str())
                .push_bind(agent.as_str())
                .push_bind(state.as_str())
                .push_bind(repair.as_str())
                .push_bind(*verified)
                .push_bind(incident.as_deref())
                .push_bind(r.map(|r| r.2))
                .push_bind(r.map(|r| r.3.as_str()))
                .push_bind(r.map(|r| r.6.as_str()))
                .push_bind(r.map(|r| r.5.as_str()))
                .push_bind(r.map(|r| r.7))
                .push_bind(d.newest_recorded_at);
        });
        // Every right-hand side reads the values from before this update.
        q.push(
            " ON CONFLICT (recurrence_key, project_id) DO UPDATE SET \
             total = total + excluded.total, running = running + excluded.running, \
             succeeded = succeeded + excluded.succeeded, failed = failed + excluded.failed, \
             needs_approval = needs_approval + excluded.needs_approval, \
             auto = auto + excluded.auto, manual = manual + excluded.manual, \
             none = none + excluded.none, verified = verified + excluded.verified, \
             latest_seq = MAX(latest_seq, excluded.latest_seq), \
             latest_result_id = iif(excluded.latest_seq > latest_seq, excluded.latest_result_id, latest_result_id), \
             latest_agent_id = iif(excluded.latest_seq > latest_seq, excluded.latest_agent_id, latest_agent_id), \
             latest_state = iif(excluded.latest_seq > latest_seq, excluded.latest_state, latest_state), \
             latest_repair = iif(excluded.latest_seq > latest_seq, excluded.latest_repair, latest_repair), \
             latest_verified = iif(excluded.latest_seq > latest_seq, excluded.latest_verified, latest_verified), \
             latest_incident_id = iif(excluded.latest_seq > latest_seq, excluded.latest_incident_id, latest_incident_id), \
             repair_seq = iif(excluded.repair_seq > COALESCE(repair_seq, -1), excluded.repair_seq, repair_seq), \
             repair_result_id = iif(excluded.repair_seq > COALESCE(repair_seq, -1), excluded.repair_result_id, repair_result_id), \
             repair_kind = iif(excluded.repair_seq > COALESCE(repair_seq, -1), excluded.repair_kind, repair_kind), \
             repair_state = iif(excluded.repair_seq > COALESCE(repair_seq, -1), excluded.repair_state, repair_state), \
             repair_verified = iif(excluded.repair_seq > COALESCE(repair_seq, -1), excluded.repair_verified, repair_verified), \
             newest_recorded_at = MAX(newest_recorded_at, excluded.newest_recorded_at)",
        );
        q.build().execute(&mut *conn).await?;
    }
    let mut incidents: Vec<(&str, &str, &str)> = runs
        .iter()
        .filter_map(|r| Some((r.0.as_deref()?, r.1.as_str(), r.8.as_deref()?)))
        .collect();
    incidents.sort_unstable();
    incidents.dedup();
    for chunk in incidents.chunks(rows_per_statement(3)) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT OR IGNORE INTO alert_run_incidents (recurrence_key, project_id, incident_id) ",
        );
        q.push_values(chunk, |mut b, (key, project, incident)| {
            b.push_bind(*key).push_bind(*project).push_bind(*incident);
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// An alert's first sighting as the alerts projection reports it to [`resolve_for_alerts`]:
/// (provider, provider_event_id, project_id, recurrence_key, publish time in Unix ms).
pub type Sighting<'a> = (&'a str, &'a str, &'a str, &'a str, i64);

/// Called by the alerts projection with the first sightings of a batch: fills the group of
/// the runs that named them before they were projected. Under the results' retention
/// `retention_ms`, a run already expired when its alert was published stays unresolved (and
/// leaves by its own time), and a group expired at its first sighting of the batch starts
/// afresh. Run and alert come from two streams with their own marks, so at the retention
/// edge replicas that projected them in a different order can still differ: a known limit.
pub async fn resolve_for_alerts(
    conn: &mut SqliteConnection,
    sightings: &[Sighting<'_>],
    retention_ms: Option<i64>,
) -> sqlx::Result<()> {
    if let Some(retention_ms) = retention_ms {
        let mut keys: Vec<GroupKey<'_>> = sightings.iter().map(|s| (s.3, s.2)).collect();
        keys.sort_unstable();
        keys.dedup();
        let stored = newest_of(conn, &keys).await?;
        let mut first = std::collections::HashSet::new();
        let stale: Vec<GroupKey<'_>> = sightings
            .iter()
            .filter(|s| first.insert((s.3, s.2)))
            .filter(|s| {
                stored
                    .get(&(s.3, s.2))
                    .is_some_and(|&at| expired_at(at, s.4, Some(retention_ms)))
            })
            .map(|s| (s.3, s.2))
            .collect();
        forget(conn, &stale).await?;
    }
    for chunk in sightings.chunks(rows_per_statement(5)) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "UPDATE alert_runs SET project_id = v.column3, recurrence_key = v.column4 FROM (",
        );
        q.push_values(
            chunk,
            |mut b, (provider, event_id, project, key, published)| {
                let cutoff = retention_ms.map_or(i64::MIN, |r| published.saturating_sub(r));
                b.push_bind(*provider)
                    .push_bind(*event_id)
                    .push_bind(*project)
                    .push_bind(*key)
                    .push_bind(cutoff);
            },
        );
        q.push(
            ") AS v WHERE alert_runs.link_event_id = v.column2 \
             AND alert_runs.link_provider = v.column1 AND alert_runs.recurrence_key IS NULL \
             AND alert_runs.recorded_at >= v.column5 RETURNING ",
        );
        q.push(RUN_COLUMNS);
        let resolved: Vec<GroupedRun> = q.build_query_as().fetch_all(&mut *conn).await?;
        fold(conn, &resolved).await?;
    }
    Ok(())
}

/// Forgets the groups the alerts projection filled (its read models are being rebuilt) and
/// counts the groups' figures again from the runs that keep theirs: from the runs still kept,
/// so a group recounted after its oldest runs were pruned counts only the rest.
pub async fn unresolve(conn: &mut SqliteConnection) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE alert_runs SET project_id = NULL, recurrence_key = NULL \
         WHERE link_event_id IS NOT NULL",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM alert_run_groups")
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM alert_run_incidents")
        .execute(&mut *conn)
        .await?;
    let mut after = 0i64;
    loop {
        let runs: Vec<GroupedRun> = sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM alert_runs WHERE recurrence_key IS NOT NULL \
             AND seq > ?1 ORDER BY seq LIMIT 10000"
        ))
        .bind(after)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = runs.last() else {
            return Ok(());
        };
        after = last.2;
        fold(conn, &runs).await?;
    }
}
