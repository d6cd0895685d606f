//! `/health` (liveness), `/ready` (readiness) and `/api/v1/health/fleet` (is the fleet
//! healthy?), which share how a projection's lag is judged.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::join_all;
use futures::StreamExt;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::error::ApiResult;
use crate::api::extract::AsViewer;
use crate::api::AppState;
use crate::bus::{self, streams};
use crate::projections::results::counts::count_results;
use crate::window::{format_unix_ms, now_ms};

/// Window of `recent_results` in fleet health.
const RECENT_RESULTS_HOURS: i64 = 24;
/// How old the JetStream facts behind fleet health may be.
pub const BUS_VIEW_TTL: Duration = Duration::from_secs(1);

/// `GET /health`: the process is up. Touches nothing else, so it never flaps with the bus.
#[utoipa::path(get, path = "/health", operation_id = "get_health", tag = "health", responses((status = 200, description = "the process is up", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `/health`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Always `ok` while the process runs.
    #[schema(value_type = String)]
    pub status: &'static str,
}

/// `/ready`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    /// `ready` or `not_ready`.
    #[schema(value_type = String)]
    pub status: &'static str,
    /// Why not ready.
    pub reasons: Vec<String>,
    /// Per projection; empty while the bus is not connected.
    pub projections: Vec<Lag>,
    /// Gaps, reported (they do not fail readiness).
    pub gaps: Vec<GapReport>,
    /// Per read model, its retention and the oldest event it keeps (empty until the pruner's
    /// first pass, a moment after start).
    pub retention: Vec<RetentionReport>,
}

/// How far back a read model reaches.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionReport {
    /// Its stream.
    #[schema(value_type = String)]
    pub stream: &'static str,
    /// How long it keeps rows, by event time; null: for ever.
    pub retention_secs: Option<u64>,
    /// Event time of the oldest row it holds; null: it holds none.
    pub oldest_kept_at: Option<String>,
    /// Rows with an event time before this are past the retention (the bus's newest publish
    /// time minus the retention, never this replica's clock); null: kept for ever.
    pub cutoff_at: Option<String>,
    /// Rows pruned since the daemon started.
    pub pruned_rows: u64,
}

impl From<crate::projector::prune::ModelReport> for RetentionReport {
    fn from(m: crate::projector::prune::ModelReport) -> Self {
        Self {
            stream: m.stream,
            retention_secs: m.retention_secs,
            oldest_kept_at: m.oldest_ms.map(format_unix_ms),
            cutoff_at: m.cutoff_ms.map(format_unix_ms),
            pruned_rows: m.pruned_rows,
        }
    }
}

/// A range a stream no longer held when the projection reached it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Gap)]
pub struct GapReport {
    /// Stream name.
    pub stream: String,
    /// First sequence missing.
    pub first_seq: u64,
    /// Last sequence missing.
    pub last_seq: u64,
    /// Messages in the range.
    pub events: u64,
    /// What to do about it.
    pub message: String,
}

/// `/api/v1/health/fleet`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// `ok`, `unknown` (no agent yet) or `degraded` (503).
    #[schema(value_type = String)]
    pub status: &'static str,
    /// Why degraded.
    pub reasons: Vec<String>,
    /// Agent counts.
    pub agents: FleetAgents,
    /// The JetStream resources Orrery needs.
    pub jetstream: FleetJetStream,
    /// Per projection.
    pub projections: Vec<Lag>,
    /// Results of the last hours.
    pub recent_results: RecentResults,
    /// Now.
    pub observed_at: String,
}

/// `/api/v1/health/fleet` agents.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetAgents {
    /// Agents that ever reported.
    pub known: i64,
    /// Not stale.
    pub active: i64,
    /// Silent past the threshold.
    pub stale: i64,
    /// The threshold.
    pub stale_after_secs: u64,
}

/// `/api/v1/health/fleet` JetStream resources.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetJetStream {
    /// Every expected stream exists.
    pub all_ok: bool,
    /// Expected streams that exist.
    pub healthy: usize,
    /// Expected streams.
    pub total: usize,
    /// The missing ones.
    pub missing: Vec<String>,
}

/// `/api/v1/health/fleet` results of the last hours.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecentResults {
    /// The window.
    pub window_hours: i64,
    /// Results in it.
    pub total: i64,
    /// Failures among them.
    pub failed: i64,
}

/// A 503 of `/api/v1/health/fleet`: the fleet is degraded, or the replica is behind the
/// `Orrery-Min-Seq` asked for.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // reason: a schema only, naming the two bodies a 503 can have
pub enum FleetUnavailable {
    /// Degraded: the reasons say why.
    Degraded(Fleet),
    /// Behind `Orrery-Min-Seq`.
    Behind(crate::api::error::ErrorBody),
}

