//! `/api/v1/workloads[/<wid>/…]`: the workloads seen, a workload's resource history, its
//! deploy ledger and rollback.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use utoipa::ToSchema;

use crate::api::consistency::{written, Written};
use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{json_body, AsAdmin, AsViewer, Authorized, Params, RawBody};
use crate::api::{AppState, MAX_BODY_BYTES, MAX_HISTORY_POINTS};
use crate::bus::publish::Outgoing;
use crate::bus::{envelope, streams, subjects};
use crate::projections::results::DEPLOY_ERROR_MARKER;
use crate::projections::workloads;
use crate::window::{format_unix_ms, now_ms};

/// A workload's point in time.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSample {
    /// Sample time.
    pub at: String,
    /// Summed over its containers; null when no container's CPU could be read.
    pub cpu_percent: Option<f64>,
    /// Summed over its containers; null when no container's memory could be read.
    pub memory_usage: Option<i64>,
    /// The largest container limit; null when no container has one.
    pub memory_limit: Option<i64>,
    /// Containers sampled.
    pub containers: i64,
}

/// A workload's latest deploy.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LatestDeploy {
    /// Deploy id.
    pub deploy_id: String,
    /// Image reference; null when the deploy result named none.
    pub reference: Option<String>,
    /// Outcome.
    pub success: bool,
    /// When.
    pub recorded_at: String,
}

/// A workload.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRow {
    /// Workload id.
    pub workload_id: String,
    /// Its newest deploy; null when it was only seen in heartbeats.
    pub latest_deploy: Option<LatestDeploy>,
}

/// `/api/v1/workloads`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Workloads {
    /// By id.
    pub items: Vec<WorkloadRow>,
}

/// A deploy in the ledger.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// Deploy id (the result id).
    pub deploy_id: String,
    /// Workload.
    pub workload_id: String,
    /// Agent that deployed.
    pub agent_id: String,
    /// Image reference; null when the deploy result named none.
    pub reference: Option<String>,
    /// `deploy` or `rollback`.
    pub reason: String,
    /// Outcome.
    pub success: bool,
    /// A fixed marker when failed (the error text is never stored); null on success.
    #[schema(value_type = Option<String>)]
    pub error: Option<&'static str>,
    /// When.
    pub recorded_at: String,
}

impl Deploy {
    fn from_row(r: &SqliteRow) -> Self {
        let success: bool = r.get("success");
        Self {
            deploy_id: r.get("deploy_id"),
            workload_id: r.get("workload_id"),
            agent_id: r.get("agent_id"),
            reference: r.get("reference"),
            reason: r.get("reason"),
            success,
            error: (!success).then_some(DEPLOY_ERROR_MARKER),
            recorded_at: format_unix_ms(r.get("recorded_at")),
        }
    }
}

/// `/api/v1/workloads/{wid}/deploys`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deploys {
    /// Newest first.
    pub items: Vec<Deploy>,
    /// Page size.
    pub limit: i64,
    /// Page start.
    pub offset: i64,
}

/// Body of a rollback.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// A successful, pinned deploy of the workload.
    pub deploy_id: String,
}

/// Answer of a rollback (202).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolledBack {
    /// The command's id.
    pub command_id: String,
    /// The reference asked for.
    pub reference: String,
    /// Its COMMANDS sequence.
    pub seq: u64,
}

/// `GET /api/v1/workloads?limit=`: every workload seen (in a heartbeat's containers or a
/// deploy), by id, with its latest deploy if any.
#[utoipa::path(get, path = "/workloads", operation_id = "get_workloads", tag = "deploys", security(("bearer" = ["viewer"])), params(("limit" = Option<i64>, Query, description = "rows, 1–1000 (default 200)", minimum = 1, maximum = 1000), ("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "OK", body = Workloads), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn list(
    _: AsViewer,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<Json<Workloads>> {
    let limit = params.int("limit", 1, 1000, 200)?;
    let rows = sqlx::query(
        "SELECT w.workload_id, d.deploy_id, d.reference, d.success, d.recorded_at          FROM workloads w LEFT JOIN deploy_history d ON d.deploy_id = (              SELECT deploy_id FROM deploy_history WHERE workload_id = w.workload_id              ORDER BY recorded_at DESC, seq DESC LIMIT 1)          ORDER BY w.workload_id LIMIT ?1",
    )
    .bind(limit)
    .fetch_all(&state.db.readers)
    .await?;
    // The LEFT JOIN's columns are null together: a deploy row has every one but `reference`.
    let items = rows
        .iter()
        .map(|r| WorkloadRow {
            workload_id: r.get(0),
            latest_deploy: r.get::<Option<String>, _>(1).map(|deploy_id| LatestDeploy {
                deploy_id,
                reference: r.get(2),
                success: r.get(3),
                recorded_at: format_unix_ms(r.get(4)),
            }),
        })
        .collect();
    Ok(Json(Workloads { items }))
}

