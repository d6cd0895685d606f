//! The work-item log's shapes, declared once: what the API publishes on WORKITEMS (the plan,
//! the drafted ticket), what this projection accepts from the bus (anything else is a dead
//! letter) and the entry it stores and the API answers, byte for byte. Each derives its
//! serialization, its parsing and its OpenAPI schema.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A pre-flight check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanCheck {
    /// still_recurring, latest_run_not_running, source_refs_present, no_open_handoff or
    /// work_item_open.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Why.
    pub detail: String,
}

/// What a preview proposes, as previews answer it and entries record it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkItemPlan {
    /// The mode asked for.
    pub mode: String,
    /// automation, manual, or none (closed).
    pub resolved_mode: String,
    /// The proposed next step.
    pub action: String,
    /// Why.
    pub reason: String,
    /// Pre-flight checks.
    pub checks: Vec<PlanCheck>,
    /// Every check passed and there is a step to take.
    pub ready: bool,
}

/// A run as a drafted ticket lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketRun {
    /// Its result id.
    pub result_id: String,
    /// The agent that ran it.
    pub agent_id: String,
    /// running, succeeded, failed or needs_approval.
    pub run_state: String,
    /// auto, manual or none.
    pub repair: String,
    /// Whether it was verified.
    pub verified: bool,
    /// Its incident; null when the run named none.
    pub incident_id: Option<String>,
    /// When it was recorded.
    pub recorded_at: String,
}

/// Occurrence figures of a drafted ticket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketOccurrences {
    /// Occurrences.
    pub total: i64,
    /// Duplicates among them.
    pub duplicates: i64,
    /// The first.
    pub first_received_at: String,
    /// The latest.
    pub latest_received_at: String,
}

/// The ticket a handoff drafts (redacted; nothing is filed anywhere).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftTicket {
    /// Title.
    pub title: String,
    /// The latest event's redacted content, at most 2,000 characters.
    pub summary: String,
    /// The plan's next step.
    pub proposed_action: String,
    /// Why.
    pub reason: String,
    /// Occurrence figures.
    pub occurrences: TicketOccurrences,
    /// The latest event's redacted source URL; null when it had none.
    pub source_url: Option<String>,
    /// The latest event's redacted source references; null when it had none.
    #[schema(value_type = Option<Object>)]
    pub source_refs: Option<Value>,
    /// Incidents of the group's runs.
    pub incident_ids: Vec<String>,
    /// The latest runs, newest first (at most 5).
    pub latest_runs: Vec<TicketRun>,
}

/// One dry-run or handoff of a work item, as recorded on WORKITEMS and answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkItemEntry {
    /// Its id (the envelope id).
    pub entry_id: String,
    /// Its WORKITEMS sequence.
    pub seq: u64,
    /// dry_run or handoff.
    pub kind: String,
    /// The work item.
    pub work_item_id: String,
    /// Its project.
    pub project_id: String,
    /// Its recurrence key.
    pub recurrence_key: String,
    /// When it was recorded.
    pub recorded_at: String,
    /// Who recorded it (the token's subject).
    pub actor: String,
    /// The mode of its plan.
    pub mode: String,
    /// The classification then.
    pub classification: String,
    /// Occurrences then.
    pub occurrences: i64,
    /// The latest occurrence then.
    pub latest_occurrence_at: String,
    /// Whether every pre-flight check passed and there was a step to take.
    pub passed: bool,
    /// The plan then.
    pub plan: WorkItemPlan,
    /// Handoffs only: ticket_proposal or manual_takeover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub handoff_kind: Option<String>,
    /// Handoffs only: the dry-run it rests on (null when the publisher named none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub dry_run_entry_id: Option<Option<String>>,
    /// Handoffs only: the drafted ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub ticket: Option<DraftTicket>,
}