/// One projection's position against its stream.
#[derive(Serialize, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Lag {
    /// Stream name.
    #[schema(value_type = String)]
    pub stream: &'static str,
    /// Last committed sequence.
    pub checkpoint: u64,
    /// Last sequence in the stream; null when the stream could not be read.
    pub stream_last_seq: Option<u64>,
    /// First sequence the stream still holds (retention drops older ones); null when the
    /// stream could not be read.
    pub stream_first_seq: Option<u64>,
    /// Messages the stream holds after the checkpoint: what is left to project; null when
    /// the stream could not be read.
    pub lag: Option<u64>,
    /// Messages projected per second lately (absent where not sampled).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub rate_per_sec: Option<u64>,
    /// At that rate, seconds until the lag is 0 (absent when caught up or not moving).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub eta_secs: Option<u64>,
    /// JetStream answered that the stream does not exist (rather than not answering).
    #[serde(skip)]
    pub missing: bool,
}

impl Lag {
    /// A projection at `checkpoint` against a stream holding `bounds` (first, last).
    fn new(stream: &'static str, checkpoint: u64, bounds: Option<(u64, u64)>) -> Self {
        Self {
            stream,
            checkpoint,
            stream_last_seq: bounds.map(|(_, last)| last),
            stream_first_seq: bounds.map(|(first, _)| first),
            // Messages the stream no longer holds cannot be projected: they are a gap (see
            // `unheld`), not lag, or a purged stream would keep /ready at 503 for ever.
            lag: bounds
                .map(|(first, last)| last.saturating_sub(checkpoint.max(first.saturating_sub(1)))),
            rate_per_sec: None,
            eta_secs: None,
            missing: false,
        }
    }

    /// Adds catch-up progress: the recent rate and, while behind, the time left at it.
    fn with_rate(mut self, rate: u64) -> Self {
        self.rate_per_sec = Some(rate);
        self.eta_secs = match self.lag {
            Some(lag) if lag > 0 && rate > 0 => Some(lag.div_ceil(rate)),
            _ => None,
        };
        self
    }

    /// The range right after the checkpoint that the stream no longer holds, if any: the
    /// projector records it as a gap when it passes it.
    fn unheld(&self) -> Option<(u64, u64)> {
        let first = self.stream_first_seq?;
        (first > self.checkpoint + 1).then(|| (self.checkpoint + 1, first - 1))
    }

    /// Why this projection is unwell with `max_lag` allowed, if it is.
    fn reason(&self, max_lag: u64) -> Option<String> {
        match self.lag {
            None if self.missing => Some(format!(
                "stream {} does not exist: Orrery creates it when its NATS user may \
                 (--provision-streams, README: NATS permissions), else create it",
                self.stream
            )),
            None => Some(format!("stream {} could not be read", self.stream)),
            Some(lag) if lag > max_lag => Some(format!(
                "projection {} lags by {lag} messages (threshold {max_lag})",
                self.stream
            )),
            Some(_) => None,
        }
    }
}

/// Reads every projection's lag, asking JetStream for the streams' last sequences in parallel.
pub async fn lags(state: &AppState) -> Vec<Lag> {
    let lookups = state.projections.iter().map(|p| async move {
        let checkpoint = *p.checkpoint.borrow();
        let looked_up = tokio::time::timeout(state.bus_timeout, state.js.get_stream(p.stream.name))
            .await
            .ok();
        let missing = matches!(&looked_up, Some(Err(e)) if bus::streams::is_not_found(e));
        let last = looked_up.and_then(Result::ok).map(|stream| {
            let held = &stream.cached_info().state;
            (held.first_sequence, held.last_sequence)
        });
        let rate = p.counters.rate.load(std::sync::atomic::Ordering::Relaxed);
        let mut lag = Lag::new(p.stream.name, checkpoint, last).with_rate(rate);
        lag.missing = missing;
        lag
    });
    join_all(lookups).await
}

