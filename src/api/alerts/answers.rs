//! The answers of the dossier's read side ([`super::queries`]), each declared once: the
//! serialization and the OpenAPI schema both derive from these types.
//!
//! The hot answers (events, recurrence groups) are rendered by SQLite and a hand-written
//! splice for speed; [`AlertEvent::from_row`] and [`RecurrenceGroup::new`] build the same
//! answers as typed values, and the property tests in `queries_tests.rs` require the two
//! renderings to be equal JSON, and to match the document, for generated rows covering every
//! nullable column. The lists around them (a dossier, a recurrence page, the recent events)
//! splice those items beside a typed summary; the API tests hold whole answers to these
//! declarations.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use utoipa::ToSchema;

use super::plan::{work_item_id, GroupRuns, MAX_INCIDENT_IDS};
use crate::window::format_unix_ms;

/// An alert event as stored (redacted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertEvent {
    /// ALERTS sequence.
    pub seq: i64,
    /// Envelope id.
    pub event_id: String,
    /// Project.
    pub project_id: String,
    /// Provider.
    pub provider: String,
    /// `firing`, `resolved` or `heartbeat`.
    pub stage: String,
    /// Provider's event id.
    pub provider_event_id: String,
    /// Alert name; null when the provider sent none.
    pub alertname: Option<String>,
    /// Severity; null when the provider sent none.
    pub severity: Option<String>,
    /// Namespace; null when the provider sent none.
    pub namespace: Option<String>,
    /// Target; null when the provider sent none.
    pub target_resource: Option<String>,
    /// Fingerprint; null when the provider sent none.
    pub fingerprint: Option<String>,
    /// The recurrence group; null for provider heartbeats and alerts labelled synthetic,
    /// which arrive on a schedule by design and so belong to no group.
    pub recurrence_key: Option<String>,
    /// Labels, redacted; null when the provider sent none.
    #[schema(value_type = Option<Object>)]
    pub labels: Option<Value>,
    /// Annotations, redacted; null when the provider sent none.
    #[schema(value_type = Option<Object>)]
    pub annotations: Option<Value>,
    /// Content, redacted; null when the event had no content.
    pub content_redacted: Option<String>,
    /// SHA-256 of the original content; null when the event had no content.
    pub content_sha256: Option<String>,
    /// Length of the original content; null when the event had no content.
    pub content_length: Option<i64>,
    /// Whether anything was redacted.
    pub has_redacted_content: bool,
    /// Version of the redaction rules.
    pub redaction_version: i64,
    /// Source URL, redacted; null when the provider sent none.
    pub source_url: Option<String>,
    /// Kind → ids; null when the provider sent none.
    #[schema(value_type = Option<Object>)]
    pub source_refs: Option<Value>,
    /// Kind → count; null for events stored before the counts were kept.
    #[schema(value_type = Option<Object>)]
    pub source_ref_counts: Option<Value>,
    /// References in all.
    pub source_ref_total: i64,
    /// Same provider event id seen before.
    pub is_duplicate: bool,
    /// A heartbeat or labelled synthetic.
    pub is_synthetic: bool,
    /// The provider's time; null when the provider sent none.
    pub provider_ts: Option<String>,
    /// Publish time.
    pub received_at: String,
}

/// A stored JSON column as a value: null stays null; text that is not JSON fails the read,
/// as SQLite's `json()` does.
fn json_column(row: &SqliteRow, column: &str) -> sqlx::Result<Option<Value>> {
    row.try_get::<Option<String>, _>(column)?
        .map(|text| {
            serde_json::from_str(&text)
                .map_err(|e| sqlx::Error::Decode(format!("alert_events.{column}: {e}").into()))
        })
        .transpose()
}

impl AlertEvent {
    /// The event of an `alert_events` row (`SELECT e.*`), typed.
    pub fn from_row(row: &SqliteRow) -> sqlx::Result<Self> {
        Ok(Self {
            seq: row.try_get("seq")?,
            event_id: row.try_get("event_id")?,
            project_id: row.try_get("project_id")?,
            provider: row.try_get("provider")?,
            stage: row.try_get("stage")?,
            provider_event_id: row.try_get("provider_event_id")?,
            alertname: row.try_get("alertname")?,
            severity: row.try_get("severity")?,
            namespace: row.try_get("namespace")?,
            target_resource: row.try_get("target_resource")?,
            fingerprint: row.try_get("fingerprint")?,
            recurrence_key: row.try_get("recurrence_key")?,
            labels: json_column(row, "labels")?,
            annotations: json_column(row, "annotations")?,
            content_redacted: row.try_get("content_redacted")?,
            content_sha256: row.try_get("content_sha256")?,
            content_length: row.try_get("content_length")?,
            has_redacted_content: row.try_get("has_redacted_content")?,
            redaction_version: row.try_get("redaction_version")?,
            source_url: row.try_get("source_url")?,
            source_refs: json_column(row, "source_refs")?,
            source_ref_counts: json_column(row, "source_ref_counts")?,
            source_ref_total: row.try_get("source_ref_total")?,
            is_duplicate: row.try_get("is_duplicate")?,
            is_synthetic: row.try_get("is_synthetic")?,
            provider_ts: row
                .try_get::<Option<i64>, _>("provider_ts")?
                .map(format_unix_ms),
            received_at: format_unix_ms(row.try_get("received_at")?),
        })
    }
}

