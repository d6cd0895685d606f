//! What an operator does with a work item: a dry-run (the plan, recorded as pre-flight
//! history) and a handoff (a drafted ticket or a manual takeover, recorded the same way),
//! and the history of both.
//!
//! Neither changes anything outside Orrery. Each publishes one event on WORKITEMS
//! (`workitem.<project>.<work_item_id>.<dry_run|handoff>`) and answers 202 with the entry
//! once this replica has projected it, so the history lives on the bus like every read model
//! and a rebuild gives it back.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sqlx::Row;

use super::entry::WorkItemHistory;
use super::plan::{is_work_item_id, Plan, MODES};
use super::queries::{json_body, Filters, PageGroup};
use super::work_items::{find, plan_now, work_item_param};
use crate::api::consistency::{reach, written};
use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{
    body_bytes, idempotency_key, AsOperator, AsViewer, Authorized, Params, RawBody,
};
use crate::api::AppState;
use crate::bus::publish::{Outgoing, PublishError};
use crate::bus::{envelope, streams, subjects};
use crate::projections::work_items::{
    DraftTicket, EntryData, TicketOccurrences, TicketRun, WorkItemPlan, HANDOFF_KINDS,
};
use crate::token::Claims;
use crate::window::{format_unix_ms, now_ms};

/// Largest dry-run or handoff request body.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024;
/// Most characters of the latest event's (redacted) content a drafted ticket quotes.
pub const MAX_SUMMARY_CHARS: usize = 2_000;
/// Most runs a drafted ticket lists.
pub const TICKET_RUNS: i64 = 5;
/// Namespace of entry ids derived from idempotency keys.
const IDEMPOTENCY_NS: uuid::Uuid = uuid::uuid!("9d1c2f4a-7b3e-4c58-a0e6-2f5d8b1c9e73");
/// Set on an answer that replays an earlier request with the same `Idempotency-Key`.
const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// A dry-run or handoff request, validated.
#[derive(Debug)]
struct Request {
    work_item_id: String,
    project_id: Option<String>,
    provider: Option<String>,
    mode: String,
    limit: i64,
    handoff_kind: Option<String>,
    /// The projects the caller's token may see (`None`: all); not part of the body.
    scope: Option<Vec<String>>,
}

/// Parses a request body field by field, so that each bad field gets a 422 naming it.
fn parse_request(body: &RawBody, handoff: bool) -> ApiResult<Request> {
    let bytes = body_bytes(body, MAX_REQUEST_BYTES)?;
    let fields: Map<String, Value> = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "body must be a JSON object such as {{\"work_item_id\": \"wi_…\", \"mode\": \"auto\"}}: {e}"
        ))
    })?;
    let known: &[&str] = if handoff {
        &[
            "work_item_id",
            "project_id",
            "provider",
            "mode",
            "limit",
            "handoff_kind",
        ]
    } else {
        &["work_item_id", "project_id", "provider", "mode", "limit"]
    };
    if let Some(k) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            "body",
            format!(
                "only the fields {}; not `{}`",
                known.join(", "),
                k.escape_debug()
            ),
        ));
    }
    let text = |name: &'static str, ok: &dyn Fn(&str) -> bool, form: &str| match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if ok(s) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(name, form)),
    };
    let token = |s: &str| subjects::is_token(s);
    let work_item_id = text(
        "work_item_id",
        &is_work_item_id,
        "wi_ followed by 24 hex digits (required)",
    )?
    .ok_or_else(|| ApiError::invalid("work_item_id", "wi_ followed by 24 hex digits (required)"))?;
    let project_id = text("project_id", &token, subjects::TOKEN_FORM)?;
    let provider = text("provider", &token, subjects::TOKEN_FORM)?;
    let mode = text(
        "mode",
        &|s| MODES.contains(&s),
        "auto, automation or manual",
    )?
    .unwrap_or_else(|| "auto".to_owned());
    let limit = match fields.get("limit") {
        None | Some(Value::Null) => 300,
        // JSON Schema's integers include 21.0: a whole number however it is written.
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .filter(|n| (1..=300).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", "an integer from 1 to 300"))?,
    };
    let handoff_kind = if handoff {
        Some(
            text(
                "handoff_kind",
                &|s| HANDOFF_KINDS.contains(&s),
                "ticket_proposal or manual_takeover",
            )?
            .unwrap_or_else(|| "ticket_proposal".to_owned()),
        )
    } else {
        None
    };
    Ok(Request {
        work_item_id,
        project_id,
        provider,
        mode,
        limit,
        handoff_kind,
        scope: None,
    })
}

