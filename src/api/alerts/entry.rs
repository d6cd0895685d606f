//! The work-item log's shapes: the bodies of a dry-run and a handoff, and the entries they
//! record on WORKITEMS. The entries are answered as the projection stored them (the JSON
//! the bus carried), so these declarations are the document's; the API tests hold real
//! entries to them (`deny_unknown_fields` closes each schema).

#![allow(dead_code)] // reason: entries are answered as stored; these types name their fields for the document

use serde_json::Value;
use utoipa::ToSchema;

/// Body of `POST …/work-item/dry-run`.
#[derive(ToSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DryRunRequest {
    /// The work item (`wi_` and 24 hex digits).
    #[schema(pattern = "^wi_[0-9a-f]{24}$")]
    work_item_id: String,
    /// Look for it in this project only.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    project_id: Option<String>,
    /// Look for it among this provider's groups only.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    provider: Option<String>,
    /// auto (default), automation or manual.
    #[schema(pattern = "^(auto|automation|manual)$")]
    mode: Option<String>,
    /// Look for it among the latest `limit` groups, 1–300 (default 300).
    #[schema(minimum = 1, maximum = 300)]
    limit: Option<i64>,
}

/// Body of `POST …/work-item/handoff`.
#[derive(ToSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffRequest {
    /// The work item (`wi_` and 24 hex digits).
    #[schema(pattern = "^wi_[0-9a-f]{24}$")]
    work_item_id: String,
    /// Look for it in this project only.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    project_id: Option<String>,
    /// Look for it among this provider's groups only.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    provider: Option<String>,
    /// auto (default), automation or manual; a dry-run in this mode must have passed.
    #[schema(pattern = "^(auto|automation|manual)$")]
    mode: Option<String>,
    /// Look for it among the latest `limit` groups, 1–300 (default 300).
    #[schema(minimum = 1, maximum = 300)]
    limit: Option<i64>,
    /// ticket_proposal (default) or manual_takeover.
    #[schema(pattern = "^(ticket_proposal|manual_takeover)$")]
    handoff_kind: Option<String>,
}

/// A run as a drafted ticket lists it.
#[derive(ToSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TicketRun {
    /// Its result id.
    result_id: String,
    /// The agent that ran it.
    agent_id: String,
    /// running, succeeded, failed or needs_approval.
    run_state: String,
    /// auto, manual or none.
    repair: String,
    /// Whether it was verified.
    verified: bool,
    /// Its incident.
    incident_id: Option<String>,
    /// When it was recorded.
    recorded_at: String,
}

/// Occurrence figures of a drafted ticket.
#[derive(ToSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TicketOccurrences {
    /// Occurrences.
    total: i64,
    /// Duplicates among them.
    duplicates: i64,
    /// The first.
    first_received_at: String,
    /// The latest.
    latest_received_at: String,
}

/// The ticket a handoff drafts (redacted; nothing is filed anywhere).
#[derive(ToSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DraftTicket {
    /// Title.
    title: String,
    /// The latest event's redacted content, at most 2,000 characters.
    summary: String,
    /// The plan's next step.
    proposed_action: String,
    /// Why.
    reason: String,
    /// Occurrence figures.
    occurrences: TicketOccurrences,
    /// The latest event's redacted source URL.
    source_url: Option<String>,
    /// The latest event's redacted source references.
    #[schema(value_type = Option<Object>)]
    source_refs: Option<Value>,
    /// Incidents of the group's runs.
    incident_ids: Vec<String>,
    /// The latest runs, newest first (at most 5).
    latest_runs: Vec<TicketRun>,
}

/// One dry-run or handoff of a work item, as recorded on WORKITEMS.
#[derive(ToSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkItemEntry {
    /// Its id (the envelope id).
    entry_id: String,
    /// Its WORKITEMS sequence.
    seq: i64,
    /// dry_run or handoff.
    kind: String,
    /// The work item.
    work_item_id: String,
    /// Its project.
    project_id: String,
    /// Its recurrence key.
    recurrence_key: String,
    /// When it was recorded.
    recorded_at: String,
    /// Who recorded it (the token's subject).
    actor: String,
    /// The mode of its plan.
    mode: String,
    /// The classification then.
    classification: String,
    /// Occurrences then.
    occurrences: i64,
    /// The latest occurrence then.
    latest_occurrence_at: String,
    /// Whether every pre-flight check passed and there was a step to take.
    passed: bool,
    /// The plan then.
    plan: crate::api::alerts::plan::Plan,
    /// Handoffs: ticket_proposal or manual_takeover.
    handoff_kind: Option<String>,
    /// Handoffs: the dry-run it rests on.
    dry_run_entry_id: Option<String>,
    /// Handoffs: the drafted ticket.
    ticket: Option<DraftTicket>,
}

/// `/api/v1/alerts/recurrence/work-item/history`.
#[derive(ToSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkItemHistory {
    /// The work item.
    work_item_id: String,
    /// Its entries, newest first.
    entries: Vec<WorkItemEntry>,
}
