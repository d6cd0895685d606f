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

use std::collections::BTreeSet;

use serde_json::Value;

pub use crate::projections::work_items::{is_work_item_id, work_item_id};

/// Most incident ids listed per group (the first, in sort order).
pub const MAX_INCIDENT_IDS: usize = 50;

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
    /// Runs per state, in the order of [`crate::projections::results::runs::RUN_STATES`].
    pub states: [i64; 4],
    /// Runs per repair kind: auto, manual, none.
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

    /// The per-group fields `/alerts/recurrence` adds, as JSON members (no braces). Written
    /// by hand: a `json!` tree per group cost more than SQLite's rendering of the rest.
    pub fn fields(&self, project_id: &str, recurrence_key: &str, recurrent: bool) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(640);
        let [running, succeeded, failed, needs_approval] = self.states;
        let _ = write!(
            out,
            r#""linked_run_total":{},"run_state_counts":{{"running":{running},"succeeded":{succeeded},"failed":{failed},"needs_approval":{needs_approval}}},"#,
            self.total
        );
        let latest = self.latest.as_ref();
        let _ = write!(
            out,
            r#""latest_run_id":{},"latest_run_state":{},"latest_agent_id":{},"latest_incident_id":{},"incident_ids":["#,
            text(latest.map(|r| r.result_id.as_str())),
            text(latest.map(|r| r.run_state.as_str())),
            text(latest.map(|r| r.agent_id.as_str())),
            text(latest.and_then(|r| r.incident_id.as_deref())),
        );
        for (i, id) in self.incidents.iter().take(MAX_INCIDENT_IDS).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&text(Some(id)));
        }
        let [auto, manual, none] = self.repairs;
        let _ = write!(
            out,
            r#"],"repair_summary":{{"auto":{auto},"manual":{manual},"none":{none},"verified":{},"latest_repair":"#,
            self.verified
        );
        match &self.latest_repair {
            None => out.push_str("null"),
            Some(r) => {
                let _ = write!(
                    out,
                    r#"{{"result_id":{},"repair":{},"run_state":{},"verified":{}}}"#,
                    text(Some(&r.result_id)),
                    text(Some(&r.repair)),
                    text(Some(&r.run_state)),
                    r.verified
                );
            }
        }
        out.push_str(r#"},"work_item":"#);
        if recurrent {
            let class = self.classification();
            let _ = write!(
                out,
                r#"{{"id":"{}","classification":"{class}","open":{}}}"#,
                work_item_id(project_id, recurrence_key),
                class != "verified"
            );
        } else {
            out.push_str("null");
        }
        out
    }
}

/// A JSON string (or null), escaped.
fn text(s: Option<&str>) -> String {
    match s {
        Some(s) => Value::from(s).to_string(),
        None => "null".to_owned(),
    }
}

/// A group's figures from `alert_run_groups` row `g` as one JSON array, its incidents last:
/// selected beside each group of a page, so that a page stays one query (each further query
/// and row is a round trip to SQLite's worker thread, which cost more than the rest).
pub const FIGURES_SQL: &str = "json_array(g.total, g.running, g.succeeded, g.failed, \
     g.needs_approval, g.auto, g.manual, g.none, g.verified, g.latest_seq, g.latest_result_id, \
     g.latest_agent_id, g.latest_state, g.latest_repair, g.latest_verified, \
     g.latest_incident_id, g.repair_seq, g.repair_result_id, g.repair_kind, g.repair_state, \
     g.repair_verified, (SELECT json_group_array(i.incident_id) FROM alert_run_incidents i \
     WHERE i.recurrence_key = g.recurrence_key AND i.project_id = g.project_id))";

/// A row of `alert_run_groups` as [`FIGURES_SQL`] renders it.
#[derive(serde::Deserialize)]
struct Figures(
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Vec<String>,
);

impl From<Figures> for GroupRuns {
    fn from(f: Figures) -> Self {
        GroupRuns {
            total: f.0,
            states: [f.1, f.2, f.3, f.4],
            repairs: [f.5, f.6, f.7],
            verified: f.8,
            incidents: f.21.into_iter().collect(),
            latest: Some(RunView {
                seq: f.9,
                result_id: f.10,
                agent_id: f.11,
                run_state: f.12,
                repair: f.13,
                verified: f.14 != 0,
                incident_id: f.15,
            }),
            latest_repair: f.16.map(|seq| RunView {
                seq,
                result_id: f.17.unwrap_or_default(),
                agent_id: String::new(),
                repair: f.18.unwrap_or_default(),
                run_state: f.19.unwrap_or_default(),
                verified: f.20.unwrap_or(0) != 0,
                incident_id: None,
            }),
        }
    }
}

/// A group's runs from its own figures and those of its key's runs linked by key alone (each
/// rendered by [`FIGURES_SQL`], absent when there are none).
pub fn group_runs(own: Option<&str>, by_key: Option<&str>) -> sqlx::Result<GroupRuns> {
    let parse = |json: &str| {
        serde_json::from_str::<Figures>(json)
            .map(GroupRuns::from)
            .map_err(|e| sqlx::Error::Decode(format!("alert_run_groups: {e}").into()))
    };
    let mut g = own.map(parse).transpose()?.unwrap_or_default();
    if let Some(k) = by_key {
        g.merge(parse(k)?);
    }
    Ok(g)
}

