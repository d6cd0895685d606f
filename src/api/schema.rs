//! The shapes the API answers with, for the OpenAPI description (`openapi.rs`). Handlers
//! build their JSON where they read it (often in SQLite itself); these types name each field
//! once for the document, and a test checks real answers against them, so they cannot drift
//! (`deny_unknown_fields` makes the schemas closed: a field added to an answer but not here
//! fails that test too).

#![allow(dead_code)] // reason: read by the OpenAPI derive only, never constructed

use serde_json::Value;
use utoipa::ToSchema;

/// Every error: a stable code and a message; 422s also name the parameter and its form.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// e.g. `invalid_parameter`, `not_found`, `unauthorized`, `behind`.
    error: String,
    /// What went wrong, for a person.
    message: String,
    /// The offending parameter (422).
    parameter: Option<String>,
    /// The accepted form (422).
    expected: Option<String>,
    /// The stream that has not reached the requested sequence (`Orrery-Min-Seq`, 503).
    stream: Option<String>,
    /// Where that stream's projection stands (503 `behind`).
    checkpoint: Option<u64>,
    /// The sequence asked for (503 `behind`).
    wanted: Option<u64>,
}

/// `/health`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Always `ok` while the process runs.
    status: String,
}

/// One projection against its stream.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lag {
    /// Stream name.
    stream: String,
    /// Last committed sequence.
    checkpoint: u64,
    /// Last sequence in the stream; null when it could not be read.
    stream_last_seq: Option<u64>,
    /// First sequence the stream still holds.
    stream_first_seq: Option<u64>,
    /// Messages the stream holds after the checkpoint.
    lag: Option<u64>,
    /// Messages projected per second lately.
    rate_per_sec: Option<u64>,
    /// Seconds until lag 0 at that rate.
    eta_secs: Option<u64>,
}

/// A range a stream no longer held when the projection reached it.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gap {
    /// Stream name.
    stream: String,
    /// First sequence missing.
    first_seq: u64,
    /// Last sequence missing.
    last_seq: u64,
    /// Messages in the range.
    events: u64,
    /// What to do about it.
    message: String,
}

/// `/ready`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    /// `ready` or `not_ready`.
    status: String,
    /// Why not ready.
    reasons: Vec<String>,
    /// Per projection.
    projections: Vec<Lag>,
    /// Gaps, reported (they do not fail readiness).
    gaps: Vec<Gap>,
}

/// `/api/v1/health/fleet` agents.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetAgents {
    /// Agents that ever reported.
    known: i64,
    /// Not stale.
    active: i64,
    /// Silent past the threshold.
    stale: i64,
    /// The threshold.
    stale_after_secs: u64,
}

/// A 503 of `/api/v1/health/fleet`: the fleet is degraded, or the replica is behind the
/// `Orrery-Min-Seq` asked for.
#[derive(ToSchema, serde::Deserialize)]
#[serde(untagged)]
pub enum FleetUnavailable {
    /// Degraded: the reasons say why.
    Degraded(Fleet),
    /// Behind `Orrery-Min-Seq`.
    Behind(ErrorBody),
}

/// `/api/v1/health/fleet`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// `ok`, `unknown` (no agent yet) or `degraded` (503).
    status: String,
    /// Why degraded.
    reasons: Vec<String>,
    /// Agent counts.
    agents: FleetAgents,
    /// JetStream resources: `{all_ok, healthy, total, missing}`.
    #[schema(value_type = Object)]
    jetstream: Value,
    /// Per projection.
    projections: Vec<Lag>,
    /// Results in the last 24 h: `{window_hours, total, failed}`.
    #[schema(value_type = Object)]
    recent_results: Value,
    /// Now.
    observed_at: String,
}

/// `/api/v1/results/stats`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultStats {
    /// The window asked for.
    since: String,
    /// The outcome filter.
    success: Option<bool>,
    /// The kind filter.
    kind: Option<String>,
    /// Results recorded in the window.
    count: i64,
}

/// Duration statistics of one job.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobDurations {
    /// Job id.
    job_id: String,
    /// Timed results.
    count: i64,
    /// Milliseconds.
    min_ms: i64,
    /// Nearest-rank median, ms.
    p50_ms: i64,
    /// Nearest-rank 95th percentile, ms.
    p95_ms: i64,
    /// Nearest-rank 99th percentile, ms.
    p99_ms: i64,
    /// Slowest, ms.
    max_ms: i64,
    /// Mean, ms.
    mean_ms: f64,
    /// The slowest result's id.
    max_result_id: Option<String>,
}

