//! Work items: what each recurring alert group still needs, from the runs linked to it.
//!
//! A group is `(project_id, recurrence_key)` in `alert_recurrence`; its runs are the rows of
//! `alert_runs` with its key and its project (or no project: linked by key alone). Every
//! group that recurred (two or more occurrences) has a work item with a stable id and one
//! classification, decided in this order:
//!
//! 1. `verified` — the latest repair (a run with `repair` auto or manual) succeeded and was
//!    verified: closed;
//! 2. `failed_repair` — the latest repair failed;
//! 3. `manual_gate` — the latest run needs approval, or the latest repair is manual;
//! 4. `automation_gap` — no automatic repair was ever linked;
//! 5. `open` — an automatic repair is linked but not (yet) verified.

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use crate::projections::results::runs::RUN_STATES;

/// The work item id of a group: the same on every replica and after any rebuild.
pub fn work_item_id(project_id: &str, recurrence_key: &str) -> String {
    let digest = Sha256::new()
        .chain_update(project_id.as_bytes())
        .chain_update([0u8])
        .chain_update(recurrence_key.as_bytes())
        .finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("wi_{hex}")
}

/// One run, as the classification sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunView {
    /// RESULTS sequence: later runs have larger ones.
    pub seq: i64,
    /// The result id.
    pub result_id: String,
    /// The agent that ran it.
    pub agent_id: String,
    /// `running`, `succeeded`, `failed` or `needs_approval`.
    pub run_state: String,
    /// `auto`, `manual` or `none`.
    pub repair: String,
    /// Whether the repair was verified.
    pub verified: bool,
    /// Its incident.
    pub incident_id: Option<String>,
}

/// What the runs of one group add up to.
#[derive(Debug, Default, Clone)]
pub struct GroupRuns {
    /// Runs linked.
    pub total: i64,
    /// Runs per state, in the order of [`RUN_STATES`].
    pub states: [i64; 4],
    /// Runs per repair kind, in the order of [`REPAIRS`] (auto, manual, none).
    pub repairs: [i64; 3],
    /// Verified runs.
    pub verified: i64,
    /// Incidents named, sorted.
    pub incidents: BTreeSet<String>,
    /// The newest run.
    pub latest: Option<RunView>,
    /// The newest run that was a repair (auto or manual).
    pub latest_repair: Option<RunView>,
}

impl GroupRuns {
    fn newer(a: &mut Option<RunView>, b: Option<RunView>) {
        if let Some(b) = b {
            if a.as_ref().is_none_or(|a| b.seq > a.seq) {
                *a = Some(b);
            }
        }
    }

    /// Adds another part of the same group (runs linked by key to every project).
    pub fn merge(&mut self, other: GroupRuns) {
        self.total += other.total;
        for (a, b) in self.states.iter_mut().zip(other.states) {
            *a += b;
        }
        for (a, b) in self.repairs.iter_mut().zip(other.repairs) {
            *a += b;
        }
        self.verified += other.verified;
        self.incidents.extend(other.incidents);
        Self::newer(&mut self.latest, other.latest);
        Self::newer(&mut self.latest_repair, other.latest_repair);
    }

    /// The work item's classification (see the module documentation).
    pub fn classification(&self) -> &'static str {
        if let Some(r) = &self.latest_repair {
            if r.verified && r.run_state == "succeeded" {
                return "verified";
            }
            if r.run_state == "failed" {
                return "failed_repair";
            }
        }
        let gated = self
            .latest
            .as_ref()
            .is_some_and(|r| r.run_state == "needs_approval")
            || self
                .latest_repair
                .as_ref()
                .is_some_and(|r| r.repair == "manual");
        if gated {
            "manual_gate"
        } else if self.repairs[0] == 0 {
            "automation_gap"
        } else {
            "open"
        }
    }

    /// The per-group fields `/alerts/recurrence` adds, as JSON members (no braces).
    pub fn fields(&self, project_id: &str, recurrence_key: &str, recurrent: bool) -> String {
        let states: serde_json::Map<String, Value> = RUN_STATES
            .iter()
            .zip(self.states)
            .map(|(s, n)| ((*s).to_owned(), json!(n)))
            .collect();
        let latest = self.latest.as_ref();
        let work_item = recurrent.then(|| {
            let classification = self.classification();
            json!({
                "id": work_item_id(project_id, recurrence_key),
                "classification": classification,
                "open": classification != "verified",
            })
        });
        let v = json!({
            "linked_run_total": self.total,
            "run_state_counts": states,
            "latest_run_id": latest.map(|r| &r.result_id),
            "latest_run_state": latest.map(|r| &r.run_state),
            "latest_agent_id": latest.map(|r| &r.agent_id),
            "latest_incident_id": latest.and_then(|r| r.incident_id.as_ref()),
            "incident_ids": self.incidents,
            "repair_summary": {
                "auto": self.repairs[0],
                "manual": self.repairs[1],
                "none": self.repairs[2],
                "verified": self.verified,
                "latest_repair": self.latest_repair.as_ref().map(|r| json!({
                    "result_id": r.result_id, "repair": r.repair,
                    "run_state": r.run_state, "verified": r.verified,
                })),
            },
            "work_item": work_item,
        });
        let text = v.to_string();
        text[1..text.len() - 1].to_owned()
    }
}

