//! The OpenAPI 3.1 description, generated from the handlers' `#[utoipa::path]` annotations
//! as the router registers them (utoipa-axum: each route is written once) and served at
//! `GET /api/v1/openapi.json`.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

/// The document's frame: what the paths are added to.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Orrery",
        description = "NATS JetStream in, live SQLite read models, HTTP and SSE out. \
            Every route but /health, /ready, /metrics, /api/v1/auth/login and \
            /api/v1/auth/providers needs a JWT \
            (`Authorization: Bearer`); the roles an operation needs are listed in its \
            security requirement (viewer < operator < admin). Reads accept \
            `Orrery-Min-Seq: STREAM:seq[,…]`; writes answer `Orrery-Seq: STREAM:seq`.",
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "liveness, readiness, fleet health, metrics"),
        (name = "results", description = "execution results"),
        (name = "topologies", description = "topologies, mutations and their live stream"),
        (name = "fleet", description = "agents and resource metrics"),
        (name = "deploys", description = "workloads, the deploy ledger and rollback"),
        (name = "alerts", description = "the redacted alert dossier and alert intake"),
        (name = "auth", description = "sign-in, identity and stream tickets"),
        (name = "admin", description = "operating the replica"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut Document) {
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".into());
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

static DOCUMENT: OnceLock<String> = OnceLock::new();

/// Keeps the generated document for [`document`] (the first router built wins: every
/// router of a process registers the same routes).
pub fn publish(doc: &Document) {
    let _ = DOCUMENT.get_or_init(|| doc.to_pretty_json().unwrap_or_else(|_| "{}".into()));
}

/// `GET /api/v1/openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", operation_id = "get_openapi_json", tag = "health",
    responses((status = 200, description = "the OpenAPI 3.1 description of this API",
        content_type = "application/json", body = Object)))]
pub async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.get().cloned().unwrap_or_else(|| "{}".into()),
    )
}
