//! `/api/v1/alerts/recurrence/work-item/preview`: one work item's plan, read-only, and the
//! lookups the dry-run and handoff share (find a group, plan it now, its open handoff). The
//! classification and the plan themselves live in [`super::plan`].

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::plan::{is_work_item_id, plan, work_item_id, Plan, GUARANTEES, MODES};
use super::queries::{Filters, PageGroup};
use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{AsViewer, Authorized, Params};
use crate::api::AppState;
use crate::projections::work_items::WorkItemPlan;
use crate::window::now_ms;

/// A work item as a preview names it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkItem {
    /// Stable id.
    pub id: String,
    /// Its group's project.
    pub project_id: String,
    /// Its group's key.
    pub recurrence_key: String,
    /// verified, failed_repair, manual_gate, automation_gap or open.
    #[schema(value_type = String)]
    pub classification: &'static str,
    /// Everything but verified.
    pub open: bool,
}

/// `/api/v1/alerts/recurrence/work-item/preview`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkItemPreview {
    /// The work item.
    pub work_item: WorkItem,
    /// Its group, as /alerts/recurrence lists it (rendered by SQLite with the page; the
    /// queries' property tests hold it to [`super::answers::RecurrenceGroup`]).
    #[schema(value_type = super::answers::RecurrenceGroup)]
    pub group: Box<RawValue>,
    /// The proposed next step and its checks.
    pub plan: WorkItemPlan,
    /// What the preview promises (it only reads).
    #[schema(value_type = Vec<String>)]
    pub guarantees: [&'static str; 3],
}

/// The `work_item_id` query parameter: required, `wi_` and 24 hex digits.
pub(super) fn work_item_param(params: &Params) -> ApiResult<&str> {
    params
        .get("work_item_id")?
        .filter(|id| is_work_item_id(id))
        .ok_or_else(|| ApiError::invalid("work_item_id", "wi_ followed by 24 hex digits"))
}

/// The recurring group of work item `id` among the latest `limit` groups matching
/// `filters`; 404 `recurrence_work_item_not_found` when there is none.
pub(super) async fn find(
    state: &AppState,
    filters: &Filters<'_>,
    limit: i64,
    id: &str,
) -> ApiResult<PageGroup> {
    let page = state.recurrence_pages.page(state, filters, limit).await?;
    page.iter()
        .find(|g| g.occurrences > 1 && work_item_id(&g.project_id, &g.recurrence_key) == id)
        .cloned()
        .ok_or_else(|| {
            ApiError::NotFoundAs(
                "recurrence_work_item_not_found",
                format!("no recurring group with work item {id} among the latest {limit}"),
            )
        })
}

/// Work item `id`'s group (see [`find`]) and its plan in `mode` as they stand now.
pub(super) async fn plan_now(
    state: &AppState,
    filters: &Filters<'_>,
    limit: i64,
    id: &str,
    mode: &str,
) -> ApiResult<(PageGroup, Plan)> {
    let g = find(state, filters, limit, id).await?;
    let open = open_handoff(&state.db.readers, id, g.runs.classification()).await?;
    let plan = plan(&g.runs, mode, g.facts(open.as_deref()), now_ms());
    Ok((g, plan))
}

/// The entry id of work item `id`'s open handoff: its latest handoff, while the item is not
/// `verified` (a verified repair closes it; a recurrence after that needs a new one).
pub(super) async fn open_handoff(
    readers: &sqlx::SqlitePool,
    id: &str,
    class: &str,
) -> ApiResult<Option<String>> {
    if class == "verified" {
        return Ok(None);
    }
    Ok(sqlx::query_scalar(
        "SELECT entry_id FROM work_item_history WHERE work_item_id = ? AND kind = 'handoff' \
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(readers)
    .await?)
}

/// `GET /api/v1/alerts/recurrence/work-item/preview?work_item_id=&project_id=&provider=&mode=auto&limit=300`:
/// a recurring group's work item, its classification, the proposed next step and its
/// pre-flight checks. Reads only.
#[utoipa::path(get, path = "/alerts/recurrence/work-item/preview", operation_id = "get_work_item_preview", tag = "alerts", security(("bearer" = ["viewer"])), params(("work_item_id" = String, Query, description = "the work item (`wi_` and 24 hex digits), as /alerts/recurrence lists it", pattern = "^wi_[0-9a-f]{24}$"), ("project_id" = Option<String>, Query, description = "one project (a subject token)", pattern = "^[A-Za-z0-9_-]{1,128}$"), ("provider" = Option<String>, Query, description = "one provider", pattern = "^[A-Za-z0-9_-]{1,128}$"), ("mode" = Option<String>, Query, description = "auto (default: by classification), automation or manual", pattern = "^(auto|automation|manual)$"), ("limit" = Option<i64>, Query, description = "the work item is looked for among the latest `limit` groups, 1–300 (default 300)", minimum = 1, maximum = 300), ("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "OK", body = WorkItemPreview), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 404, description = "`recurrence_work_item_not_found`", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn preview(
    Authorized(claims): AsViewer,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<Json<WorkItemPreview>> {
    let id = work_item_param(&params)?;
    let mode = params.get("mode")?.unwrap_or("auto");
    if !MODES.contains(&mode) {
        return Err(ApiError::invalid("mode", "auto, automation or manual"));
    }
    let filters = Filters::parse(&params, true, &claims)?;
    let limit = params.int("limit", 1, 300, 300)?;
    let (g, plan) = plan_now(&state, &filters, limit, id, mode).await?;
    let class = g.runs.classification();
    let group = RawValue::from_string(g.item).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Json(WorkItemPreview {
        work_item: WorkItem {
            id: id.to_owned(),
            project_id: g.project_id,
            recurrence_key: g.recurrence_key,
            classification: class,
            open: class != "verified",
        },
        group,
        plan: WorkItemPlan::from(&plan),
        guarantees: GUARANTEES,
    }))
}