/// `/api/v1/results/durations`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Durations {
    /// Start of the window.
    since: String,
    /// Slowest p95 first.
    items: Vec<JobDurations>,
}

/// A stored dead letter.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetter {
    /// Row id.
    id: i64,
    /// Stream.
    stream: String,
    /// Stream sequence.
    seq: i64,
    /// Subject.
    subject: String,
    /// Why it could not be projected.
    reason: String,
    /// The message as received (redacted for ALERTS), base64.
    payload_base64: String,
    /// Publish time.
    received_at: String,
}

/// `/api/v1/dead-letters`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetters {
    /// Newest first.
    items: Vec<DeadLetter>,
    /// All matching.
    total: i64,
}

/// A topology in the list.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyRow {
    /// Topology id.
    id: String,
    /// Display name.
    name: Option<String>,
    /// Latest status.
    status: Option<String>,
    /// Last event time.
    updated_at: String,
    /// Last TOPOLOGY sequence applied to it.
    last_seq: i64,
    /// Mutations enqueued or applying.
    in_flight: i64,
}

/// `/api/v1/topologies`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topologies {
    /// By id.
    items: Vec<TopologyRow>,
}

/// A mutation.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mutation {
    /// Its topology.
    topology_id: String,
    /// Id, unique within the topology.
    mutation_id: String,
    /// Operation.
    op: Option<String>,
    /// Specification (any JSON object).
    #[schema(value_type = Option<Object>)]
    spec: Option<Value>,
    /// Who asked.
    actor: Option<String>,
    /// `enqueued`, `applying`, `applied` or `failed`.
    state: String,
    /// Why it failed.
    error: Option<String>,
    /// When enqueued.
    enqueued_at: Option<String>,
    /// Last change.
    updated_at: String,
    /// Last TOPOLOGY sequence applied to it.
    seq: i64,
}

/// `/api/v1/topologies/{tid}`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Topology id.
    id: String,
    /// Display name.
    name: Option<String>,
    /// Latest status.
    status: Option<String>,
    /// Last event time.
    updated_at: String,
    /// Last TOPOLOGY sequence applied to it.
    last_seq: i64,
    /// Mutations enqueued or applying, oldest first.
    in_flight: Vec<Mutation>,
}

/// `/api/v1/topologies/{tid}/mutations`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mutations {
    /// Newest first.
    items: Vec<Mutation>,
}

/// Body of `POST …/mutations`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    /// Operation, 1–128 bytes.
    op: String,
    /// Any JSON object.
    #[schema(value_type = Object)]
    spec: Value,
}

/// Answer of `POST …/mutations` (202).
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enqueued {
    /// The new (or, for a repeated Idempotency-Key, the original) mutation's id.
    mutation_id: String,
    /// Its TOPOLOGY sequence.
    seq: u64,
    /// True when the Idempotency-Key (or the bus's duplicate window) had seen it.
    duplicate: Option<bool>,
    /// With `?wait=true`: whether this replica projected it within --mutation-wait-ms.
    projected: Option<bool>,
}

/// `/api/v1/auth/sse-ticket`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ticket {
    /// Single-use credential for `?ticket=`.
    ticket: String,
    /// Seconds it stays valid.
    expires_in: u64,
}

/// Body of `/api/v1/auth/login`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The token of a sign-in link (`orrery token --login-url`).
    login_token: String,
}

/// Answer of `/api/v1/auth/login`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// An API token.
    token: String,
    /// Who it is for.
    sub: String,
    /// `viewer`, `operator` or `admin`.
    role: String,
    /// Its expiry.
    expires_at: String,
}

/// `/api/v1/auth/whoami`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhoAmI {
    /// Who the token is for.
    sub: String,
    /// `viewer`, `operator` or `admin`.
    role: String,
    /// Its expiry (null without auth).
    expires_at: Option<String>,
    /// Whether authentication is on.
    auth: bool,
    /// The projects the token may see; null for every project.
    projects: Option<Vec<String>>,
    /// The topologies the token may see; null for every topology.
    topologies: Option<Vec<String>>,
}

/// An agent.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    /// Agent id.
    agent_id: String,
    /// Host name.
    hostname: Option<String>,
    /// Agent version.
    version: Option<String>,
    /// Labels.
    #[schema(value_type = Option<Object>)]
    labels: Option<Value>,
    /// Latest heartbeat.
    last_heartbeat: String,
    /// Silent past the threshold.
    stale: bool,
}

