//! `/api/v1/system/stats/…`: the agents' system samples over a window, and the busiest
//! containers now.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{AsViewer, Authorized, Params};
use crate::api::{AppState, MAX_HISTORY_POINTS};
use crate::token::Role;
use crate::window::{format_unix_ms, now_ms};

/// A system stats sample.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemSample {
    /// Agent id.
    pub agent_id: String,
    /// Sample time.
    pub at: String,
    /// CPU, percent; null when the agent could not read it.
    pub cpu_percent: Option<f64>,
    /// Bytes; null when the agent could not read it.
    pub memory_usage: Option<i64>,
    /// Bytes; null when there is no limit or the agent could not read it.
    pub memory_limit: Option<i64>,
}

/// A container's latest sample.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopContainer {
    /// Container id (empty unless admin).
    pub container_id: String,
    /// Workload; null for a container outside any workload.
    pub workload_id: Option<String>,
    /// Role in the workload; null as `workload_id`.
    pub role: Option<String>,
    /// `workload/role` (`-` for what is missing).
    pub owner_name: String,
    /// Agent id.
    pub agent_id: String,
    /// Sample time.
    pub at: String,
    /// CPU, percent; null when the agent could not read it.
    pub cpu_percent: Option<f64>,
    /// Bytes; null when the agent could not read it.
    pub memory_usage: Option<i64>,
    /// Bytes; null when there is no limit or the agent could not read it.
    pub memory_limit: Option<i64>,
}

/// `/api/v1/system/stats/top`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Top {
    /// `cpu` or `memory`.
    pub by: String,
    /// Busiest first.
    pub items: Vec<TopContainer>,
}

/// `GET /api/v1/system/stats/history?window=1h&agent=`: system samples, oldest first.
#[utoipa::path(get, path = "/system/stats/history", operation_id = "get_system_stats_history", tag = "fleet", security(("bearer" = ["viewer"])), params(("window" = Option<String>, Query, description = "a duration such as 30m, 2h or 1h30m, > 0 and ≤ 24h (default 2h)"), ("agent" = Option<String>, Query, description = "one agent", pattern = "^[A-Za-z0-9_-]{1,128}$"), ("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "samples, oldest first", body = Vec<SystemSample>), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn history(
    _: AsViewer,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<Json<Vec<SystemSample>>> {
    let from = params.window_start()?;
    let agent = params.token("agent")?;
    let sql = if agent.is_some() {
        "SELECT agent_id, at, cpu_percent, memory_usage, memory_limit FROM system_stats_samples \
         WHERE agent_id = ?2 AND at >= ?1 ORDER BY at, seq LIMIT ?3"
    } else {
        "SELECT agent_id, at, cpu_percent, memory_usage, memory_limit FROM system_stats_samples \
         WHERE at >= ?1 AND ?2 IS NULL ORDER BY at, seq LIMIT ?3"
    };
    let rows = sqlx::query(sql)
        .bind(from)
        .bind(agent)
        .bind(MAX_HISTORY_POINTS)
        .fetch_all(&state.db.readers)
        .await?;
    let items = rows
        .iter()
        .map(|r| SystemSample {
            agent_id: r.get("agent_id"),
            at: format_unix_ms(r.get("at")),
            cpu_percent: r.get("cpu_percent"),
            memory_usage: r.get("memory_usage"),
            memory_limit: r.get("memory_limit"),
        })
        .collect();
    Ok(Json(items))
}

/// `GET /api/v1/system/stats/top?by=cpu|memory&limit=5`: the busiest containers by their
/// latest recent sample. Container ids are shown to admins only.
#[utoipa::path(get, path = "/system/stats/top", operation_id = "get_system_stats_top", tag = "fleet", security(("bearer" = ["viewer"])), params(("by" = Option<String>, Query, description = "cpu (default) or memory", pattern = "^(cpu|memory)$"), ("limit" = Option<i64>, Query, description = "rows, 1–100 (default 5)", minimum = 1, maximum = 100), ("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "OK", body = Top), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn top(
    Authorized(claims): AsViewer,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<Json<Top>> {
    let by = params.get("by")?.unwrap_or("cpu");
    let order = match by {
        "cpu" => "c.cpu_percent",
        "memory" => "c.memory_usage",
        _ => return Err(ApiError::invalid("by", "cpu or memory")),
    };
    let limit = params.int("limit", 1, 100, 5)?;
    let lookback = (state.fleet.heartbeat_interval * 2).max(Duration::from_secs(120));
    let from = now_ms() - lookback.as_millis() as i64;
    let rows = sqlx::query(&format!(
        "SELECT c.container_id, c.workload_id, c.role, c.agent_id, c.at, c.cpu_percent, \
         c.memory_usage, c.memory_limit FROM container_stats_samples c \
         JOIN (SELECT container_id, MAX(seq) AS seq FROM container_stats_samples \
               WHERE at >= ?1 GROUP BY container_id) l \
         ON c.container_id = l.container_id AND c.seq = l.seq \
         ORDER BY {order} DESC, c.container_id LIMIT ?2"
    ))
    .bind(from)
    .bind(limit)
    .fetch_all(&state.db.readers)
    .await?;
    let admin = claims.role >= Role::Admin;
    let items = rows
        .iter()
        .map(|r| {
            let workload: Option<String> = r.get("workload_id");
            let role: Option<String> = r.get("role");
            TopContainer {
                container_id: if admin {
                    r.get("container_id")
                } else {
                    String::new()
                },
                owner_name: format!(
                    "{}/{}",
                    workload.as_deref().unwrap_or("-"),
                    role.as_deref().unwrap_or("-")
                ),
                workload_id: workload,
                role,
                agent_id: r.get("agent_id"),
                at: format_unix_ms(r.get("at")),
                cpu_percent: r.get("cpu_percent"),
                memory_usage: r.get("memory_usage"),
                memory_limit: r.get("memory_limit"),
            }
        })
        .collect();
    Ok(Json(Top {
        by: by.to_owned(),
        items,
    }))
}