/// Dossier summary.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DossierSummary {
    /// Events matching.
    pub event_count: usize,
    /// Distinct sources.
    pub source_count: usize,
    /// Duplicates.
    pub duplicate_total: i64,
    /// Redacted.
    pub redacted_total: i64,
    /// Source references.
    pub source_ref_total: i64,
}

/// `/api/v1/alerts/dossier`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Dossier {
    /// Counts.
    pub summary: DossierSummary,
    /// Newest first.
    pub items: Vec<AlertEvent>,
}

/// A recurrence group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecurrenceGroup {
    /// Group key.
    pub recurrence_key: String,
    /// Non-heartbeat occurrences.
    pub occurrence_total: i64,
    /// Duplicates among them.
    pub duplicate_total: i64,
    /// First seen.
    pub first_received_at: String,
    /// Last seen.
    pub latest_received_at: String,
    /// Provider of the latest.
    pub provider: String,
    /// Latest alert name; null when its provider sent none.
    pub alertname: Option<String>,
    /// Latest severity; null when its provider sent none.
    pub severity: Option<String>,
    /// Latest namespace; null when its provider sent none.
    pub namespace: Option<String>,
    /// Latest target; null when its provider sent none.
    pub target_resource: Option<String>,
    /// Latest fingerprint; null when its provider sent none.
    pub fingerprint: Option<String>,
    /// The latest event.
    pub latest: AlertEvent,
    /// Runs linked to the group (by one of its events or by its key).
    pub linked_run_total: i64,
    /// Linked runs per state.
    pub run_state_counts: RunStateCounts,
    /// The newest linked run; null when no run is linked.
    pub latest_run_id: Option<String>,
    /// Its state; null when no run is linked.
    pub latest_run_state: Option<String>,
    /// Its agent; null when no run is linked.
    pub latest_agent_id: Option<String>,
    /// Its incident; null when no run is linked or it named none.
    pub latest_incident_id: Option<String>,
    /// Incidents of the linked runs, sorted (at most 50).
    pub incident_ids: Vec<String>,
    /// Linked runs per repair kind.
    pub repair_summary: RepairSummary,
    /// What the group still needs; null for a group seen once (no work item yet).
    pub work_item: Option<WorkItemRef>,
}

/// The columns of an `alert_recurrence` row a group answer shows.
#[derive(Debug, Clone)]
pub struct RecurrenceRow {
    /// Its project.
    pub project_id: String,
    /// Its key.
    pub recurrence_key: String,
    /// Occurrences.
    pub occurrence_total: i64,
    /// Duplicates among them.
    pub duplicate_total: i64,
    /// First occurrence, Unix ms.
    pub first_received_at: i64,
    /// Latest occurrence, Unix ms.
    pub latest_received_at: i64,
}

impl RecurrenceGroup {
    /// The group of `row`, whose latest event is `latest` and whose linked runs are `runs`.
    pub fn new(row: &RecurrenceRow, latest: AlertEvent, runs: &GroupRuns) -> Self {
        let [running, succeeded, failed, needs_approval] = runs.states;
        let [auto, manual, none] = runs.repairs;
        let recurrent = row.occurrence_total > 1;
        let class = runs.classification();
        let newest = runs.latest.as_ref();
        Self {
            recurrence_key: row.recurrence_key.clone(),
            occurrence_total: row.occurrence_total,
            duplicate_total: row.duplicate_total,
            first_received_at: format_unix_ms(row.first_received_at),
            latest_received_at: format_unix_ms(row.latest_received_at),
            provider: latest.provider.clone(),
            alertname: latest.alertname.clone(),
            severity: latest.severity.clone(),
            namespace: latest.namespace.clone(),
            target_resource: latest.target_resource.clone(),
            fingerprint: latest.fingerprint.clone(),
            latest,
            linked_run_total: runs.total,
            run_state_counts: RunStateCounts {
                running,
                succeeded,
                failed,
                needs_approval,
            },
            latest_run_id: newest.map(|r| r.result_id.clone()),
            latest_run_state: newest.map(|r| r.run_state.clone()),
            latest_agent_id: newest.map(|r| r.agent_id.clone()),
            latest_incident_id: newest.and_then(|r| r.incident_id.clone()),
            incident_ids: runs
                .incidents
                .iter()
                .take(MAX_INCIDENT_IDS)
                .cloned()
                .collect(),
            repair_summary: RepairSummary {
                auto,
                manual,
                none,
                verified: runs.verified,
                latest_repair: runs.latest_repair.as_ref().map(|r| LatestRepair {
                    result_id: r.result_id.clone(),
                    repair: r.repair.clone(),
                    run_state: r.run_state.clone(),
                    verified: r.verified,
                }),
            },
            work_item: recurrent.then(|| WorkItemRef {
                id: work_item_id(&row.project_id, &row.recurrence_key),
                classification: class.to_owned(),
                open: class != "verified",
            }),
        }
    }
}