/// `/api/v1/agents`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agents {
    /// By id.
    items: Vec<Agent>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// A system stats sample.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemSample {
    /// Agent id.
    agent_id: String,
    /// Sample time.
    at: String,
    /// CPU, percent.
    cpu_percent: Option<f64>,
    /// Bytes.
    memory_usage: Option<i64>,
    /// Bytes.
    memory_limit: Option<i64>,
}

/// A container's latest sample.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopContainer {
    /// Container id (empty unless admin).
    container_id: String,
    /// Workload.
    workload_id: Option<String>,
    /// Role in the workload.
    role: Option<String>,
    /// `workload/role`.
    owner_name: String,
    /// Agent id.
    agent_id: String,
    /// Sample time.
    at: String,
    /// CPU, percent.
    cpu_percent: Option<f64>,
    /// Bytes.
    memory_usage: Option<i64>,
    /// Bytes.
    memory_limit: Option<i64>,
}

/// `/api/v1/system/stats/top`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Top {
    /// `cpu` or `memory`.
    by: String,
    /// Busiest first.
    items: Vec<TopContainer>,
}

/// A workload's point in time.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSample {
    /// Sample time.
    at: String,
    /// Summed over its containers.
    cpu_percent: Option<f64>,
    /// Summed over its containers.
    memory_usage: Option<i64>,
    /// The largest container limit.
    memory_limit: Option<i64>,
    /// Containers sampled.
    containers: i64,
}

/// A workload's latest deploy.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatestDeploy {
    /// Deploy id.
    deploy_id: String,
    /// Image reference.
    reference: Option<String>,
    /// Outcome.
    success: Option<bool>,
    /// When.
    recorded_at: Option<String>,
}

/// A workload.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRow {
    /// Workload id.
    workload_id: String,
    /// Its newest deploy.
    latest_deploy: Option<LatestDeploy>,
}

/// `/api/v1/workloads`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workloads {
    /// By id.
    items: Vec<WorkloadRow>,
}

/// A deploy in the ledger.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// Deploy id (the result id).
    deploy_id: String,
    /// Workload.
    workload_id: String,
    /// Agent that deployed.
    agent_id: String,
    /// Image reference.
    reference: Option<String>,
    /// `deploy` or `rollback`.
    reason: String,
    /// Outcome.
    success: bool,
    /// A fixed marker when failed; the error text is never stored.
    error: Option<String>,
    /// When.
    recorded_at: String,
}

/// `/api/v1/workloads/{wid}/deploys`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploys {
    /// Newest first.
    items: Vec<Deploy>,
    /// Page size.
    limit: i64,
    /// Page start.
    offset: i64,
}

/// Body of a rollback.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// A successful, pinned deploy of the workload.
    deploy_id: String,
}

/// Answer of a rollback (202).
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolledBack {
    /// The command's id.
    command_id: String,
    /// The reference asked for.
    reference: String,
    /// Its COMMANDS sequence.
    seq: u64,
}

/// An alert event as stored (redacted).
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertEvent {
    /// ALERTS sequence.
    seq: i64,
    /// Envelope id.
    event_id: String,
    /// Project.
    project_id: String,
    /// Provider.
    provider: String,
    /// `firing`, `resolved` or `heartbeat`.
    stage: String,
    /// Provider's event id.
    provider_event_id: String,
    /// Alert name.
    alertname: Option<String>,
    /// Severity.
    severity: Option<String>,
    /// Namespace.
    namespace: Option<String>,
    /// Target.
    target_resource: Option<String>,
    /// Fingerprint.
    fingerprint: Option<String>,
    /// The recurrence group; null for provider heartbeats and alerts labelled synthetic,
    /// which arrive on a schedule by design and so belong to no group.
    recurrence_key: Option<String>,
    /// Labels, redacted.
    #[schema(value_type = Option<Object>)]
    labels: Option<Value>,
    /// Annotations, redacted.
    #[schema(value_type = Option<Object>)]
    annotations: Option<Value>,
    /// Content, redacted.
    content_redacted: Option<String>,
    /// SHA-256 of the original content.
    content_sha256: Option<String>,
    /// Length of the original content.
    content_length: Option<i64>,
    /// Whether anything was redacted.
    has_redacted_content: bool,
    /// Version of the redaction rules.
    redaction_version: i64,
    /// Source URL, redacted.
    source_url: Option<String>,
    /// Kind → ids.
    #[schema(value_type = Option<Object>)]
    source_refs: Option<Value>,
    /// Kind → count.
    #[schema(value_type = Option<Object>)]
    source_ref_counts: Option<Value>,
    /// References in all.
    source_ref_total: i64,
    /// Same provider event id seen before.
    is_duplicate: bool,
    /// A heartbeat or labelled synthetic.
    is_synthetic: bool,
    /// The provider's time.
    provider_ts: Option<String>,
    /// Publish time.
    received_at: String,
}

