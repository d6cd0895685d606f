//! The axum HTTP API: one module per resource, one error type, one state.

pub mod alerts;
pub mod auth;
pub mod dead_letters;
pub mod error;
pub mod fleet;
pub mod health;
pub mod params;
pub mod results;
pub mod sse;
pub mod topologies;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::db::Db;
use crate::projector::Progress;
use auth::Authenticator;
use error::ApiError;

/// Largest request body accepted anywhere.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Cheap handles every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Read-only pool (handlers never take the writer).
    pub db: Db,
    /// NATS client, for connection state.
    pub nats: async_nats::Client,
    /// JetStream context, for stream info and publishing.
    pub js: jetstream::Context,
    /// Token verification.
    pub auth: Arc<Authenticator>,
    /// Progress of every running projection.
    pub projections: Arc<[Progress]>,
    /// `/ready` lag threshold.
    pub ready_max_lag: u64,
    /// How long a bus look-up from a request may take.
    pub bus_timeout: Duration,
    /// Live fan-out of committed topology events.
    pub hub: Arc<crate::live::Hub>,
    /// SSE tickets.
    pub tickets: Arc<sse::Tickets>,
    /// SSE stream caps.
    pub limits: Arc<sse::StreamLimits>,
    /// SSE timing and limits.
    pub sse: crate::config::SseConfig,
    /// `?wait=true` bound for enqueued mutations.
    pub mutation_wait: Duration,
    /// Alert providers go stale after this.
    pub alert_stale_after: Duration,
    /// Fleet health settings.
    pub fleet: Arc<crate::config::FleetConfig>,
    /// Recent JetStream facts for fleet health.
    pub bus_view: Arc<fleet::BusView>,
    /// Fires at shutdown; open streams end on it.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// One event for [`publish_all`]: subject, `Nats-Msg-Id` and envelope bytes.
pub struct Outgoing {
    /// Subject to publish on.
    pub subject: String,
    /// Deduplication id (also the envelope id).
    pub msg_id: String,
    /// The envelope.
    pub body: Vec<u8>,
}

/// Publishes events to JetStream with their `Nats-Msg-Id`, acks pipelined, and waits for
/// every ack within the bus timeout; 503 when the bus does not confirm them all.
pub async fn publish_all(
    state: &AppState,
    events: Vec<Outgoing>,
) -> Result<Vec<jetstream::publish::PublishAck>, ApiError> {
    let publish = async {
        let mut pending = Vec::with_capacity(events.len());
        for e in events {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", e.msg_id.as_str());
            pending.push(
                state
                    .js
                    .publish_with_headers(e.subject, headers, e.body.into())
                    .await?,
            );
        }
        let mut acks = Vec::with_capacity(pending.len());
        for ack in pending {
            acks.push(ack.await?);
        }
        Ok::<_, async_nats::error::Error<jetstream::context::PublishErrorKind>>(acks)
    };
    tokio::time::timeout(state.bus_timeout, publish)
        .await
        .map_err(|_| ApiError::Unavailable("the bus did not acknowledge in time".into()))?
        .map_err(|e| ApiError::Unavailable(format!("publishing to the bus failed: {e}")))
}

/// Builds the whole HTTP surface; `cors_origins` empty means no CORS headers.
pub fn router(state: AppState, cors_origins: &[String]) -> Router {
    let api = Router::new()
        .route("/results/stats", get(results::stats))
        .route("/dead-letters", get(dead_letters::list))
        .route("/topologies", get(topologies::list))
        .route("/topologies/{tid}", get(topologies::get))
        .route(
            "/topologies/{tid}/mutations",
            get(topologies::mutations).post(topologies::enqueue),
        )
        .route("/topologies/{tid}/events", get(sse::events))
        .route("/auth/sse-ticket", post(sse::ticket))
        .route("/health/fleet", get(fleet::fleet_health))
        .route("/results/durations", get(fleet::durations))
        .route("/agents", get(fleet::agents))
        .route("/agents/{id}", get(fleet::agent))
        .route("/system/stats/history", get(fleet::system_history))
        .route("/system/stats/top", get(fleet::top))
        .route(
            "/workloads/{wid}/stats/history",
            get(fleet::workload_history),
        )
        .route("/workloads/{wid}/deploys", get(fleet::deploys))
        .route("/workloads/{wid}/rollback", post(fleet::rollback))
        .route("/alerts/dossier", get(alerts::dossier))
        .route("/alerts/coverage", get(alerts::coverage))
        .route("/alerts/recurrence", get(alerts::recurrence))
        .route("/alerts/recent", get(alerts::recent))
        .route("/alerts/freshness", get(alerts::freshness))
        .route(
            "/alerts/provider-heartbeat",
            post(alerts::provider_heartbeat),
        )
        .route(
            "/alerts/webhook/alertmanager",
            post(alerts::alertmanager_webhook),
        );
    let cors = (!cors_origins.is_empty()).then(|| {
        let origins: Vec<HeaderValue> = cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
            ])
    });
    Router::new()
        .route("/topologies/{tid}/events", get(sse::events))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .nest("/api/v1", api)
        .fallback(|| async { ApiError::NotFound("route".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(
            // The span names the path only: query strings may carry credentials.
            // 5xx answers such as /ready's 503 are expected states, not operator alarms; real
            // internal errors are logged by `ApiError` itself.
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path())
                })
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(tower::util::option_layer(cors))
        .with_state(state)
}
