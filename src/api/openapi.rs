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
/// router of a process registers the same routes), with its [`LINKS`].
pub fn publish(doc: &Document) {
    let _ = DOCUMENT.get_or_init(|| {
        serde_json::to_string_pretty(&with_links(doc)).unwrap_or_else(|_| "{}".into())
    });
}

/// The document as JSON, with its [`LINKS`] and its parameters finished.
pub fn with_links(doc: &Document) -> serde_json::Value {
    let mut value = serde_json::to_value(doc).unwrap_or_default();
    add_links(&mut value);
    finish_parameters(&mut value);
    value
}

/// The patterns shared by many parameters, each from the one constant its parser uses or
/// is tested against (an attribute can only hold a literal).
const SHARED_PATTERNS: [(&str, &str); 3] = [
    ("Orrery-Min-Seq", crate::api::consistency::MIN_SEQ_PATTERN),
    ("min_seq", crate::api::consistency::MIN_SEQ_PATTERN),
    ("window", crate::api::extract::WINDOW_PATTERN),
];

/// Gives parameters their [`SHARED_PATTERNS`], and takes `null` out of every parameter's
/// type: a header, query or path parameter is text or absent, never JSON null (utoipa types
/// an optional header `[string, null]`, which invites clients and fuzzers to send the text
/// `null`).
fn finish_parameters(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let params = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("parameters").and_then(|p| p.as_array_mut()))
        .flatten();
    for param in params {
        let name = param["name"].as_str().unwrap_or_default().to_owned();
        if let Some((_, pattern)) = SHARED_PATTERNS.iter().find(|(n, _)| *n == name) {
            param["schema"]["pattern"] = (*pattern).into();
        }
        let Some(types) = param.pointer_mut("/schema/type") else {
            continue;
        };
        if let Some(list) = types.as_array() {
            let kept: Vec<serde_json::Value> =
                list.iter().filter(|t| *t != "null").cloned().collect();
            *types = match kept.as_slice() {
                [one] => one.clone(),
                _ => kept.into(),
            };
        }
    }
}

/// A link of an answer to an operation that takes one of its ids: (name, target operation,
/// parameters, request body), each value a runtime expression.
type LinkSpec = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    Option<&'static [(&'static str, &'static str)]>,
);

/// From the answer (operation, status) to the operations that take its ids, so that a client
/// or a stateful fuzzer walks list → item → sub-resources with ids that exist.
const LINKS: &[(&str, &str, &[LinkSpec])] = &[
    (
        "get_topologies",
        "200",
        &[
            (
                "topology",
                "get_topologies_tid",
                &[("tid", "$response.body#/items/0/id")],
                None,
            ),
            (
                "mutations",
                "get_topologies_tid_mutations",
                &[("tid", "$response.body#/items/0/id")],
                None,
            ),
            (
                "enqueue",
                "post_topologies_tid_mutations",
                &[("tid", "$response.body#/items/0/id")],
                None,
            ),
        ],
    ),
    (
        "post_topologies_tid_mutations",
        "202",
        &[
            (
                "topology",
                "get_topologies_tid",
                &[("tid", "$request.path.tid")],
                None,
            ),
            (
                "mutations",
                "get_topologies_tid_mutations",
                &[("tid", "$request.path.tid")],
                None,
            ),
        ],
    ),
    (
        "get_agents",
        "200",
        &[(
            "agent",
            "get_agents_id",
            &[("id", "$response.body#/items/0/agent_id")],
            None,
        )],
    ),
    (
        "get_workloads",
        "200",
        &[
            (
                "deploys",
                "get_workloads_wid_deploys",
                &[("wid", "$response.body#/items/0/workload_id")],
                None,
            ),
            (
                "stats",
                "get_workloads_wid_stats_history",
                &[("wid", "$response.body#/items/0/workload_id")],
                None,
            ),
        ],
    ),
    (
        "get_workloads_wid_deploys",
        "200",
        &[(
            "rollback",
            "post_workloads_wid_rollback",
            &[("wid", "$request.path.wid")],
            Some(&[("deploy_id", "$response.body#/items/0/deploy_id")]),
        )],
    ),
    (
        "get_alerts_dossier",
        "200",
        &[(
            "event",
            "get_alerts_dossier",
            &[(
                "provider_event_id",
                "$response.body#/items/0/provider_event_id",
            )],
            None,
        )],
    ),
    (
        "get_alerts_recurrence",
        "200",
        &[
            (
                "preview",
                "get_work_item_preview",
                &[
                    ("work_item_id", "$response.body#/groups/0/work_item/id"),
                    ("project_id", "$response.body#/groups/0/latest/project_id"),
                    ("provider", "$response.body#/groups/0/provider"),
                ],
                None,
            ),
            (
                "history",
                "get_work_item_history",
                &[("work_item_id", "$response.body#/groups/0/work_item/id")],
                None,
            ),
            (
                "dry_run",
                "post_work_item_dry_run",
                &[],
                Some(&[
                    ("work_item_id", "$response.body#/groups/0/work_item/id"),
                    ("project_id", "$response.body#/groups/0/latest/project_id"),
                    ("provider", "$response.body#/groups/0/provider"),
                ]),
            ),
        ],
    ),
    (
        "post_work_item_dry_run",
        "202",
        &[
            (
                "history",
                "get_work_item_history",
                &[("work_item_id", "$response.body#/work_item_id")],
                None,
            ),
            (
                "handoff",
                "post_work_item_handoff",
                &[],
                Some(&[
                    ("work_item_id", "$response.body#/work_item_id"),
                    ("mode", "$response.body#/mode"),
                    ("project_id", "$response.body#/project_id"),
                    ("provider", "$request.body#/provider"),
                ]),
            ),
        ],
    ),
];

/// `name: expression` pairs as a JSON object.
fn expressions(pairs: &[(&str, &str)]) -> serde_json::Value {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Adds [`LINKS`] to the document's answers.
fn add_links(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for item in paths.values_mut() {
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|m| m.values_mut())
        {
            let id = op
                .get("operationId")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            for (_, status, links) in LINKS.iter().filter(|(from, _, _)| *from == id) {
                let Some(response) = op.pointer_mut(&format!("/responses/{status}")) else {
                    continue;
                };
                let mut map = serde_json::Map::new();
                for (name, target, params, body) in links.iter() {
                    let mut link = serde_json::json!({"operationId": target});
                    if !params.is_empty() {
                        link["parameters"] = expressions(params);
                    }
                    if let Some(body) = body {
                        link["requestBody"] = expressions(body);
                    }
                    map.insert((*name).to_owned(), link);
                }
                response["links"] = map.into();
            }
        }
    }
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