/// An earlier entry named by the same `Idempotency-Key`, as the answer to replay; 409 when
/// the key was used for a different request.
async fn replay(state: &AppState, entry_id: &str, r: &Request) -> ApiResult<Option<Response>> {
    let row = sqlx::query(
        "SELECT seq, mode, handoff_kind, entry FROM work_item_history WHERE entry_id = ?",
    )
    .bind(entry_id)
    .fetch_optional(&state.db.readers)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let (mode, kind): (String, Option<String>) = (row.get("mode"), row.get("handoff_kind"));
    if mode != r.mode || kind != r.handoff_kind {
        return Err(ApiError::ConflictAs(
            "idempotency_key_reused",
            format!(
                "this Idempotency-Key was used for a {} in mode {mode}; send a new key for another request",
                kind.as_deref().unwrap_or("dry-run")
            ),
        ));
    }
    let seq: i64 = row.get("seq");
    Ok(Some(accepted(seq as u64, row.get("entry"), true)))
}

/// 202 with an entry, `Orrery-Seq` naming it, and `Idempotent-Replayed` on a replay.
fn accepted(seq: u64, entry: String, replayed: bool) -> Response {
    let mut response = (
        StatusCode::ACCEPTED,
        written(streams::WORKITEMS, seq),
        json_body(entry),
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// The entry id of a request: derived from the caller, the work item, the kind and the
/// `Idempotency-Key` (the same on every replica), or random without a key.
fn entry_id(actor: &str, r: &Request, kind: &str, key: Option<&str>) -> String {
    match key {
        Some(k) => uuid::Uuid::new_v5(
            &IDEMPOTENCY_NS,
            format!("{actor}\n{}\n{kind}\n{k}", r.work_item_id).as_bytes(),
        ),
        None => uuid::Uuid::new_v4(),
    }
    .to_string()
}

/// Publishes an entry, waits until this replica has projected it and answers it. With
/// `expected_last`, the entry is appended only if the last message on its subject is still
/// that one (see [`last_handoff_seq`]).
async fn record(
    state: &AppState,
    g: &PageGroup,
    r: &Request,
    (kind, entry_id): (&str, &str),
    data: EntryData<String>,
    expected_last: Option<u64>,
) -> ApiResult<Response> {
    let body = envelope::encode(
        entry_id,
        &format!("workitem.{kind}"),
        "orrery/api",
        &format_unix_ms(now_ms()),
        &data,
    );
    let subject = format!("workitem.{}.{}.{kind}", g.project_id, r.work_item_id);
    let published = crate::bus::publish::publish_one(
        &state.js,
        &state.bus_events,
        state.bus_timeout,
        Outgoing {
            subject,
            msg_id: entry_id.to_owned(),
            body: body.into(),
            expected_last_subject_seq: expected_last,
        },
    )
    .await;
    let (seq, duplicate) = match published {
        Ok(ack) => (ack.sequence, ack.duplicate),
        // JetStream checks the expected sequence before the Nats-Msg-Id, so a retry of a
        // publish whose ack was lost is refused too: then the last entry is ours.
        Err(PublishError::Superseded(subject)) => match last_on_subject(state, &subject).await? {
            Some((seq, id)) if id == entry_id => (seq, true),
            _ => {
                return Err(ApiError::ConflictAs(
                    "handoff_open",
                    "another handoff of this work item was recorded meanwhile (here or on \
                     another replica); read its history"
                        .into(),
                ))
            }
        },
        Err(e) => return Err(e.into()),
    };
    reach(state, streams::WORKITEMS, seq).await?;
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, entry FROM work_item_history WHERE entry_id = ?")
            .bind(entry_id)
            .fetch_optional(&state.db.readers)
            .await?;
    let (stored, entry) = row.ok_or_else(|| {
        ApiError::Internal(anyhow::anyhow!(
            "entry {entry_id} was published at WORKITEMS:{seq} but not projected (see dead letters)"
        ))
    })?;
    Ok(accepted(stored as u64, entry, duplicate))
}

/// What every entry records about the group and its plan.
fn entry_data(actor: &str, g: &PageGroup, plan: &Plan) -> EntryData<String> {
    EntryData {
        recurrence_key: g.recurrence_key.clone(),
        actor: actor.to_owned(),
        mode: plan.mode.clone(),
        classification: g.runs.classification().to_owned(),
        occurrences: g.occurrences,
        latest_occurrence_at: format_unix_ms(g.latest_received_at),
        plan: WorkItemPlan::from(plan),
        passed: plan.ready,
        handoff_kind: None,
        dry_run_entry_id: None,
        ticket: None,
    }
}

impl Request {
    fn filters(&self) -> Filters<'_> {
        Filters::new(
            self.project_id.as_deref(),
            self.provider.as_deref(),
            self.scope.as_deref(),
        )
    }
}

/// The group and plan of a request, as they stand now.
async fn current(state: &AppState, r: &Request) -> ApiResult<(PageGroup, Plan)> {
    plan_now(state, &r.filters(), r.limit, &r.work_item_id, &r.mode).await
}

/// What a dry-run or handoff request starts as: a replay of an earlier entry with the same
/// `Idempotency-Key`, or a new entry with its id.
enum Begun {
    Replay(Response),
    New(Request, String),
}

/// Parses a dry-run (`kind` "dry_run") or handoff request and derives its entry id; a key
/// already used answers from the history.
async fn begin(
    state: &AppState,
    claims: &Claims,
    headers: &HeaderMap,
    body: &RawBody,
    kind: &str,
) -> ApiResult<Begun> {
    let actor = claims.sub.as_str();
    let mut r = parse_request(body, kind == "handoff")?;
    r.scope.clone_from(&claims.projects);
    let key = idempotency_key(headers)?;
    let id = entry_id(actor, &r, kind, key);
    if key.is_some() {
        if let Some(answer) = replay(state, &id, &r).await? {
            return Ok(Begun::Replay(answer));
        }
    }
    Ok(Begun::New(r, id))
}

/// `POST /api/v1/alerts/recurrence/work-item/dry-run` `{work_item_id, project_id?, provider?,
/// mode?, limit?}`: makes the preview's plan and records it on WORKITEMS as pre-flight
/// history; 202 with the entry once projected. Changes no incident, repair or ticket.
#[utoipa::path(post, path = "/alerts/recurrence/work-item/dry-run", operation_id = "post_work_item_dry_run", tag = "alerts", security(("bearer" = ["operator"])), request_body = super::entry::DryRunRequest, params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]([ -~]{0,126}[!-~])?$", description = "retries with the same key return the same entry (`Idempotent-Replayed: true`)")), responses((status = 202, description = "recorded and projected; `Orrery-Seq: WORKITEMS:<seq>`", body = crate::projections::work_items::WorkItemEntry), (status = 400, description = "malformed body", body = crate::api::error::ErrorBody), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 404, description = "`recurrence_work_item_not_found`", body = crate::api::error::ErrorBody), (status = 409, description = "`idempotency_key_reused`", body = crate::api::error::ErrorBody), (status = 413, description = "body too large", body = crate::api::error::ErrorBody), (status = 422, description = "a field is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or the entry was not projected in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn dry_run(
    Authorized(claims): AsOperator,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: RawBody,
) -> ApiResult<Response> {
    let (r, id) = match begin(&state, &claims, &headers, &body, "dry_run").await? {
        Begun::Replay(answer) => return Ok(answer),
        Begun::New(r, id) => (r, id),
    };
    let (g, plan) = current(&state, &r).await?;
    let data = entry_data(&claims.sub, &g, &plan);
    record(&state, &g, &r, ("dry_run", &id), data, None).await
}

