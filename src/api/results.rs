//! Execution results: the failure-count badge.

use axum::extract::{RawQuery, State};
use axum::Json;
use serde_json::{json, Value};

use crate::api::auth::Viewer;
use crate::api::error::{ApiError, ApiResult};
use crate::api::params::Params;
use crate::api::AppState;
use crate::bus::subjects;
use crate::projections::results::count_results;
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
    let count = count_results(&state.db.readers, kind, success, from, now).await?;
    Ok(Json(json!({
        "since": since,
        "success": success,
        "kind": kind,
        "count": count,
    })))
}
