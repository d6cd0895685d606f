//! The work-item log's API bodies: a dry-run's and a handoff's request (handoff.rs parses
//! them field by field, so that each bad field gets a 422 naming it; these declare them for
//! the document) and the history answer. The entries themselves are
//! [`crate::projections::work_items::WorkItemEntry`], which the projection stores as the API
//! answers them.

use serde_json::value::RawValue;
use utoipa::ToSchema;

/// Body of `POST …/work-item/dry-run`.
#[derive(ToSchema, serde::Deserialize)]
#[allow(dead_code)] // reason: parsed field by field (handoff::parse_request); declared for the document
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
#[derive(ToSchema, serde::Deserialize)]
#[allow(dead_code)] // reason: parsed field by field (handoff::parse_request); declared for the document
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

/// `/api/v1/alerts/recurrence/work-item/history`.
#[derive(Debug, ToSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkItemHistory {
    /// The work item.
    pub work_item_id: String,
    /// Its entries, newest first, as the projection stored them.
    #[schema(value_type = Vec<crate::projections::work_items::WorkItemEntry>)]
    pub entries: Vec<Box<RawValue>>,
}