/// The runs of every group whose key is in `keys`, per `(project_id, recurrence_key)`; runs
/// linked by key alone are under an empty project id.
pub async fn runs_of(
    readers: &SqlitePool,
    keys: &[&str],
) -> sqlx::Result<HashMap<(String, String), GroupRuns>> {
    let mut groups: HashMap<(String, String), GroupRuns> = HashMap::new();
    if keys.is_empty() {
        return Ok(groups);
    }
    // SQLite takes a bare column beside MAX() from the row holding the maximum.
    for (repairs_only, columns) in [
        (
            false,
            "COUNT(*), \
             SUM(run_state = 'running'), SUM(run_state = 'succeeded'), \
             SUM(run_state = 'failed'), SUM(run_state = 'needs_approval'), \
             SUM(repair = 'auto'), SUM(repair = 'manual'), SUM(repair = 'none'), \
             SUM(verified), json_group_array(DISTINCT incident_id)",
        ),
        (true, "0, 0, 0, 0, 0, 0, 0, 0, 0, '[]'"),
    ] {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "SELECT recurrence_key, COALESCE(project_id, ''), {columns}, MAX(seq), result_id, \
             agent_id, run_state, repair, verified, incident_id FROM alert_runs \
             WHERE recurrence_key IN ("
        ));
        let mut list = q.separated(", ");
        for k in keys {
            list.push_bind(*k);
        }
        q.push(")");
        if repairs_only {
            q.push(" AND repair != 'none'");
        }
        q.push(" GROUP BY recurrence_key, project_id");
        let rows = q.build().fetch_all(readers).await?;
        for row in rows {
            use sqlx::Row;
            let key: String = row.get(0);
            let project: String = row.get(1);
            let view = RunView {
                seq: row.get(12),
                result_id: row.get(13),
                agent_id: row.get(14),
                run_state: row.get(15),
                repair: row.get(16),
                verified: row.get(17),
                incident_id: row.get(18),
            };
            let g = groups.entry((project, key)).or_default();
            if repairs_only {
                g.latest_repair = Some(view);
                continue;
            }
            g.total = row.get(2);
            for i in 0..4 {
                g.states[i] = row.get(3 + i);
            }
            for i in 0..3 {
                g.repairs[i] = row.get(7 + i);
            }
            g.verified = row.get(10);
            let incidents: String = row.get(11);
            g.incidents = serde_json::from_str::<Vec<Option<String>>>(&incidents)
                .unwrap_or_default()
                .into_iter()
                .flatten()
                .collect();
            g.latest = Some(view);
        }
    }
    Ok(groups)
}

/// The runs of group `(project_id, recurrence_key)` from [`runs_of`]'s answer: its own and
/// those linked by key alone.
pub fn group_runs(
    all: &HashMap<(String, String), GroupRuns>,
    project_id: &str,
    recurrence_key: &str,
) -> GroupRuns {
    let mut g = all
        .get(&(project_id.to_owned(), recurrence_key.to_owned()))
        .cloned()
        .unwrap_or_default();
    if let Some(by_key) = all.get(&(String::new(), recurrence_key.to_owned())) {
        g.merge(by_key.clone());
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projections::results::runs::REPAIRS;

    fn run(seq: i64, state: &str, repair: &str, verified: bool) -> RunView {
        RunView {
            seq,
            result_id: format!("r{seq}"),
            agent_id: "a".into(),
            run_state: state.into(),
            repair: repair.into(),
            verified,
            incident_id: None,
        }
    }

    fn group(runs: &[RunView]) -> GroupRuns {
        let mut g = GroupRuns::default();
        for r in runs {
            let mut one = GroupRuns {
                total: 1,
                latest: Some(r.clone()),
                latest_repair: (r.repair != "none").then(|| r.clone()),
                ..GroupRuns::default()
            };
            one.repairs[REPAIRS.iter().position(|x| *x == r.repair).unwrap()] = 1;
            g.merge(one);
        }
        g
    }

    #[test]
    fn each_classification_by_its_rule() {
        let cases: [(&[RunView], &str); 9] = [
            (&[], "automation_gap"),
            (&[run(1, "succeeded", "none", false)], "automation_gap"),
            (&[run(1, "succeeded", "auto", true)], "verified"),
            (
                &[
                    run(1, "succeeded", "auto", true),
                    run(2, "failed", "auto", false),
                ],
                "failed_repair",
            ),
            (
                &[
                    run(1, "failed", "auto", false),
                    run(2, "succeeded", "manual", true),
                ],
                "verified",
            ),
            (
                &[
                    run(1, "running", "auto", false),
                    run(2, "needs_approval", "none", false),
                ],
                "manual_gate",
            ),
            (&[run(1, "succeeded", "manual", false)], "manual_gate"),
            (&[run(1, "running", "auto", false)], "open"),
            (
                &[
                    run(1, "succeeded", "auto", false),
                    run(2, "succeeded", "none", false),
                ],
                "open",
            ),
        ];
        for (runs, want) in cases {
            assert_eq!(group(runs).classification(), want, "{runs:?}");
        }
    }

    #[test]
    fn work_item_ids_are_stable_and_separate_project_from_key() {
        assert_eq!(work_item_id("shop", "fp:1"), work_item_id("shop", "fp:1"));
        assert_ne!(work_item_id("shop", "fp:1"), work_item_id("shopf", "p:1"));
        assert_eq!(work_item_id("a", "b").len(), 3 + 24);
    }
}
