//! Fleet: health for probes, agents, scan durations, resource metrics, the deploy ledger and
//! rollback.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

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
use crate::api::health::{lags, Lag};
use crate::api::params::Params;
use crate::api::{publish_all, AppState, Outgoing, MAX_BODY_BYTES};
use crate::bus::{envelope, streams, subjects};
use crate::projections::results::{count_results, DEPLOY_ERROR_MARKER};
use crate::window::{format_unix_ms, now_ms, parse_duration, parse_rfc3339_ms};

/// Window of `recent_results` in fleet health.
const RECENT_RESULTS_HOURS: i64 = 24;
/// Longest history window.
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3_600);
/// Most points one history answer holds.
const MAX_POINTS: i64 = 10_000;
const WINDOW_FORM: &str =
    "a duration such as 30m, 2h or 1h30m (units s, m, h, d), greater than 0 and at most 24h";

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

/// How old the JetStream facts behind fleet health may be.
pub const BUS_VIEW_TTL: Duration = Duration::from_secs(1);

/// What fleet health asks JetStream: the streams present and each projected stream's last
/// sequence. Probes poll; JetStream API requests are the expensive part of an answer, so
/// they are made at most once per [`BUS_VIEW_TTL`] whatever the number of callers.
#[derive(Default)]
pub struct BusView {
    cached: tokio::sync::Mutex<Option<BusFacts>>,
}

#[derive(Clone)]
struct BusFacts {
    at: Instant,
    names: Option<HashSet<String>>,
    last_seqs: Vec<(&'static str, Option<u64>)>,
}

impl BusView {
    async fn facts(&self, state: &AppState) -> BusFacts {
        // Holding the lock across the refresh makes concurrent callers share one refresh.
        let mut cached = self.cached.lock().await;
        if let Some(f) = cached.as_ref().filter(|f| f.at.elapsed() < BUS_VIEW_TTL) {
            return f.clone();
        }
        let (names, lags) = tokio::join!(stream_names(state), lags(state));
        let facts = BusFacts {
            at: Instant::now(),
            names,
            last_seqs: lags.iter().map(|l| (l.stream, l.stream_last_seq)).collect(),
        };
        *cached = Some(facts.clone());
        facts
    }
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
    let readers = &state.db.readers;
    let (total, failed) = (
        count_results(readers, None, None, since, now).await?,
        count_results(readers, None, Some(false), since, now).await?,
    );
    let facts = state.bus_view.facts(&state).await;
    let names = facts.names;
    let projections: Vec<Lag> = state
        .projections
        .iter()
        .map(|p| {
            let checkpoint = *p.checkpoint.borrow();
            let last = facts
                .last_seqs
                .iter()
                .find(|(s, _)| *s == p.stream.name)
                .and_then(|(_, l)| *l);
            Lag {
                stream: p.stream.name,
                checkpoint,
                // Facts may be a moment older than the checkpoint: never report it ahead.
                stream_last_seq: last.map(|l| l.max(checkpoint)),
                lag: last.map(|l| l.saturating_sub(checkpoint)),
            }
        })
        .collect();
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
    sorted[rank_index(sorted.len(), p)]
}

/// The 0-based index of the nearest rank of `p` among `n` values: ceil(p·n) − 1, computed in
/// integers so that 0.95 × 20 is exactly 19.
fn rank_index(n: usize, p: f64) -> usize {
    let percent = (p * 100.0).round() as usize;
    ((percent * n).div_ceil(100)).clamp(1, n) - 1
}

/// The nearest-rank percentile of unsorted values, in linear time (reorders them).
pub fn select_rank(values: &mut [i64], p: f64) -> i64 {
    let i = rank_index(values.len(), p);
    *values.select_nth_unstable(i).1
}

/// Durations of one job in the window.
struct JobDurations {
    values: Vec<i64>,
    max_ms: i64,
    max_id: Option<String>,
    /// Longest duration among the values of since's own hour (-1: none).
    edge_max: i64,
}

impl Default for JobDurations {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            max_ms: -1,
            max_id: None,
            edge_max: -1,
        }
    }
}

impl JobDurations {
    /// Keeps the longest run, ties going to the larger result id.
    fn offer(&mut self, ms: i64, id: Option<String>) {
        if ms > self.max_ms || (ms == self.max_ms && id > self.max_id) {
            self.max_ms = ms;
            self.max_id = id;
        }
    }
}

/// Reads packed duration blocks: `hour,len,job_id len,max_key len,vals` repeated, lengths
/// in bytes. Yields `None` (and stops) on a malformed record.
struct Blocks<'a>(&'a str);

impl<'a> Blocks<'a> {
    fn field(&mut self) -> Option<&'a str> {
        let (len, rest) = self.0.split_once(',')?;
        let len: usize = len.parse().ok()?;
        let value = rest.get(..len)?;
        self.0 = &rest[len..];
        Some(value)
    }

    fn record(&mut self) -> Option<(i64, &'a str, &'a str, &'a str)> {
        let (hour, rest) = self.0.split_once(',')?;
        self.0 = rest;
        let hour = hour.parse().ok()?;
        Some((hour, self.field()?, self.field()?, self.field()?))
    }
}

impl<'a> Iterator for Blocks<'a> {
    type Item = Option<(i64, &'a str, &'a str, &'a str)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let record = self.record();
        if record.is_none() {
            self.0 = "";
        }
        Some(record)
    }
}

/// The `finished_at:ms` pairs of a duration block.
fn parse_block(vals: &str) -> impl Iterator<Item = (i64, i64)> + '_ {
    vals.split(',').filter_map(|pair| {
        let (f, ms) = pair.split_once(':')?;
        Some((f.parse().ok()?, ms.parse().ok()?))
    })
}

