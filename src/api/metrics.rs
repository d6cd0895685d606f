//! `GET /metrics`: Prometheus text exposition of the projector counters and the live stream.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::api::AppState;
use crate::bus;

/// `GET /metrics`: Prometheus text exposition of the projector counters.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::with_capacity(2048);
    let families: [(&str, &str, &str); 6] = [
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
            "orrery_projection_stalls_total",
            "counter",
            "Consumers reopened after going silent with messages left in the stream.",
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
                4 => c.stalls.load(Ordering::Relaxed),
                _ => *p.checkpoint.borrow(),
            };
            let _ = writeln!(out, "{name}{{stream=\"{}\"}} {value}", p.stream.name);
        }
    }
    // Gaps are rare rows in SQLite; a scrape that cannot read them leaves the family out
    // rather than reporting zero.
    if let Ok(gaps) = crate::projector::load_gaps(&state.db.readers).await {
        let _ = writeln!(
            out,
            "# HELP orrery_projection_missing_events Messages a projection never saw because the stream no longer held them (see /ready).\n# TYPE orrery_projection_missing_events gauge"
        );
        for p in state.projections.iter() {
            let missing: u64 = gaps
                .iter()
                .filter(|g| g.stream == p.stream.name)
                .map(|g| g.events())
                .sum();
            let _ = writeln!(
                out,
                "orrery_projection_missing_events{{stream=\"{}\"}} {missing}",
                p.stream.name
            );
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
    let _ = writeln!(
        out,
        "# HELP orrery_sse_snapshot_loads_total Snapshots read from SQLite (a connect that finds the topology's view in memory reads none).\n# TYPE orrery_sse_snapshot_loads_total counter\norrery_sse_snapshot_loads_total {}",
        state.hub.view_loads()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
