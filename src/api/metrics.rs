//! `GET /metrics` (Prometheus, OpenMetrics text) and the middleware that times every request.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::{health, AppState};
use crate::bus;
use crate::telemetry::{status_class, HttpLabels, Scrape};

/// The OpenMetrics media type Prometheus negotiates for.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`: every metric the README lists.
#[utoipa::path(get, path = "/metrics", operation_id = "get_metrics", tag = "health", responses((status = 200, description = "Prometheus metrics, OpenMetrics text format", content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let bus_connected = bus::is_connected(&state.nats);
    // Lags need the bus; without it they would only wait for the timeout.
    let lags = if bus_connected {
        health::lags(&state).await
    } else {
        Vec::new()
    };
    // Gaps are rare rows in SQLite; a scrape that cannot read them leaves the family out
    // rather than reporting zero.
    let missing = match crate::projector::load_gaps(&state.db.readers).await {
        Ok(gaps) => state
            .projections
            .iter()
            .map(|p| {
                let n = gaps
                    .iter()
                    .filter(|g| g.stream == p.stream.name)
                    .map(|g| g.events())
                    .sum();
                (p.stream.name, n)
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    let scrape = Scrape {
        lag: lags.iter().map(|l| (l.stream, l.lag)).collect(),
        missing,
        bus_connected,
        bus_connects: state.bus_events.connects.load(Ordering::Relaxed),
        bus_denied: state.bus_events.denied_total.load(Ordering::Relaxed),
        sse_open: state.limits.open() as u64,
        sse_deliveries: state.sse_counters.deliveries.load(Ordering::Relaxed),
        sse_resyncs: state.sse_counters.resyncs.load(Ordering::Relaxed),
        sse_snapshot_loads: state.hub.view_loads(),
        durations_reads: state.durations.reads(),
        // Left out (rather than reported as nothing) when the database cannot be read.
        retention: crate::projector::prune::survey(
            &state.db.readers,
            &state.read_models,
            &state.retention,
            &state.pruning,
        )
        .await
        .unwrap_or_default(),
    };
    (
        [(header::CONTENT_TYPE, OPENMETRICS)],
        state.telemetry.encode(scrape),
    )
}

/// Times every request by route template (never the raw path: ids would make a series
/// each), method and status class.
pub async fn track_http(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    state.telemetry.observe_http(
        HttpLabels {
            route,
            method,
            status: status_class(response.status().as_u16()),
        },
        started.elapsed(),
    );
    response
}
