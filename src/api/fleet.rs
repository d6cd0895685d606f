//! Fleet: health for probes, agents, scan durations, resource metrics, the deploy ledger and
//! rollback.

use std::collections::HashSet;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::api::auth::{Admin, Authorized, Role, Viewer};
use crate::api::error::{ApiError, ApiResult};
use crate::api::health::lags;
use crate::api::params::Params;
use crate::api::{publish_all, AppState, Outgoing, MAX_BODY_BYTES};
use crate::bus::{envelope, streams, subjects};
use crate::projections::results::DEPLOY_ERROR_MARKER;
use crate::window::{format_unix_ms, now_ms, parse_duration, parse_rfc3339_ms};

/// Window of `recent_results` in fleet health.
const RECENT_RESULTS_HOURS: i64 = 24;
/// Longest history window.
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3_600);
/// Most points one history answer holds.
const MAX_POINTS: i64 = 10_000;
const WINDOW_FORM: &str =
    "a duration such as 30m, 2h or 1h30m (units s, m, h, d), greater than 0 and at most 24h";

/// Counts results recorded since `from` (optionally only failures) from the
/// (kind, success, recorded_at) index: one range count per known kind.
async fn count_results(state: &AppState, from: i64, failed_only: bool) -> sqlx::Result<i64> {
    let sql = if failed_only {
        "SELECT COALESCE(SUM((SELECT COUNT(*) FROM execution_results r WHERE r.kind = k.kind \
         AND r.success = 0 AND r.recorded_at >= ?1)), 0) FROM result_kinds k"
    } else {
        "SELECT COALESCE(SUM((SELECT COUNT(*) FROM execution_results r WHERE r.kind = k.kind \
         AND r.success IN (0, 1) AND r.recorded_at >= ?1)), 0) FROM result_kinds k"
    };
    sqlx::query_scalar(sql)
        .bind(from)
        .fetch_one(&state.db.readers)
        .await
}

/// Expected JetStream resources, as stream names with the label to report when missing.
fn expected_resources(state: &AppState) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = streams::ALL
        .iter()
        .map(|s| (s.name.to_owned(), s.name.to_owned()))
        .collect();
    let f = &state.fleet;
    out.extend(f.expect_streams.iter().map(|s| (s.clone(), s.clone())));
    out.extend(
        f.expect_kv
            .iter()
            .map(|b| (format!("KV_{b}"), format!("kv:{b}"))),
    );
    out.extend(
        f.expect_object_stores
            .iter()
            .map(|o| (format!("OBJ_{o}"), format!("object_store:{o}"))),
    );
    out
}

/// Every stream name on the server (one paged listing), or `None` when the bus is away.
async fn stream_names(state: &AppState) -> Option<HashSet<String>> {
    tokio::time::timeout(state.bus_timeout, async {
        let mut names = HashSet::new();
        let mut list = state.js.stream_names();
        while let Some(name) = list.next().await {
            names.insert(name.ok()?);
        }
        Some(names)
    })
    .await
    .ok()
    .flatten()
}

/// `GET /api/v1/health/fleet`: one answer to "is the fleet healthy?" — 200 `ok` or
/// `unknown` (no agent yet), 503 `degraded` naming nothing but counts and missing resources.
pub async fn fleet_health(_: Viewer, State(state): State<AppState>) -> ApiResult<Response> {
    let now = now_ms();
    let f = &state.fleet;
    let stale_cutoff = now - f.stale_after.as_millis() as i64;
    let (known, stale): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM agents), \
         (SELECT COUNT(*) FROM agents WHERE last_heartbeat < ?1)",
    )
    .bind(stale_cutoff)
    .fetch_one(&state.db.readers)
    .await?;
    let since = now - RECENT_RESULTS_HOURS * 3_600_000;
    let (total, failed) = (
        count_results(&state, since, false).await?,
        count_results(&state, since, true).await?,
    );
    let (names, projections) = tokio::join!(stream_names(&state), lags(&state));
    let expected = expected_resources(&state);
    let missing: Vec<String> = expected
        .iter()
        .filter(|(name, _)| names.as_ref().is_none_or(|n| !n.contains(name)))
        .map(|(_, label)| label.clone())
        .collect();

    let mut reasons = Vec::new();
    if !missing.is_empty() {
        reasons.push(format!(
            "missing JetStream resources: {}",
            missing.join(", ")
        ));
    }
    for p in &projections {
        match p.lag {
            None => reasons.push(format!("stream {} could not be read", p.stream)),
            Some(lag) if lag > f.max_lag => reasons.push(format!(
                "projection {} lags by {lag} (threshold {})",
                p.stream, f.max_lag
            )),
            Some(_) => {}
        }
    }
    let share = if known > 0 {
        stale as f64 / known as f64
    } else {
        0.0
    };
    if stale > 0 && share >= f.stale_share {
        reasons.push(format!(
            "{stale} of {known} agents are stale (threshold share {})",
            f.stale_share
        ));
    }
    let status = if !reasons.is_empty() {
        "degraded"
    } else if known == 0 {
        "unknown"
    } else {
        "ok"
    };
    let body = json!({
        "status": status,
        "reasons": reasons,
        "agents": {
            "known": known,
            "active": known - stale,
            "stale": stale,
            "stale_after_secs": f.stale_after.as_secs(),
        },
        "jetstream": {
            "all_ok": missing.is_empty(),
            "healthy": expected.len() - missing.len(),
            "total": expected.len(),
            "missing": missing,
        },
        "projections": projections,
        "recent_results": {"window_hours": RECENT_RESULTS_HOURS, "total": total, "failed": failed},
        "observed_at": format_unix_ms(now),
    });
    let code = if status == "degraded" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok((code, Json(body)).into_response())
}