/// 404 unless workload `wid` was ever seen.
async fn workload_known(state: &AppState, wid: &str) -> ApiResult<()> {
    if subjects::is_token(wid) && workloads::exists(&state.db.readers, wid).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound("workload".into()))
    }
}

/// `GET /api/v1/workloads/<wid>/stats/history?window=1h`: one point per timestamp across the
/// workload's containers (CPU and memory summed, limit the largest).
#[utoipa::path(get, path = "/workloads/{wid}/stats/history", operation_id = "get_workloads_wid_stats_history", tag = "fleet", security(("bearer" = ["viewer"])), params(("wid" = String, Path, description = "workload id", pattern = "^[A-Za-z0-9_-]{1,128}$"), ("window" = Option<String>, Query, description = "a duration such as 30m, 2h or 1h30m, > 0 and ≤ 24h (default 2h)"), ("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "points, oldest first", body = Vec<WorkloadSample>), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 404, description = "not found", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn history(
    _: AsViewer,
    State(state): State<AppState>,
    Path(wid): Path<String>,
    params: Params,
) -> ApiResult<Json<Vec<WorkloadSample>>> {
    let from = params.window_start()?;
    workload_known(&state, &wid).await?;
    let rows = sqlx::query(
        "SELECT at, SUM(cpu_percent) AS cpu, SUM(memory_usage) AS mem, \
         MAX(memory_limit) AS lim, COUNT(*) AS containers \
         FROM container_stats_samples WHERE workload_id = ?1 AND at >= ?2 \
         GROUP BY at ORDER BY at LIMIT ?3",
    )
    .bind(&wid)
    .bind(from)
    .bind(MAX_HISTORY_POINTS)
    .fetch_all(&state.db.readers)
    .await?;
    let items = rows
        .iter()
        .map(|r| WorkloadSample {
            at: format_unix_ms(r.get("at")),
            cpu_percent: r.get("cpu"),
            memory_usage: r.get("mem"),
            memory_limit: r.get("lim"),
            containers: r.get("containers"),
        })
        .collect();
    Ok(Json(items))
}

/// `GET /api/v1/workloads/<wid>/deploys?limit=&offset=`: the ledger, newest first.
#[utoipa::path(get, path = "/workloads/{wid}/deploys", operation_id = "get_workloads_wid_deploys", tag = "deploys", security(("bearer" = ["viewer"])), params(("wid" = String, Path, description = "workload id", pattern = "^[A-Za-z0-9_-]{1,128}$"), ("limit" = Option<i64>, Query, description = "rows, 1–200 (default 50)", minimum = 1, maximum = 200), ("offset" = Option<i64>, Query, description = "rows to skip, 0–1000000", minimum = 0, maximum = 1000000), ("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "OK", body = Deploys), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 404, description = "not found", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn deploys(
    _: AsViewer,
    State(state): State<AppState>,
    Path(wid): Path<String>,
    params: Params,
) -> ApiResult<Json<Deploys>> {
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
    let items = rows.iter().map(Deploy::from_row).collect();
    Ok(Json(Deploys {
        items,
        limit,
        offset,
    }))
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
#[utoipa::path(post, path = "/workloads/{wid}/rollback", operation_id = "post_workloads_wid_rollback", tag = "deploys", security(("bearer" = ["admin"])), request_body = RollbackRequest, params(("wid" = String, Path, description = "workload id", pattern = "^[A-Za-z0-9_-]{1,128}$")), responses((status = 202, description = "command.deploy published", body = RolledBack), (status = 400, description = "malformed body", body = crate::api::error::ErrorBody), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low, or the token is scoped to some projects or topologies (admin routes span the whole fleet)", body = crate::api::error::ErrorBody), (status = 404, description = "not found", body = crate::api::error::ErrorBody), (status = 409, description = "conflicts with the current state", body = crate::api::error::ErrorBody), (status = 413, description = "body too large", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn rollback(
    Authorized(claims): AsAdmin,
    State(state): State<AppState>,
    Path(wid): Path<String>,
    body: RawBody,
) -> ApiResult<(StatusCode, Written, Json<RolledBack>)> {
    let req: RollbackRequest = json_body(&body, MAX_BODY_BYTES, r#"{"deploy_id": string}"#)?;
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
    let ack = state
        .publish_one(Outgoing {
            subject: format!("command.deploy.{wid}"),
            body: envelope::encode(&command_id, "command.deploy", "orrery/api", &now, &data).into(),
            msg_id: command_id.clone(),
            expected_last_subject_seq: None,
        })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        written(streams::COMMANDS, ack.sequence),
        Json(RolledBack {
            command_id,
            reference,
            seq: ack.sequence,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_references_carry_a_digest() {
        assert!(is_pinned("registry.example/shop@sha256:3b2f"));
        assert!(!is_pinned("registry.example/shop:1.2"));
        assert!(!is_pinned("registry.example/shop@"));
        assert!(!is_pinned("shop@sha256:"));
    }
}
