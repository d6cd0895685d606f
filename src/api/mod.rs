//! The axum HTTP API: one module per resource, one error type, one state.

pub mod auth;
pub mod dead_letters;
pub mod error;
pub mod health;
pub mod params;
pub mod results;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::routing::get;
use axum::Router;
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
}

/// Builds the whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/results/stats", get(results::stats))
        .route("/dead-letters", get(dead_letters::list));
    Router::new()
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
        .with_state(state)
}