/// Nearest-rank percentile of sorted values.
pub fn nearest_rank(sorted: &[i64], p: f64) -> i64 {
    let n = sorted.len();
    let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

/// `GET /api/v1/results/durations?since=<RFC3339>`: per `job_id`, duration statistics of the
/// results finished since then (default 24 h ago), slowest p95 first.
pub async fn durations(
    _: Viewer,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let params = Params::parse(query.as_deref());
    let since = match params.get("since")? {
        None => now_ms() - 24 * 3_600_000,
        Some(s) => parse_rfc3339_ms(s).ok_or_else(|| {
            ApiError::invalid("since", "an RFC 3339 time such as 2026-11-22T10:00:00Z")
        })?,
    };
    // Rows come ordered by job and duration, so each job's values arrive sorted.
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT r.job_id, MAX(0, r.finished_at - r.started_at) AS ms, r.result_id \
         FROM execution_results r \
         WHERE r.kind IN (SELECT kind FROM result_kinds) AND r.success IN (0, 1) \
         AND r.recorded_at >= ?1 AND r.finished_at >= ?1 \
         AND r.job_id IS NOT NULL AND r.started_at IS NOT NULL \
         ORDER BY r.job_id, ms, r.result_id",
    )
    .bind(since)
    .fetch_all(&state.db.readers)
    .await?;
    let mut jobs: Vec<(Value, i64)> = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let job = &rows[i].0;
        let end = i + rows[i..].iter().take_while(|r| &r.0 == job).count();
        let values: Vec<i64> = rows[i..end].iter().map(|r| r.1).collect();
        let sum: i64 = values.iter().sum();
        let p95 = nearest_rank(&values, 0.95);
        jobs.push((
            json!({
                "job_id": job,
                "count": values.len(),
                "min_ms": values[0],
                "p50_ms": nearest_rank(&values, 0.50),
                "p95_ms": p95,
                "p99_ms": nearest_rank(&values, 0.99),
                "max_ms": values[values.len() - 1],
                "mean_ms": sum as f64 / values.len() as f64,
                "max_result_id": rows[end - 1].2,
            }),
            p95,
        ));
        i = end;
    }
    // Stable: equal p95s keep job order.
    jobs.sort_by_key(|j| std::cmp::Reverse(j.1));
    let items: Vec<Value> = jobs.into_iter().map(|(v, _)| v).collect();
    Ok(Json(
        json!({"since": format_unix_ms(since), "items": items}),
    ))
}

fn agent_json(row: &SqliteRow, stale_cutoff: i64) -> Value {
    let last: i64 = row.get("last_heartbeat");
    json!({
        "agent_id": row.get::<String, _>("agent_id"),
        "hostname": row.get::<Option<String>, _>("hostname"),
        "version": row.get::<Option<String>, _>("version"),
        "labels": row
            .get::<Option<String>, _>("labels")
            .and_then(|l| serde_json::from_str::<Value>(&l).ok()),
        "last_heartbeat": format_unix_ms(last),
        "stale": last < stale_cutoff,
    })
}

/// `GET /api/v1/agents?stale=&limit=&cursor=`: agents by id; `next_cursor` pages on.
pub async fn agents(
    _: Viewer,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let params = Params::parse(query.as_deref());
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
    let items: Vec<Value> = rows
        .iter()
        .take(limit as usize)
        .map(|r| agent_json(r, cutoff))
        .collect();
    let next = more.then(|| items.last().map(|a| a["agent_id"].clone()));
    Ok(Json(json!({"items": items, "next_cursor": next.flatten()})))
}

