//! Liveness, readiness and Prometheus metrics.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use futures::future::join_all;
use serde::Serialize;
use serde_json::json;

use crate::api::AppState;
use crate::bus;

/// `GET /health`: the process is up. Touches nothing else, so it never flaps with the bus.
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// One projection's position against its stream.
#[derive(Serialize, Debug)]
pub struct Lag {
    /// Stream name.
    pub stream: &'static str,
    /// Last committed sequence.
    pub checkpoint: u64,
    /// Last sequence in the stream (`null` when the stream could not be read).
    pub stream_last_seq: Option<u64>,
    /// `stream_last_seq - checkpoint`.
    pub lag: Option<u64>,
}

/// Reads every projection's lag, asking JetStream for the streams' last sequences in parallel.
pub async fn lags(state: &AppState) -> Vec<Lag> {
    let lookups = state.projections.iter().map(|p| async move {
        let checkpoint = *p.checkpoint.borrow();
        let last = tokio::time::timeout(state.bus_timeout, async {
            let stream = state.js.get_stream(p.stream.name).await.ok()?;
            Some(stream.cached_info().state.last_sequence)
        })
        .await
        .ok()
        .flatten();
        Lag {
            stream: p.stream.name,
            checkpoint,
            stream_last_seq: last,
            lag: last.map(|l| l.saturating_sub(checkpoint)),
        }
    });
    join_all(lookups).await
}

/// `GET /ready`: 200 when the database answers, the bus is connected and every projection is
/// within `ready_max_lag` of its stream; 503 naming the reason otherwise.
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let mut reasons = Vec::new();
    if let Err(e) = sqlx::query("SELECT 1").execute(&state.db.readers).await {
        reasons.push(format!("database: {e}"));
    }
    let connected = bus::is_connected(&state.nats);
    if !connected {
        reasons.push("bus: not connected to NATS".to_owned());
    }
    let projections = if connected {
        lags(&state).await
    } else {
        Vec::new()
    };
    for p in &projections {
        match p.lag {
            None => reasons.push(format!("stream {} could not be read", p.stream)),
            Some(lag) if lag > state.ready_max_lag => reasons.push(format!(
                "projection {} lags by {lag} messages (threshold {})",
                p.stream, state.ready_max_lag
            )),
            Some(_) => {}
        }
    }
    let (status, word) = if reasons.is_empty() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    (
        status,
        Json(json!({"status": word, "reasons": reasons, "projections": projections})),
    )
}

/// `GET /metrics`: Prometheus text exposition of the projector counters.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::with_capacity(2048);
    let families: [(&str, &str, &str); 5] = [
        (
            "orrery_projected_messages_total",
            "counter",
            "Messages whose effect was committed.",
        ),
        (
            "orrery_dead_letters_total",
            "counter",
            "Messages stored in dead_letters.",
        ),
        (
            "orrery_projection_batches_total",
            "counter",
            "Committed batches.",
        ),
        (
            "orrery_projection_errors_total",
            "counter",
            "Failed projection steps (retried).",
        ),
        (
            "orrery_projection_checkpoint",
            "gauge",
            "Last committed stream sequence.",
        ),
    ];
    for (i, (name, kind, help)) in families.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for p in state.projections.iter() {
            let c = &p.counters;
            let value = match i {
                0 => c.messages.load(Ordering::Relaxed),
                1 => c.dead_letters.load(Ordering::Relaxed),
                2 => c.batches.load(Ordering::Relaxed),
                3 => c.errors.load(Ordering::Relaxed),
                _ => *p.checkpoint.borrow(),
            };
            let _ = writeln!(out, "{name}{{stream=\"{}\"}} {value}", p.stream.name);
        }
    }
    let _ = writeln!(
        out,
        "# HELP orrery_bus_connected 1 while connected to NATS.\n# TYPE orrery_bus_connected gauge\norrery_bus_connected {}",
        u8::from(bus::is_connected(&state.nats))
    );
    let _ = writeln!(
        out,
        "# HELP orrery_sse_streams_open Live streams open now.\n# TYPE orrery_sse_streams_open gauge\norrery_sse_streams_open {}",
        state.limits.open()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