/// `GET /ready`: 200 when the database answers, the bus is connected and every projection is
/// within `ready_max_lag` of its stream; 503 naming the reason otherwise.
#[utoipa::path(get, path = "/ready", operation_id = "get_ready", tag = "health", responses((status = 200, description = "ready", body = Ready), (status = 503, description = "not ready: the reasons say why", body = Ready)))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let mut reasons = Vec::new();
    if state.stopping.is_cancelled() {
        reasons.push("shutting down: draining before live streams end".to_owned());
    }
    if let Err(e) = sqlx::query("SELECT 1").execute(&state.db.readers).await {
        reasons.push(format!("database: {e}"));
    }
    let connected = bus::is_connected(&state.nats);
    if !connected {
        reasons.push(match state.bus_events.unreachable() {
            Some(cause) => format!("bus: not connected to NATS: {cause}"),
            None => "bus: not connected to NATS".to_owned(),
        });
    }
    reasons.extend(
        state
            .bus_events
            .recent_denials(std::time::Instant::now())
            .iter()
            .map(bus::events::Denial::reason),
    );
    let projections = if connected {
        lags(&state).await
    } else {
        Vec::new()
    };
    reasons.extend(
        projections
            .iter()
            .filter_map(|p| p.reason(state.ready_max_lag)),
    );
    // A projection that cannot commit (a full disk, a read-only file) is not ready, whatever
    // its lag says: it is retrying from its checkpoint and will say so until a batch commits.
    for p in state.projections.iter() {
        let failure = crate::sync::lock(&p.counters.failure).clone();
        if let Some(error) = failure {
            reasons.push(format!(
                "projection {} is failing and retrying from checkpoint {}: {error}",
                p.stream.name,
                *p.checkpoint.borrow()
            ));
        }
    }
    // A gap is reported, not a reason to refuse traffic: with a retention limit every
    // replica that starts from nothing after the limit has passed has one, and would
    // otherwise never be ready. Operators alert on it (orrery_projection_missing_events).
    let recorded = crate::projector::load_gaps(&state.db.readers)
        .await
        .unwrap_or_default();
    // Ranges the projector has not reached yet but the stream no longer holds either.
    let pending = projections.iter().filter_map(|l| {
        let (first_seq, last_seq) = l.unheld()?;
        Some(crate::projector::Gap {
            stream: l.stream.to_owned(),
            first_seq,
            last_seq,
        })
    });
    let gaps: Vec<_> = recorded
        .into_iter()
        .chain(pending)
        .map(|g| GapReport {
            message: format!(
                "{}: events {}–{} were gone from the stream before this replica projected \
                 them; restore a snapshot that covers them (--snapshot-bucket)",
                g.stream, g.first_seq, g.last_seq
            ),
            events: g.events(),
            first_seq: g.first_seq,
            last_seq: g.last_seq,
            stream: g.stream,
        })
        .collect();
    // Read after the rest: a failure here is a reason like any other.
    let retention = match crate::projector::prune::survey(
        &state.db.readers,
        &state.read_models,
        &state.retention,
        &state.pruning,
    )
    .await
    {
        Ok(models) => models.into_iter().map(Into::into).collect(),
        Err(e) => {
            reasons.push(format!("database: reading retention: {e}"));
            Vec::new()
        }
    };
    let (status, word) = if reasons.is_empty() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    (
        status,
        Json(Ready {
            status: word,
            reasons,
            projections,
            gaps,
            retention,
        }),
    )
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
    bounds: Vec<(&'static str, Option<(u64, u64)>)>,
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
            bounds: lags
                .iter()
                .map(|l| (l.stream, l.stream_first_seq.zip(l.stream_last_seq)))
                .collect(),
        };
        *cached = Some(facts.clone());
        facts
    }
}

/// `GET /api/v1/health/fleet`: one answer to "is the fleet healthy?" — 200 `ok` or
/// `unknown` (no agent yet), 503 `degraded` naming nothing but counts and missing resources.
#[utoipa::path(get, path = "/health/fleet", operation_id = "get_health_fleet", tag = "health", security(("bearer" = ["viewer"])), params(("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "ok or unknown", body = Fleet), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 503, description = "degraded: the reasons say why (a Fleet body); or `Orrery-Min-Seq` was not reached in time (an error body, with `Retry-After`)", body = FleetUnavailable), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody)))]
pub async fn fleet(_: AsViewer, State(state): State<AppState>) -> ApiResult<Response> {
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
            let bounds = facts
                .bounds
                .iter()
                .find(|(s, _)| *s == p.stream.name)
                .and_then(|(_, b)| *b);
            let checkpoint = *p.checkpoint.borrow();
            // Facts may be a moment older than the checkpoint: never report it ahead.
            Lag::new(
                p.stream.name,
                checkpoint,
                bounds.map(|(first, last)| (first, last.max(checkpoint))),
            )
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
    reasons.extend(projections.iter().filter_map(|p| p.reason(f.max_lag)));
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
    let body = Fleet {
        status,
        reasons,
        agents: FleetAgents {
            known,
            active: known - stale,
            stale,
            stale_after_secs: f.stale_after.as_secs(),
        },
        jetstream: FleetJetStream {
            all_ok: missing.is_empty(),
            healthy: expected.len() - missing.len(),
            total: expected.len(),
            missing,
        },
        projections,
        recent_results: RecentResults {
            window_hours: RECENT_RESULTS_HOURS,
            total,
            failed,
        },
        observed_at: format_unix_ms(now),
    };
    let code = if status == "degraded" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    Ok((code, Json(body)).into_response())
}