/// The latest dry-run of a work item in a mode, as a handoff checks it.
struct DryRun {
    entry_id: String,
    passed: bool,
    occurrences: i64,
    latest_occurrence_at: i64,
}

/// Why a handoff may not go ahead now: 409 with a code naming the first reason.
fn handoff_guard(g: &PageGroup, plan: &Plan, dry: Option<&DryRun>, mode: &str) -> ApiResult<()> {
    let refuse = |code, message: String| Err(ApiError::ConflictAs(code, message));
    let Some(dry) = dry else {
        return refuse(
            "dry_run_required",
            format!("no dry-run of this work item in mode {mode}; POST …/work-item/dry-run first"),
        );
    };
    if !dry.passed {
        return refuse(
            "dry_run_failed",
            format!(
                "the latest dry-run in mode {mode} ({}) did not pass; see its checks in the history",
                dry.entry_id
            ),
        );
    }
    if g.occurrences > dry.occurrences || g.latest_received_at > dry.latest_occurrence_at {
        return refuse(
            "dry_run_stale",
            format!(
                "the group occurred again after the latest dry-run ({}): {} occurrence(s) then, {} now; dry-run again",
                dry.entry_id, dry.occurrences, g.occurrences
            ),
        );
    }
    if let Some(c) = plan
        .checks
        .iter()
        .find(|c| c.name == "no_open_handoff" && !c.ok)
    {
        return refuse("handoff_open", c.detail.clone());
    }
    if !plan.ready {
        let failed: Vec<String> = plan
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{} ({})", c.name, c.detail))
            .collect();
        return refuse(
            "preflight_failed",
            if failed.is_empty() {
                format!("nothing to hand off: {}", plan.reason)
            } else {
                format!("pre-flight checks fail now: {}", failed.join("; "))
            },
        );
    }
    Ok(())
}