/// `GET /api/v1/agents/<id>`: one agent; 404 if it never reported.
pub async fn agent(
    _: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
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
    Ok(Json(agent_json(&row, cutoff)))
}

/// The `window` parameter: a duration, default 2 h, at most 24 h.
fn window(params: &Params) -> ApiResult<i64> {
    let w = match params.get("window")? {
        None => Duration::from_secs(2 * 3_600),
        Some(s) => parse_duration(s)
            .ok()
            .filter(|d| *d <= MAX_WINDOW)
            .ok_or_else(|| ApiError::invalid("window", WINDOW_FORM))?,
    };
    Ok(now_ms() - w.as_millis() as i64)
}

/// `GET /api/v1/system/stats/history?window=1h&agent=`: system samples, oldest first.
pub async fn system_history(
    _: Viewer,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let params = Params::parse(query.as_deref());
    let from = window(&params)?;
    let agent = params.get("agent")?;
    if agent.is_some_and(|a| !subjects::is_token(a)) {
        return Err(ApiError::invalid("agent", subjects::TOKEN_FORM));
    }
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
        .bind(MAX_POINTS)
        .fetch_all(&state.db.readers)
        .await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "agent_id": r.get::<String, _>("agent_id"),
                "at": format_unix_ms(r.get("at")),
                "cpu_percent": r.get::<Option<f64>, _>("cpu_percent"),
                "memory_usage": r.get::<Option<i64>, _>("memory_usage"),
                "memory_limit": r.get::<Option<i64>, _>("memory_limit"),
            })
        })
        .collect();
    Ok(Json(Value::Array(items)))
}

async fn workload_known(state: &AppState, wid: &str) -> ApiResult<()> {
    let known: Option<i64> = if subjects::is_token(wid) {
        sqlx::query_scalar("SELECT 1 FROM workloads WHERE workload_id = ?")
            .bind(wid)
            .fetch_optional(&state.db.readers)
            .await?
    } else {
        None
    };
    known
        .map(|_| ())
        .ok_or_else(|| ApiError::NotFound("workload".into()))
}

/// `GET /api/v1/workloads/<wid>/stats/history?window=1h`: one point per timestamp across the
/// workload's containers (CPU and memory summed, limit the largest).
pub async fn workload_history(
    _: Viewer,
    State(state): State<AppState>,
    Path(wid): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let params = Params::parse(query.as_deref());
    let from = window(&params)?;
    workload_known(&state, &wid).await?;
    let rows = sqlx::query(
        "SELECT at, SUM(cpu_percent) AS cpu, SUM(memory_usage) AS mem, \
         MAX(memory_limit) AS lim, COUNT(*) AS containers \
         FROM container_stats_samples WHERE workload_id = ?1 AND at >= ?2 \
         GROUP BY at ORDER BY at LIMIT ?3",
    )
    .bind(&wid)
    .bind(from)
    .bind(MAX_POINTS)
    .fetch_all(&state.db.readers)
    .await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "at": format_unix_ms(r.get("at")),
                "cpu_percent": r.get::<Option<f64>, _>("cpu"),
                "memory_usage": r.get::<Option<i64>, _>("mem"),
                "memory_limit": r.get::<Option<i64>, _>("lim"),
                "containers": r.get::<i64, _>("containers"),
            })
        })
        .collect();
    Ok(Json(Value::Array(items)))
}

/// `GET /api/v1/system/stats/top?by=cpu|memory&limit=5`: the busiest containers by their
/// latest recent sample. Container ids are shown to admins only.
pub async fn top(
    Authorized(claims): Viewer,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let params = Params::parse(query.as_deref());
    let order = match params.get("by")?.unwrap_or("cpu") {
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
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            let workload: Option<String> = r.get("workload_id");
            let role: Option<String> = r.get("role");
            json!({
                "container_id": if admin { r.get::<String, _>("container_id") } else { String::new() },
                "workload_id": workload,
                "role": role,
                "owner_name": format!("{}/{}", workload.as_deref().unwrap_or("-"), role.as_deref().unwrap_or("-")),
                "agent_id": r.get::<String, _>("agent_id"),
                "at": format_unix_ms(r.get("at")),
                "cpu_percent": r.get::<Option<f64>, _>("cpu_percent"),
                "memory_usage": r.get::<Option<i64>, _>("memory_usage"),
                "memory_limit": r.get::<Option<i64>, _>("memory_limit"),
            })
        })
        .collect();
    Ok(Json(
        json!({"by": params.get("by")?.unwrap_or("cpu"), "items": items}),
    ))
}