/// A block's `max_key` (12 zero-padded digits, then the result id) as (ms, id).
fn split_max_key(key: &str) -> (i64, &str) {
    let (ms, id) = key.split_at(key.len().min(12));
    (ms.parse().unwrap_or(0), id)
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
    let h0 = since.div_euclid(3_600_000);
    // Blocks of hours after since's hour lie wholly in the window; since's own hour is
    // filtered value by value.
    // All blocks of the window in one value: rows are cheap for SQLite to concatenate and
    // dear to hand over one by one (measured: 17 ms of 28 for 5,000 blocks).
    let packed: Option<String> = sqlx::query_scalar(
        "SELECT group_concat(hour || ',' || length(CAST(job_id AS BLOB)) || ',' || job_id \
           || length(CAST(max_key AS BLOB)) || ',' || max_key \
           || length(CAST(vals AS BLOB)) || ',' || vals, '') \
         FROM duration_blocks WHERE hour >= ?1",
    )
    .bind(h0)
    .fetch_one(&state.db.readers)
    .await?;
    let mut jobs: BTreeMap<String, JobDurations> = BTreeMap::new();
    for block in Blocks(packed.as_deref().unwrap_or("")) {
        let Some((hour, job, max_key, vals)) = block else {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "duration blocks could not be read back"
            )));
        };
        let j = jobs.entry(job.to_owned()).or_default();
        if hour > h0 {
            j.values.extend(parse_block(vals).map(|(_, ms)| ms));
            let (ms, id) = split_max_key(max_key);
            j.offer(ms, Some(id.to_owned()));
        } else {
            for (_, ms) in parse_block(vals).filter(|(f, _)| *f >= since) {
                j.values.push(ms);
                j.edge_max = j.edge_max.max(ms);
            }
        }
    }
    if jobs
        .values()
        .any(|j| j.edge_max >= 0 && j.edge_max >= j.max_ms)
    {
        // Some job's longest run finished in since's own hour, whose blocks are filtered
        // value by value and carry no ids: take each job's longest run there from the rows,
        // in the blocks' max_key form.
        let edge: Vec<(String, String)> = sqlx::query_as(
            "SELECT job_id, MAX(printf('%012d', MAX(0, finished_at - started_at)) || result_id) \
             FROM execution_results \
             WHERE kind IN (SELECT kind FROM result_kinds) AND success IN (0, 1) \
             AND recorded_at >= ?1 AND recorded_at < ?2 AND finished_at >= ?1 \
             AND job_id IS NOT NULL AND started_at IS NOT NULL GROUP BY job_id",
        )
        .bind(since)
        .bind((h0 + 1) * 3_600_000)
        .fetch_all(&state.db.readers)
        .await?;
        for (job, key) in edge {
            if let Some(j) = jobs.get_mut(&job) {
                let (ms, id) = split_max_key(&key);
                j.offer(ms, Some(id.to_owned()));
            }
        }
    }
    let mut items: Vec<(i64, Value)> = Vec::with_capacity(jobs.len());
    for (job, mut j) in jobs {
        if j.values.is_empty() {
            continue;
        }
        let n = j.values.len();
        let sum: i64 = j.values.iter().sum();
        let min = *j.values.iter().min().expect("non-empty");
        let p50 = select_rank(&mut j.values, 0.50);
        let p95 = select_rank(&mut j.values, 0.95);
        let p99 = select_rank(&mut j.values, 0.99);
        items.push((
            p95,
            json!({
                "job_id": job,
                "count": n,
                "min_ms": min,
                "p50_ms": p50,
                "p95_ms": p95,
                "p99_ms": p99,
                "max_ms": j.max_ms,
                "mean_ms": sum as f64 / n as f64,
                "max_result_id": j.max_id,
            }),
        ));
    }
    // Stable: equal p95s keep job order.
    items.sort_by_key(|(p95, _)| std::cmp::Reverse(*p95));
    let items: Vec<Value> = items.into_iter().map(|(_, v)| v).collect();
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
    fn selection_agrees_with_sorting() {
        let mut v: Vec<i64> = (0..1_000).map(|i| (i * 7_919) % 1_009).collect();
        let mut sorted = v.clone();
        sorted.sort_unstable();
        for p in [0.5, 0.95, 0.99] {
            assert_eq!(select_rank(&mut v, p), nearest_rank(&sorted, p));
        }
        assert_eq!(rank_index(20, 0.95), 18, "ceil(19) - 1, no float drift");
        assert_eq!(split_max_key("000000000500b-500"), (500, "b-500"));
        let pairs: Vec<(i64, i64)> = parse_block("10:5,20:0").collect();
        assert_eq!(pairs, [(10, 5), (20, 0)]);
        let packed = "7,3,a,b15,000000000005r,13,1:58,5,job\u{e9}13,00000000000113,0:19,9,short";
        let blocks: Vec<_> = Blocks(packed).collect();
        assert_eq!(
            blocks,
            [
                Some((7, "a,b", "000000000005r,1", "1:5")),
                Some((8, "job\u{e9}", "0000000000011", "0:1")),
                None,
            ],
            "lengths are bytes; a bad record stops the reading"
        );
    }

    #[test]
    fn pinned_references_carry_a_digest() {
        assert!(is_pinned("registry.example/shop@sha256:3b2f"));
        assert!(!is_pinned("registry.example/shop:1.2"));
        assert!(!is_pinned("registry.example/shop@"));
        assert!(!is_pinned("shop@sha256:"));
    }
}