/// The sequence of the last message on this work item's handoff subject (0: none), as the
/// bus has it, once this replica has projected that far. Read before the guards, so that
/// they see every handoff; the handoff is then published expecting it, so of two handoffs
/// decided at once — on one replica or two — only the first is appended.
async fn last_handoff_seq(state: &AppState, r: &Request, project_id: &str) -> ApiResult<u64> {
    let subject = format!("workitem.{project_id}.{}.handoff", r.work_item_id);
    let last = last_on_subject(state, &subject)
        .await?
        .map_or(0, |(seq, _)| seq);
    reach(state, streams::WORKITEMS, last).await?;
    Ok(last)
}

/// The sequence and `Nats-Msg-Id` of the last message on `subject` in WORKITEMS, if any.
async fn last_on_subject(state: &AppState, subject: &str) -> ApiResult<Option<(u64, String)>> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let look = async {
        let stream = state.js.get_stream_no_info(streams::WORKITEMS.name).await?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => {
                let id = m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned());
                Ok(Some((m.sequence, id.unwrap_or_default())))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(anyhow::Error::new(e)),
        }
    };
    tokio::time::timeout(state.bus_timeout, look)
        .await
        .map_err(|_| ApiError::Unavailable("the bus did not answer in time".into()))?
        .map_err(|e| ApiError::Unavailable(format!("the bus did not answer: {e:#}")))
}

/// The ticket a handoff drafts: from the group's stored (already redacted) latest event and
/// its latest runs. The projection redacts it again, since anyone may publish on WORKITEMS.
async fn draft_ticket(state: &AppState, g: &PageGroup, plan: &Plan) -> ApiResult<DraftTicket> {
    let item: Value = serde_json::from_str(&g.item).map_err(|e| ApiError::Internal(e.into()))?;
    let latest = &item["latest"];
    let about = latest["alertname"]
        .as_str()
        .unwrap_or(g.recurrence_key.as_str());
    let target = latest["target_resource"]
        .as_str()
        .or(latest["namespace"].as_str());
    let title = match target {
        Some(t) => format!(
            "Recurring alert {about} on {t} ({}, {} occurrences)",
            g.project_id, g.occurrences
        ),
        None => format!(
            "Recurring alert {about} ({}, {} occurrences)",
            g.project_id, g.occurrences
        ),
    };
    let summary: String = latest["content_redacted"]
        .as_str()
        .unwrap_or(about)
        .chars()
        .take(MAX_SUMMARY_CHARS)
        .collect();
    let runs = sqlx::query(
        "SELECT result_id, agent_id, run_state, repair, verified, incident_id, recorded_at \
         FROM alert_runs WHERE recurrence_key = ? AND (project_id = ? OR project_id IS NULL) \
         ORDER BY seq DESC LIMIT ?",
    )
    .bind(&g.recurrence_key)
    .bind(&g.project_id)
    .bind(TICKET_RUNS)
    .fetch_all(&state.db.readers)
    .await?;
    let latest_runs = runs
        .iter()
        .map(|r| TicketRun {
            result_id: r.get("result_id"),
            agent_id: r.get("agent_id"),
            run_state: r.get("run_state"),
            repair: r.get("repair"),
            verified: r.get("verified"),
            incident_id: r.get("incident_id"),
            recorded_at: format_unix_ms(r.get("recorded_at")),
        })
        .collect();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    Ok(DraftTicket {
        title,
        summary,
        proposed_action: plan.action.to_owned(),
        reason: plan.reason.to_owned(),
        occurrences: TicketOccurrences {
            total: g.occurrences,
            duplicates: g.duplicates,
            first_received_at: text(&item["first_received_at"]),
            latest_received_at: text(&item["latest_received_at"]),
        },
        source_url: latest["source_url"].as_str().map(str::to_owned),
        source_refs: Some(latest["source_refs"].clone()).filter(|v| !v.is_null()),
        incident_ids: item["incident_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        latest_runs,
    })
}

/// `POST /api/v1/alerts/recurrence/work-item/handoff` `{work_item_id, project_id?, provider?,
/// mode?, limit?, handoff_kind?}`: records a handoff (a drafted ticket, or a manual takeover)
/// once a dry-run in the same mode passed after the group's latest occurrence; 409 naming
/// why not. Changes no incident, repair or ticket outside Orrery.
#[utoipa::path(post, path = "/alerts/recurrence/work-item/handoff", operation_id = "post_work_item_handoff", tag = "alerts", security(("bearer" = ["operator"])), request_body = super::entry::HandoffRequest, params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]([ -~]{0,126}[!-~])?$", description = "retries with the same key return the same entry (`Idempotent-Replayed: true`)")), responses((status = 202, description = "recorded and projected; `Orrery-Seq: WORKITEMS:<seq>`", body = crate::projections::work_items::WorkItemEntry), (status = 400, description = "malformed body", body = crate::api::error::ErrorBody), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 404, description = "`recurrence_work_item_not_found`", body = crate::api::error::ErrorBody), (status = 409, description = "`dry_run_required`, `dry_run_failed`, `dry_run_stale`, `handoff_open`, `preflight_failed` or `idempotency_key_reused`", body = crate::api::error::ErrorBody), (status = 413, description = "body too large", body = crate::api::error::ErrorBody), (status = 422, description = "a field is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or the entry was not projected in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn handoff(
    Authorized(claims): AsOperator,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: RawBody,
) -> ApiResult<Response> {
    let (r, id) = match begin(&state, &claims, &headers, &body, "handoff").await? {
        Begun::Replay(answer) => return Ok(answer),
        Begun::New(r, id) => (r, id),
    };
    // The group's project names the subject and is known only from the group: it is found
    // before the bus is asked (a kept page), and planned after, on a database that has
    // every handoff the bus has.
    let project = find(&state, &r.filters(), r.limit, &r.work_item_id)
        .await?
        .project_id;
    let last = last_handoff_seq(&state, &r, &project).await?;
    let (g, plan) = current(&state, &r).await?;
    let dry = sqlx::query(
        "SELECT entry_id, passed, occurrences, latest_occurrence_at FROM work_item_history \
         WHERE work_item_id = ? AND kind = 'dry_run' AND mode = ? ORDER BY seq DESC LIMIT 1",
    )
    .bind(&r.work_item_id)
    .bind(&r.mode)
    .fetch_optional(&state.db.readers)
    .await?
    .map(|row| DryRun {
        entry_id: row.get("entry_id"),
        passed: row.get("passed"),
        occurrences: row.get("occurrences"),
        latest_occurrence_at: row.get("latest_occurrence_at"),
    });
    handoff_guard(&g, &plan, dry.as_ref(), &r.mode)?;
    let data = EntryData {
        handoff_kind: r.handoff_kind.clone(),
        dry_run_entry_id: dry.map(|d| d.entry_id),
        ticket: Some(draft_ticket(&state, &g, &plan).await?),
        ..entry_data(&claims.sub, &g, &plan)
    };
    record(&state, &g, &r, ("handoff", &id), data, Some(last)).await
}