/// Dossier summary.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DossierSummary {
    /// Events matching.
    event_count: i64,
    /// Distinct sources.
    source_count: i64,
    /// Duplicates.
    duplicate_total: i64,
    /// Redacted.
    redacted_total: i64,
    /// Source references.
    source_ref_total: i64,
}

/// `/api/v1/alerts/dossier`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dossier {
    /// Counts.
    summary: DossierSummary,
    /// Newest first.
    items: Vec<AlertEvent>,
}

/// A recurrence group.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecurrenceGroup {
    /// Group key.
    recurrence_key: String,
    /// Non-heartbeat occurrences.
    occurrence_total: i64,
    /// Duplicates among them.
    duplicate_total: i64,
    /// First seen.
    first_received_at: String,
    /// Last seen.
    latest_received_at: String,
    /// Provider of the latest.
    provider: String,
    /// Latest alert name.
    alertname: Option<String>,
    /// Latest severity.
    severity: Option<String>,
    /// Latest namespace.
    namespace: Option<String>,
    /// Latest target.
    target_resource: Option<String>,
    /// Latest fingerprint.
    fingerprint: Option<String>,
    /// The latest event.
    latest: AlertEvent,
    /// Runs linked to the group (by one of its events or by its key).
    linked_run_total: i64,
    /// Linked runs per state.
    run_state_counts: RunStateCounts,
    /// The newest linked run.
    latest_run_id: Option<String>,
    /// Its state.
    latest_run_state: Option<String>,
    /// Its agent.
    latest_agent_id: Option<String>,
    /// Its incident.
    latest_incident_id: Option<String>,
    /// Incidents of the linked runs, sorted.
    incident_ids: Vec<String>,
    /// Linked runs per repair kind.
    repair_summary: RepairSummary,
    /// What the group still needs (groups with two or more occurrences).
    work_item: Option<WorkItemRef>,
}

/// Linked runs per state.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunStateCounts {
    /// Running.
    running: i64,
    /// Succeeded.
    succeeded: i64,
    /// Failed.
    failed: i64,
    /// Waiting for approval.
    needs_approval: i64,
}

/// Linked runs per repair kind.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairSummary {
    /// Automatic repairs.
    auto: i64,
    /// Manual repairs.
    manual: i64,
    /// Runs that repaired nothing.
    none: i64,
    /// Verified runs.
    verified: i64,
    /// The newest repair (auto or manual).
    latest_repair: Option<LatestRepair>,
}

/// The newest repair of a group.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatestRepair {
    /// Its result id.
    result_id: String,
    /// auto or manual.
    repair: String,
    /// Its state.
    run_state: String,
    /// Whether it was verified.
    verified: bool,
}

/// A group's work item.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkItemRef {
    /// Stable id (the same on every replica).
    id: String,
    /// verified, failed_repair, manual_gate, automation_gap or open.
    classification: String,
    /// Everything but verified.
    open: bool,
}

/// A pre-flight check.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanCheck {
    /// still_recurring, latest_run_not_running, source_refs_present, no_open_handoff or
    /// work_item_open.
    name: String,
    /// Whether it passed.
    ok: bool,
    /// Why.
    detail: String,
}

/// What a preview proposes.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkItemPlan {
    /// The mode asked for.
    mode: String,
    /// automation, manual, or none (closed).
    resolved_mode: String,
    /// The proposed next step.
    action: String,
    /// Why.
    reason: String,
    /// Pre-flight checks.
    checks: Vec<PlanCheck>,
    /// Every check passed and there is a step to take.
    ready: bool,
}

/// A work item as a preview names it.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkItem {
    /// Stable id.
    id: String,
    /// Its group's project.
    project_id: String,
    /// Its group's key.
    recurrence_key: String,
    /// verified, failed_repair, manual_gate, automation_gap or open.
    classification: String,
    /// Everything but verified.
    open: bool,
}

/// `/api/v1/alerts/recurrence/work-item/preview`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkItemPreview {
    /// The work item.
    work_item: WorkItem,
    /// Its group, as /alerts/recurrence lists it.
    group: RecurrenceGroup,
    /// The proposed next step and its checks.
    plan: WorkItemPlan,
    /// What the preview promises (it only reads).
    guarantees: Vec<String>,
}