/// Linked runs per state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunStateCounts {
    /// Running.
    pub running: i64,
    /// Succeeded.
    pub succeeded: i64,
    /// Failed.
    pub failed: i64,
    /// Waiting for approval.
    pub needs_approval: i64,
}

/// Linked runs per repair kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepairSummary {
    /// Automatic repairs.
    pub auto: i64,
    /// Manual repairs.
    pub manual: i64,
    /// Runs that repaired nothing.
    pub none: i64,
    /// Verified runs.
    pub verified: i64,
    /// The newest repair (auto or manual); null when no repair is linked.
    pub latest_repair: Option<LatestRepair>,
}

/// The newest repair of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LatestRepair {
    /// Its result id.
    pub result_id: String,
    /// auto or manual.
    pub repair: String,
    /// Its state.
    pub run_state: String,
    /// Whether it was verified.
    pub verified: bool,
}

/// A group's work item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkItemRef {
    /// Stable id (the same on every replica).
    pub id: String,
    /// verified, failed_repair, manual_gate, automation_gap or open.
    pub classification: String,
    /// Everything but verified.
    pub open: bool,
}

/// Recurrence summary.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecurrenceSummary {
    /// Groups returned.
    pub groups: usize,
    /// With two or more occurrences.
    pub recurrent_groups: i64,
    /// Duplicates in them.
    pub duplicate_events: i64,
    /// Runs linked to the groups.
    pub linked_run_total: i64,
    /// Occurrences of groups with no linked run.
    pub unlinked_event_total: i64,
    /// Linked automatic repairs.
    pub auto_repair_linked_total: i64,
    /// Recurrent groups whose latest repair is verified.
    pub verified_repair_group_total: i64,
    /// Recurrent groups whose work item is open.
    pub open_work_item_group_total: i64,
    /// Recurrent groups waiting on a person.
    pub manual_gate_group_total: i64,
    /// Recurrent groups with no automatic repair.
    pub automation_gap_group_total: i64,
    /// Recurrent groups whose latest repair failed.
    pub failed_repair_group_total: i64,
}

/// `/api/v1/alerts/recurrence`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recurrence {
    /// Counts.
    pub summary: RecurrenceSummary,
    /// Latest first.
    pub groups: Vec<RecurrenceGroup>,
}

/// `/api/v1/alerts/recent`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recent {
    /// Newest first.
    pub items: Vec<AlertEvent>,
}

/// Coverage of one provider (or all).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CoverageRow {
    /// The provider; absent in the summary, which covers them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub provider: Option<String>,
    /// Events.
    pub total: i64,
    /// Duplicates.
    pub duplicates: i64,
    /// Redacted.
    pub redacted: i64,
    /// With source references.
    pub with_source_refs: i64,
    /// Without.
    pub without_source_refs: i64,
    /// Newest; null when there are no events.
    pub latest_received_at: Option<String>,
    /// Providers seen; in the summary only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub providers: Option<usize>,
}

/// `/api/v1/alerts/coverage`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Coverage {
    /// Events looked at.
    pub window_events: i64,
    /// All providers.
    pub summary: CoverageRow,
    /// Per provider.
    pub providers: Vec<CoverageRow>,
}

/// A provider's freshness.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderFreshness {
    /// Provider.
    pub provider: String,
    /// Its newest event, heartbeats included; null when never seen.
    pub last_event_at: Option<String>,
    /// Seconds since; null when never seen.
    pub age_secs: Option<i64>,
    /// Older than the threshold, or never seen.
    pub stale: bool,
}

/// `/api/v1/alerts/freshness`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Freshness {
    /// The threshold.
    pub stale_after_secs: u64,
    /// Per provider.
    pub providers: Vec<ProviderFreshness>,
    /// Now.
    pub observed_at: String,
}
