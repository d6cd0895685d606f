//! The axum HTTP API: one module per URL resource (named after its path), one error type,
//! one extractor module, one state. [`router`] is the whole surface.

pub mod admin;
pub mod agents;
pub mod alerts;
pub mod auth;
pub mod consistency;
pub mod dead_letters;
pub mod error;
pub mod extract;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod results;
pub mod sse;
pub mod system;
pub mod topologies;
pub mod workloads;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, publish::PublishAck};
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::routing::get;
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::bus::publish::{self, Outgoing};
use crate::config::Cors;
use crate::db::Db;
use crate::projector::Progress;
use crate::token::Authenticator;
use error::{ApiError, ApiResult};

/// Largest request body accepted anywhere.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Most points one stats history answer holds.
pub const MAX_HISTORY_POINTS: i64 = 10_000;

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
    /// The read models and their tables, for the digest.
    pub read_models: Arc<[crate::digest::ReadModel]>,
    /// `/ready` lag threshold.
    pub ready_max_lag: u64,
    /// How long a bus look-up from a request may take.
    pub bus_timeout: Duration,
    /// Live fan-out of committed topology events.
    pub hub: Arc<crate::live::Hub>,
    /// Durations of whole hours, kept between `/results/durations` requests.
    pub durations: Arc<crate::projections::results::durations::DurationCache>,
    /// Recurrence pages, kept between commits of the alert read models.
    pub recurrence_pages: Arc<alerts::pages::PageCache>,
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
    /// How long each read model keeps its rows.
    pub retention: crate::retention::Retention,
    /// What the pruner last saw, per read model.
    pub pruning: Arc<crate::projector::prune::Report>,
    /// Recent JetStream facts for fleet health.
    pub bus_view: Arc<health::BusView>,
    /// Fires at shutdown; open streams end on it.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The metrics registry (`/metrics`).
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Live-stream counters.
    pub sse_counters: Arc<sse::SseCounters>,
    /// Connections to NATS made since start, and the permissions the server denied.
    pub bus_events: Arc<crate::bus::BusEvents>,
    /// Sign-in links already exchanged.
    pub logins: Arc<auth::UsedLogins>,
    /// Fires when shutdown is requested, a drain delay before `shutdown`: `/ready` says 503.
    pub stopping: tokio_util::sync::CancellationToken,
}

impl AppState {
    /// Publishes events the API originates and waits for every ack (bounded by
    /// `bus_timeout`); 503 when the bus does not confirm them all.
    pub async fn publish(&self, events: Vec<Outgoing>) -> ApiResult<Vec<PublishAck>> {
        Ok(publish::publish_all(&self.js, &self.bus_events, self.bus_timeout, events).await?)
    }

    /// [`Self::publish`] for one event.
    pub async fn publish_one(&self, event: Outgoing) -> ApiResult<PublishAck> {
        Ok(publish::publish_one(&self.js, &self.bus_events, self.bus_timeout, event).await?)
    }
}

/// The routes of the documented surface and their OpenAPI description (each route is
/// written once: utoipa-axum derives the document from the routes as registered).
fn documented_routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let api = OpenApiRouter::<AppState>::new()
        .routes(routes!(health::fleet))
        .routes(routes!(results::stats))
        .routes(routes!(results::durations))
        .routes(routes!(dead_letters::list))
        .routes(routes!(admin::digest))
        .routes(routes!(topologies::list))
        .routes(routes!(topologies::get))
        .routes(routes!(topologies::mutations, topologies::enqueue))
        .routes(routes!(sse::events))
        .routes(routes!(sse::ticket))
        .routes(routes!(auth::login))
        .routes(routes!(auth::whoami))
        .routes(routes!(auth::providers))
        .routes(routes!(agents::list))
        .routes(routes!(agents::get))
        .routes(routes!(system::history))
        .routes(routes!(system::top))
        .routes(routes!(workloads::list))
        .routes(routes!(workloads::history))
        .routes(routes!(workloads::deploys))
        .routes(routes!(workloads::rollback))
        .routes(routes!(alerts::queries::dossier))
        .routes(routes!(alerts::queries::coverage))
        .routes(routes!(alerts::queries::recurrence))
        .routes(routes!(alerts::work_items::preview))
        .routes(routes!(alerts::handoff::dry_run))
        .routes(routes!(alerts::handoff::handoff))
        .routes(routes!(alerts::handoff::history))
        .routes(routes!(alerts::queries::recent))
        .routes(routes!(alerts::queries::freshness))
        .routes(routes!(alerts::intake::provider_heartbeat))
        .routes(routes!(alerts::intake::alertmanager_webhook))
        .routes(routes!(openapi::document));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(metrics::metrics))
        .nest("/api/v1", api)
        .split_for_parts()
}

/// The OpenAPI description as served at `/api/v1/openapi.json` (links included), without a
/// running server: for tests that validate answers against it.
pub fn openapi_document() -> serde_json::Value {
    let (_, doc) = documented_routes();
    openapi::with_links(&doc)
}

/// Builds the whole HTTP surface, with the CORS policy `cors`.
pub fn router(state: AppState, cors: &Cors) -> Router {
    let (routes, doc) = documented_routes();
    openapi::publish(&doc);
    let allow = match cors {
        Cors::Off => None,
        Cors::Any => Some(AllowOrigin::any()),
        // Every origin was validated when the configuration was resolved.
        Cors::Origins(origins) => Some(AllowOrigin::list(
            origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()),
        )),
    };
    let cors = allow.map(|allow| {
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
            ])
    });
    let router = routes
        // The live stream also answers outside /api/v1 (documented there).
        .route("/topologies/{tid}/events", get(sse::events))
        .route(
            "/",
            get({
                let state = state.clone();
                move |headers: axum::http::HeaderMap| {
                    let origins = auth::provider_origins(&state);
                    async move { crate::dashboard::index(&headers, &origins) }
                }
            }),
        )
        .route("/api/docs", get(crate::dashboard::docs))
        .route("/assets/{*path}", get(crate::dashboard::asset))
        .fallback(|| async { ApiError::NotFound("route".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            consistency::wait_for_min_seq,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track_http,
        ))
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
        .with_state(state);
    guard_panics(router)
}

/// A handler that panics answers 500 with the usual error body (and a log line) instead of
/// dropping the connection; the server and every other request carry on.
fn guard_panics(router: Router) -> Router {
    router.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        |panic: Box<dyn std::any::Any + Send>| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = what, "a request handler panicked");
            axum::response::IntoResponse::into_response(ApiError::Internal(anyhow::anyhow!(
                "handler panicked"
            )))
        },
    ))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_next_request_works() {
        let app = guard_panics(
            Router::new()
                .route(
                    "/boom",
                    get(|| async {
                        if true {
                            panic!("a handler bug");
                        }
                        "unreachable"
                    }),
                )
                .route("/fine", get(|| async { "fine" })),
        );
        let res = app
            .clone()
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "internal");
        let res = app
            .oneshot(Request::get("/fine").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
}
