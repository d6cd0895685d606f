//! Execution results: the failure-count badge.

use axum::extract::{RawQuery, State};
use axum::Json;
use serde_json::{json, Value};

use crate::api::auth::Viewer;
use crate::api::error::{ApiError, ApiResult};
use crate::api::params::Params;
use crate::api::AppState;
use crate::bus::subjects;
use crate::window::{now_ms, parse_single_unit};

/// Longest window the badge accepts.
pub const MAX_SINCE_SECS: u64 = 7 * 86_400;
const SINCE_FORM: &str =
    "a whole number followed by s, m, h or d, greater than 0 and at most 7d (e.g. 1h)";

/// `GET /api/v1/results/stats?since=1h&success=false&kind=traffic`: results recorded in the
/// last `since`, optionally filtered by outcome and kind.
pub async fn stats(
    _: Viewer,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let params = Params::parse(query.as_deref());
    let since = params.get("since")?.unwrap_or("1h");
    let window = parse_single_unit(since)
        .ok()
        .filter(|d| d.as_secs() <= MAX_SINCE_SECS)
        .ok_or_else(|| ApiError::invalid("since", SINCE_FORM))?;
    let success = params.bool("success")?;
    let kind = params.get("kind")?;
    if kind.is_some_and(|k| !subjects::is_token(k)) {
        return Err(ApiError::invalid("kind", subjects::TOKEN_FORM));
    }
    let now = now_ms();
    let from = now - window.as_millis() as i64;
    // Every shape counts from the (kind, success, recorded_at) index alone; without a kind,
    // one range count per known kind is added up.
    let sql = match (success.is_some(), kind.is_some()) {
        (true, true) => {
            "SELECT COUNT(*) FROM execution_results \
                         WHERE kind = ?1 AND success = ?2 AND recorded_at BETWEEN ?3 AND ?4"
        }
        (false, true) => {
            "SELECT COUNT(*) FROM execution_results \
                          WHERE kind = ?1 AND success IN (0, 1) AND recorded_at BETWEEN ?3 AND ?4"
        }
        (true, false) => {
            "SELECT COALESCE(SUM((SELECT COUNT(*) FROM execution_results r \
                          WHERE r.kind = k.kind AND r.success = ?2 \
                          AND r.recorded_at BETWEEN ?3 AND ?4)), 0) FROM result_kinds k"
        }
        (false, false) => {
            "SELECT COALESCE(SUM((SELECT COUNT(*) FROM execution_results r \
                           WHERE r.kind = k.kind AND r.success IN (0, 1) \
                           AND r.recorded_at BETWEEN ?3 AND ?4)), 0) FROM result_kinds k"
        }
    };
    let count: i64 = sqlx::query_scalar(sql)
        .bind(kind)
        .bind(success)
        .bind(from)
        .bind(now)
        .fetch_one(&state.db.readers)
        .await?;
    Ok(Json(json!({
        "since": since,
        "success": success,
        "kind": kind,
        "count": count,
    })))
}