/// Body of `POST …/work-item/dry-run`.
#[derive(ToSchema, serde::Deserialize)]
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
#[derive(ToSchema, serde::Deserialize)]
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
#[derive(ToSchema, serde::Deserialize)]
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
#[derive(ToSchema, serde::Deserialize)]
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
#[derive(ToSchema, serde::Deserialize)]
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
    plan: WorkItemPlan,
    /// Handoffs: ticket_proposal or manual_takeover.
    handoff_kind: Option<String>,
    /// Handoffs: the dry-run it rests on.
    dry_run_entry_id: Option<String>,
    /// Handoffs: the drafted ticket.
    ticket: Option<DraftTicket>,
}

/// `/api/v1/alerts/recurrence/work-item/history`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkItemHistory {
    /// The work item.
    work_item_id: String,
    /// Its entries, newest first.
    entries: Vec<WorkItemEntry>,
}

/// Recurrence summary.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecurrenceSummary {
    /// Groups returned.
    groups: i64,
    /// With two or more occurrences.
    recurrent_groups: i64,
    /// Duplicates in them.
    duplicate_events: i64,
    /// Runs linked to the groups.
    linked_run_total: i64,
    /// Occurrences of groups with no linked run.
    unlinked_event_total: i64,
    /// Linked automatic repairs.
    auto_repair_linked_total: i64,
    /// Recurrent groups whose latest repair is verified.
    verified_repair_group_total: i64,
    /// Recurrent groups whose work item is open.
    open_work_item_group_total: i64,
    /// Recurrent groups waiting on a person.
    manual_gate_group_total: i64,
    /// Recurrent groups with no automatic repair.
    automation_gap_group_total: i64,
    /// Recurrent groups whose latest repair failed.
    failed_repair_group_total: i64,
}

/// `/api/v1/alerts/recurrence`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recurrence {
    /// Counts.
    summary: RecurrenceSummary,
    /// Latest first.
    groups: Vec<RecurrenceGroup>,
}

/// `/api/v1/alerts/recent`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recent {
    /// Newest first.
    items: Vec<AlertEvent>,
}

/// Coverage of one provider (or all).
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoverageRow {
    /// The provider (absent in the summary).
    provider: Option<String>,
    /// Events.
    total: i64,
    /// Duplicates.
    duplicates: i64,
    /// Redacted.
    redacted: i64,
    /// With source references.
    with_source_refs: i64,
    /// Without.
    without_source_refs: i64,
    /// Newest.
    latest_received_at: Option<String>,
    /// Providers seen (summary only).
    providers: Option<i64>,
}

/// `/api/v1/alerts/coverage`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coverage {
    /// Events looked at.
    window_events: i64,
    /// All providers.
    summary: CoverageRow,
    /// Per provider.
    providers: Vec<CoverageRow>,
}

/// A provider's freshness.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFreshness {
    /// Provider.
    provider: String,
    /// Its newest event, heartbeats included.
    last_event_at: Option<String>,
    /// Seconds since.
    age_secs: Option<i64>,
    /// Older than the threshold, or never seen.
    stale: bool,
}

/// `/api/v1/alerts/freshness`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freshness {
    /// The threshold.
    stale_after_secs: u64,
    /// Per provider.
    providers: Vec<ProviderFreshness>,
    /// Now.
    observed_at: String,
}

/// Body of a provider heartbeat.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Project.
    project_id: String,
    /// One or two of `sentry`, `signoz`.
    providers: Vec<String>,
    /// Why, ≤ 200 bytes.
    reason: Option<String>,
    /// A run reference, ≤ 200 bytes.
    run_ref: Option<String>,
}

/// Answer of a provider heartbeat (202).
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatsSent {
    /// Envelope ids published.
    event_ids: Vec<String>,
    /// What was published.
    #[schema(value_type = Vec<Object>)]
    items: Vec<Value>,
}

/// Answer of the Alertmanager webhook (202).
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookAccepted {
    /// Events published.
    published: usize,
    /// Their envelope ids.
    event_ids: Vec<String>,
    /// Their ALERTS sequences.
    seqs: Vec<u64>,
}

/// `/api/v1/admin/digest`: per read model, checkpoint and hashes.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    /// Per read model: `{stream, checkpoint, sha256, tables: [{table, rows, sha256}]}`.
    #[schema(value_type = Vec<Object>)]
    read_models: Vec<Value>,
    /// Tables several read models write.
    #[schema(value_type = Vec<Object>)]
    shared: Vec<Value>,
}