/// `GET /api/v1/alerts/recurrence/work-item/history?work_item_id=&kind=&limit=`: a work
/// item's dry-runs and handoffs, newest first.
#[utoipa::path(get, path = "/alerts/recurrence/work-item/history", operation_id = "get_work_item_history", tag = "alerts", security(("bearer" = ["viewer"])), params(("work_item_id" = String, Query, description = "the work item (`wi_` and 24 hex digits)", pattern = "^wi_[0-9a-f]{24}$"), ("kind" = Option<String>, Query, description = "dry_run or handoff (default both)", pattern = "^(dry_run|handoff)$"), ("limit" = Option<i64>, Query, description = "entries, 1–200 (default 50)", minimum = 1, maximum = 200), ("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "OK", body = WorkItemHistory), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn history(
    Authorized(claims): AsViewer,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<Json<WorkItemHistory>> {
    let id = work_item_param(&params)?;
    let kind = params.get("kind")?;
    if kind.is_some_and(|k| !crate::projections::work_items::KINDS.contains(&k)) {
        return Err(ApiError::invalid("kind", "dry_run or handoff"));
    }
    let limit = params.int("limit", 1, 200, 50)?;
    let entries: Vec<String> = sqlx::query_scalar(
        "SELECT entry FROM work_item_history WHERE work_item_id = ?1 \
         AND (?2 IS NULL OR kind = ?2) \
         AND (?4 IS NULL OR project_id IN (SELECT value FROM json_each(?4))) \
         ORDER BY seq DESC LIMIT ?3",
    )
    .bind(id)
    .bind(kind)
    .bind(limit)
    .bind(claims.projects_json())
    .fetch_all(&state.db.readers)
    .await?;
    let entries = entries
        .into_iter()
        .map(RawValue::from_string)
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("a stored entry")))?;
    Ok(Json(WorkItemHistory {
        work_item_id: id.to_owned(),
        entries,
    }))
}