/// How a preview chooses the next step: by classification, or the automation or manual
/// path whatever the classification.
pub const MODES: [&str; 3] = ["auto", "automation", "manual"];

/// How recent the latest occurrence must be for a group to count as still recurring.
pub const STILL_RECURRING_MS: i64 = 24 * 3_600_000;

/// One pre-flight check of a plan.
#[derive(Debug, Clone)]
pub struct Check {
    /// What is checked.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// Why.
    pub detail: String,
}

/// What a preview proposes for a work item.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The mode asked for.
    pub mode: String,
    /// The path taken: `automation`, `manual`, or `none` for a closed item.
    pub resolved_mode: &'static str,
    /// The proposed next step.
    pub action: &'static str,
    /// Why that step.
    pub reason: &'static str,
    /// Pre-flight checks.
    pub checks: Vec<Check>,
    /// Every check passed and there is a step to take.
    pub ready: bool,
}

impl From<&Plan> for crate::projections::work_items::WorkItemPlan {
    fn from(p: &Plan) -> Self {
        Self {
            mode: p.mode.clone(),
            resolved_mode: p.resolved_mode.to_owned(),
            action: p.action.to_owned(),
            reason: p.reason.to_owned(),
            checks: p
                .checks
                .iter()
                .map(|c| crate::projections::work_items::PlanCheck {
                    name: c.name.to_owned(),
                    ok: c.ok,
                    detail: c.detail.clone(),
                })
                .collect(),
            ready: p.ready,
        }
    }
}

/// What a plan is made from, besides the runs: the group's latest occurrence (Unix ms), the
/// source references of its latest event and its open handoff, if any.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Latest occurrence, Unix ms.
    pub latest_at: i64,
    /// Source references of the latest event.
    pub refs: i64,
    /// The entry id of a handoff still open (see [`open_handoff`]).
    pub open_handoff: Option<&'a str>,
}

/// The plan for a group in `mode` (one of [`MODES`]).
pub fn plan(g: &GroupRuns, mode: &str, facts: Facts<'_>, now: i64) -> Plan {
    let Facts {
        latest_at,
        refs,
        open_handoff,
    } = facts;
    let class = g.classification();
    let resolved = match (class, mode) {
        ("verified", _) => "none",
        (_, "automation") => "automation",
        (_, "manual") => "manual",
        ("failed_repair" | "manual_gate", _) => "manual",
        _ => "automation",
    };
    let (action, reason) = match (resolved, class) {
        ("none", _) => ("none", "the latest repair succeeded and was verified"),
        ("automation", "automation_gap") => (
            "propose_automatic_repair",
            "the group recurs and no automatic repair was ever linked",
        ),
        ("automation", "open") => (
            "verify_latest_repair",
            "an automatic repair is linked but not verified",
        ),
        ("automation", "failed_repair") => ("retry_automatic_repair", "the latest repair failed"),
        ("automation", _) => (
            "automate_the_gated_step",
            "the latest run waits for approval or the latest repair was manual",
        ),
        (_, "failed_repair") => ("hand_off_to_a_person", "the latest repair failed"),
        (_, "manual_gate") => (
            "hand_off_to_a_person",
            "the latest run waits for approval or the latest repair was manual",
        ),
        (_, "automation_gap") => (
            "hand_off_to_a_person",
            "the group recurs and nothing repairs it automatically",
        ),
        _ => (
            "hand_off_to_a_person",
            "an automatic repair is linked but not verified",
        ),
    };
    let age_min = (now - latest_at).max(0) / 60_000;
    let running = g.latest.as_ref().filter(|r| r.run_state == "running");
    let checks = vec![
        Check {
            name: "still_recurring",
            ok: now - latest_at <= STILL_RECURRING_MS,
            detail: format!("latest occurrence {age_min} min ago; the window is 24 h"),
        },
        Check {
            name: "latest_run_not_running",
            ok: running.is_none(),
            detail: match running {
                Some(r) => format!("run {} is still running", r.result_id),
                None => "no linked run is running".to_owned(),
            },
        },
        Check {
            name: "source_refs_present",
            ok: refs > 0,
            detail: format!("the latest event has {refs} source reference(s)"),
        },
        Check {
            name: "no_open_handoff",
            ok: open_handoff.is_none(),
            detail: match open_handoff {
                Some(id) => format!("handoff {id} is open (the item is not verified since)"),
                None => "no handoff is open".to_owned(),
            },
        },
        Check {
            name: "work_item_open",
            ok: class != "verified",
            detail: format!("classified {class}"),
        },
    ];
    let ready = action != "none" && checks.iter().all(|c| c.ok);
    Plan {
        mode: mode.to_owned(),
        resolved_mode: resolved,
        action,
        reason,
        checks,
        ready,
    }
}

/// What a preview promises: it only reads.
pub const GUARANTEES: [&str; 3] = [
    "read-only: answered from this replica's read models",
    "publishes nothing to the bus",
    "creates or changes no incident, repair, ticket or database row",
];

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
}
