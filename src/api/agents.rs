//! `/api/v1/agents`: the agents that ever sent a heartbeat, with their stale marks.

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use utoipa::ToSchema;

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{AsViewer, Params};
use crate::api::AppState;
use crate::bus::subjects;
use crate::window::{format_unix_ms, now_ms};

/// An agent.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    /// Agent id.
    pub agent_id: String,
    /// Host name; null when its heartbeats name none.
    pub hostname: Option<String>,
    /// Agent version; null when its heartbeats name none.
    pub version: Option<String>,
    /// Labels; null when its heartbeats carry none.
    #[schema(value_type = Option<Object>)]
    pub labels: Option<Value>,
    /// Latest heartbeat.
    pub last_heartbeat: String,
    /// Silent past the threshold.
    pub stale: bool,
}

/// `/api/v1/agents`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Agents {
    /// By id.
    pub items: Vec<Agent>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

impl Agent {
    /// The agent of `row`, stale when its latest heartbeat is before `stale_cutoff`.
    fn from_row(row: &SqliteRow, stale_cutoff: i64) -> Self {
        let last: i64 = row.get("last_heartbeat");
        Self {
            agent_id: row.get("agent_id"),
            hostname: row.get("hostname"),
            version: row.get("version"),
            labels: row
                .get::<Option<String>, _>("labels")
                .and_then(|l| serde_json::from_str::<Value>(&l).ok()),
            last_heartbeat: format_unix_ms(last),
            stale: last < stale_cutoff,
        }
    }
}

/// `GET /api/v1/agents?stale=&limit=&cursor=`: agents by id; `next_cursor` pages on.
#[utoipa::path(get, path = "/agents", operation_id = "get_agents", tag = "fleet", security(("bearer" = ["viewer"])), params(("stale" = Option<bool>, Query, description = "only stale (true) or active (false) agents"), ("limit" = Option<i64>, Query, description = "rows, 1–1000 (default 100)", minimum = 1, maximum = 1000), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page", pattern = "^[A-Za-z0-9_-]{1,128}$"), ("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "OK", body = Agents), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn list(
    _: AsViewer,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<Json<Agents>> {
    let stale = params.bool("stale")?;
    let limit = params.int("limit", 1, 1_000, 100)?;
    let cursor = params.get("cursor")?;
    if cursor.is_some_and(|c| !subjects::is_token(c)) {
        return Err(ApiError::invalid(
            "cursor",
            "the next_cursor of a previous page",
        ));
    }
    let cutoff = now_ms() - state.fleet.stale_after.as_millis() as i64;
    let rows = sqlx::query(
        "SELECT agent_id, hostname, version, labels, last_heartbeat FROM agents \
         WHERE agent_id > ?1 AND (?2 IS NULL OR (last_heartbeat < ?3) = ?2) \
         ORDER BY agent_id LIMIT ?4",
    )
    .bind(cursor.unwrap_or(""))
    .bind(stale)
    .bind(cutoff)
    .bind(limit + 1)
    .fetch_all(&state.db.readers)
    .await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<Agent> = rows
        .iter()
        .take(limit as usize)
        .map(|r| Agent::from_row(r, cutoff))
        .collect();
    let next_cursor = more
        .then(|| items.last().map(|a| a.agent_id.clone()))
        .flatten();
    Ok(Json(Agents { items, next_cursor }))
}

/// `GET /api/v1/agents/<id>`: one agent; 404 if it never reported.
#[utoipa::path(get, path = "/agents/{id}", operation_id = "get_agents_id", tag = "fleet", security(("bearer" = ["viewer"])), params(("id" = String, Path, description = "agent id", pattern = "^[A-Za-z0-9_-]{1,128}$"), ("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "OK", body = Agent), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 404, description = "not found", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn get(
    _: AsViewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Agent>> {
    if !subjects::is_token(&id) {
        return Err(ApiError::NotFound("agent".into()));
    }
    let cutoff = now_ms() - state.fleet.stale_after.as_millis() as i64;
    let row = sqlx::query(
        "SELECT agent_id, hostname, version, labels, last_heartbeat FROM agents WHERE agent_id = ?",
    )
    .bind(&id)
    .fetch_optional(&state.db.readers)
    .await?
    .ok_or_else(|| ApiError::NotFound("agent".into()))?;
    Ok(Json(Agent::from_row(&row, cutoff)))
}