fn deploy_json(r: &SqliteRow) -> Value {
    let success: bool = r.get("success");
    json!({
        "deploy_id": r.get::<String, _>("deploy_id"),
        "workload_id": r.get::<String, _>("workload_id"),
        "agent_id": r.get::<String, _>("agent_id"),
        "reference": r.get::<Option<String>, _>("reference"),
        "reason": r.get::<String, _>("reason"),
        "success": success,
        "error": (!success).then_some(DEPLOY_ERROR_MARKER),
        "recorded_at": format_unix_ms(r.get("recorded_at")),
    })
}

/// `GET /api/v1/workloads/<wid>/deploys?limit=&offset=`: the ledger, newest first.
pub async fn deploys(
    _: Viewer,
    State(state): State<AppState>,
    Path(wid): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let params = Params::parse(query.as_deref());
    let limit = params.int("limit", 1, 200, 50)?;
    let offset = params.int("offset", 0, 1_000_000, 0)?;
    workload_known(&state, &wid).await?;
    let rows = sqlx::query(
        "SELECT deploy_id, workload_id, agent_id, reference, reason, success, recorded_at \
         FROM deploy_history WHERE workload_id = ?1 \
         ORDER BY recorded_at DESC, seq DESC LIMIT ?2 OFFSET ?3",
    )
    .bind(&wid)
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.db.readers)
    .await?;
    let items: Vec<Value> = rows.iter().map(deploy_json).collect();
    Ok(Json(
        json!({"items": items, "limit": limit, "offset": offset}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    deploy_id: String,
}

/// Whether an image reference names its content by digest (`name@sha256:…`).
pub fn is_pinned(reference: &str) -> bool {
    reference
        .split_once('@')
        .and_then(|(_, digest)| digest.split_once(':'))
        .is_some_and(|(alg, hex)| !alg.is_empty() && !hex.is_empty())
}

/// `POST /api/v1/workloads/<wid>/rollback` `{"deploy_id"}`: asks the deployer to go back to
/// a successful, pinned deploy of this workload by publishing `command.deploy.<wid>`.
pub async fn rollback(
    Authorized(claims): Admin,
    State(state): State<AppState>,
    Path(wid): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = body.map_err(|_| ApiError::TooLarge(MAX_BODY_BYTES))?;
    let req: RollbackRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!("body must be {{\"deploy_id\": string}}: {e}"))
    })?;
    workload_known(&state, &wid).await?;
    let row = sqlx::query(
        "SELECT deploy_id, workload_id, agent_id, reference, reason, success, recorded_at \
         FROM deploy_history WHERE workload_id = ?1 AND deploy_id = ?2",
    )
    .bind(&wid)
    .bind(&req.deploy_id)
    .fetch_optional(&state.db.readers)
    .await?
    .ok_or_else(|| ApiError::NotFound("deploy of this workload".into()))?;
    if !row.get::<bool, _>("success") {
        return Err(ApiError::Conflict(
            "only a successful deploy can be rolled back to".into(),
        ));
    }
    let reference: Option<String> = row.get("reference");
    let Some(reference) = reference.filter(|r| is_pinned(r)) else {
        return Err(ApiError::invalid(
            "deploy_id",
            "a deploy whose reference is pinned by digest (name@sha256:…)",
        ));
    };
    let command_id = uuid::Uuid::new_v4().to_string();
    let now = format_unix_ms(now_ms());
    let data = json!({
        "command_id": command_id,
        "workload_id": wid,
        "reference": reference,
        "reason": "rollback",
        "requested_by": claims.sub,
        "deploy_id": req.deploy_id,
    });
    let ack = publish_all(
        &state,
        vec![Outgoing {
            subject: format!("command.deploy.{wid}"),
            body: envelope::encode(&command_id, "command.deploy", "orrery/api", &now, &data),
            msg_id: command_id.clone(),
        }],
    )
    .await?
    .remove(0);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"command_id": command_id, "reference": reference, "seq": ack.sequence})),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_matches_hand_computed_values() {
        let v: Vec<i64> = (1..=10).map(|x| x * 10).collect();
        assert_eq!(nearest_rank(&v, 0.50), 50);
        assert_eq!(nearest_rank(&v, 0.95), 100);
        assert_eq!(nearest_rank(&v, 0.10), 10);
        assert_eq!(nearest_rank(&[7], 0.99), 7);
        let v: Vec<i64> = (1..=200).collect();
        assert_eq!(nearest_rank(&v, 0.99), 198);
        assert_eq!(nearest_rank(&v, 0.95), 190);
    }

    #[test]
    fn pinned_references_carry_a_digest() {
        assert!(is_pinned("registry.example/shop@sha256:3b2f"));
        assert!(!is_pinned("registry.example/shop:1.2"));
        assert!(!is_pinned("registry.example/shop@"));
        assert!(!is_pinned("shop@sha256:"));
    }
}
