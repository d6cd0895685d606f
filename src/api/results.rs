//! `/api/v1/results/…`: the failure-count badge (`stats`) and run durations per job
//! (`durations`).

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{AsViewer, Params};
use crate::api::AppState;
use crate::projections::results::count_results;
use crate::projections::results::durations::{job_durations, JobStats};
use crate::window::{format_unix_ms, now_ms, parse_rfc3339_ms, parse_single_unit};

/// `/api/v1/results/stats`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultStats {
    /// The window asked for.
    pub since: String,
    /// The outcome filter; null when not asked for.
    pub success: Option<bool>,
    /// The kind filter; null when not asked for.
    pub kind: Option<String>,
    /// Results recorded in the window.
    pub count: i64,
}

/// `/api/v1/results/durations`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Durations {
    /// Start of the window.
    pub since: String,
    /// Slowest p95 first.
    pub items: Vec<JobStats>,
}

/// Longest window the badge accepts.
pub const MAX_SINCE_SECS: u64 = 7 * 86_400;
const SINCE_FORM: &str =
    "a whole number followed by s, m, h or d, greater than 0 and at most 7d (e.g. 1h)";

/// `GET /api/v1/results/stats?since=1h&success=false&kind=traffic`: results recorded in the
/// last `since`, optionally filtered by outcome and kind.
#[utoipa::path(get, path = "/results/stats", operation_id = "get_results_stats", tag = "results", security(("bearer" = ["viewer"])), params(("since" = Option<String>, Query, description = "window: digits then s, m, h or d; > 0 and ≤ 7d (default 1h)", pattern = "^0*([1-9][0-9]{0,4}|[1-5][0-9]{5}|60[0-3][0-9]{3}|604[0-7][0-9]{2}|604800)s$|^0*([1-9][0-9]{0,3}|100[0-7][0-9]|10080)m$|^0*([1-9][0-9]?|1[0-5][0-9]|16[0-8])h$|^0*[1-7]d$"), ("success" = Option<bool>, Query, description = "only successes (true) or failures (false)"), ("kind" = Option<String>, Query, description = "result kind (a subject token)", pattern = "^[A-Za-z0-9_-]{1,128}$", pattern = "^[A-Za-z0-9_-]{1,128}$"), ("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "OK", body = ResultStats), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn stats(
    _: AsViewer,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<Json<ResultStats>> {
    let since = params.get("since")?.unwrap_or("1h");
    let window = parse_single_unit(since)
        .ok()
        .filter(|d| d.as_secs() <= MAX_SINCE_SECS)
        .ok_or_else(|| ApiError::invalid("since", SINCE_FORM))?;
    let success = params.bool("success")?;
    let kind = params.token("kind")?;
    let now = now_ms();
    let from = now - window.as_millis() as i64;
    let count = count_results(&state.db.readers, kind, success, from, now).await?;
    Ok(Json(ResultStats {
        since: since.to_owned(),
        success,
        kind: kind.map(str::to_owned),
        count,
    }))
}

/// `GET /api/v1/results/durations?since=<RFC3339>`: per `job_id`, duration statistics of the
/// results finished since then (default 24 h ago), slowest p95 first.
#[utoipa::path(get, path = "/results/durations", operation_id = "get_results_durations", tag = "results", security(("bearer" = ["viewer"])), params(("since" = Option<String>, Query, description = "RFC 3339 start (default 24 h ago)", format = DateTime), ("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "OK", body = Durations), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn durations(
    _: AsViewer,
    State(state): State<AppState>,
    params: Params,
) -> ApiResult<Json<Durations>> {
    let since = match params.get("since")? {
        None => now_ms() - 24 * 3_600_000,
        Some(s) => parse_rfc3339_ms(s).ok_or_else(|| {
            ApiError::invalid("since", "an RFC 3339 time such as 2026-11-22T10:00:00Z")
        })?,
    };
    let items = job_durations(&state.db.readers, &state.durations, since, now_ms()).await?;

    Ok(Json(Durations {
        since: format_unix_ms(since),
        items,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The badge's `since` as the parser takes it.
    fn accepted(since: &str) -> bool {
        parse_single_unit(since).is_ok_and(|d| d.as_secs() <= MAX_SINCE_SECS)
    }

    #[test]
    fn the_documented_since_pattern_is_exactly_what_the_parser_accepts() {
        let doc = crate::api::openapi_document();
        let params = doc["paths"]["/api/v1/results/stats"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let since = params.iter().find(|p| p["name"] == "since").unwrap();
        let pattern = regex::Regex::new(since["schema"]["pattern"].as_str().unwrap()).unwrap();
        let mut checked = 0;
        for unit in ["s", "m", "h", "d", "w", "", "ms"] {
            for n in (0..=700_000u64)
                .step_by(1)
                .filter(|n| *n < 2_000 || n % 97 == 0)
            {
                for s in [
                    format!("{n}{unit}"),
                    format!("0{n}{unit}"),
                    format!("00{n}{unit}"),
                ] {
                    assert_eq!(pattern.is_match(&s), accepted(&s), "{s}");
                    checked += 1;
                }
            }
            for edge in [604_800u64, 604_801, 10_080, 10_081, 168, 169, 7, 8] {
                let s = format!("{edge}{unit}");
                assert_eq!(pattern.is_match(&s), accepted(&s), "{s}");
            }
        }
        for odd in [
            "", "h", "1", "1h30m", " 1h", "1h ", "-1h", "+1h", "1H", "１h",
        ] {
            assert_eq!(pattern.is_match(odd), accepted(odd), "{odd:?}");
        }
        assert!(checked > 100_000);
    }
}
