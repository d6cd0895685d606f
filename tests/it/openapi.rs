//! The OpenAPI description: valid OpenAPI 3.1 (checked against the specification's own JSON
//! Schema), complete, and true — every read endpoint's real answers, after demo traffic,
//! match the schema the document gives for their status.

use orrery::natsd::NatsServer;
use orrery::token::Role;
use serde_json::{json, Value};

use crate::helpers::*;

pub async fn document(app: &TestApp) -> Value {
    let res = app.get("/api/v1/openapi.json", None).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

pub fn errors(schema: &Value, instance: &Value) -> Vec<String> {
    let validator = jsonschema::validator_for(schema).expect("a valid JSON Schema");
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[tokio::test]
async fn the_description_is_valid_openapi_3_1_and_covers_every_route() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    let meta: Value =
        serde_json::from_str(include_str!("../fixtures/openapi-3.1-schema.json")).unwrap();
    let problems = errors(&meta, &doc);
    assert!(problems.is_empty(), "not valid OpenAPI 3.1: {problems:#?}");

    let operations = [
        ("get", "/health"),
        ("get", "/ready"),
        ("get", "/metrics"),
        ("get", "/api/v1/openapi.json"),
        ("get", "/api/v1/health/fleet"),
        ("get", "/api/v1/results/stats"),
        ("get", "/api/v1/results/durations"),
        ("get", "/api/v1/dead-letters"),
        ("get", "/api/v1/admin/digest"),
        ("get", "/api/v1/topologies"),
        ("get", "/api/v1/topologies/{tid}"),
        ("get", "/api/v1/topologies/{tid}/mutations"),
        ("post", "/api/v1/topologies/{tid}/mutations"),
        ("get", "/api/v1/topologies/{tid}/events"),
        ("post", "/api/v1/auth/sse-ticket"),
        ("post", "/api/v1/auth/login"),
        ("get", "/api/v1/auth/whoami"),
        ("get", "/api/v1/auth/providers"),
        ("get", "/api/v1/agents"),
        ("get", "/api/v1/agents/{id}"),
        ("get", "/api/v1/system/stats/history"),
        ("get", "/api/v1/system/stats/top"),
        ("get", "/api/v1/workloads"),
        ("get", "/api/v1/workloads/{wid}/stats/history"),
        ("get", "/api/v1/workloads/{wid}/deploys"),
        ("post", "/api/v1/workloads/{wid}/rollback"),
        ("get", "/api/v1/alerts/dossier"),
        ("get", "/api/v1/alerts/coverage"),
        ("get", "/api/v1/alerts/recurrence"),
        ("get", "/api/v1/alerts/recurrence/work-item/preview"),
        ("post", "/api/v1/alerts/recurrence/work-item/dry-run"),
        ("post", "/api/v1/alerts/recurrence/work-item/handoff"),
        ("get", "/api/v1/alerts/recurrence/work-item/history"),
        ("get", "/api/v1/alerts/recent"),
        ("get", "/api/v1/alerts/freshness"),
        ("post", "/api/v1/alerts/provider-heartbeat"),
        ("post", "/api/v1/alerts/webhook/alertmanager"),
    ];
    let open = [
        "/health",
        "/ready",
        "/metrics",
        "/api/v1/openapi.json",
        "/api/v1/auth/login",
        "/api/v1/auth/providers",
    ];
    let mut count = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            count += 1;
            assert!(
                operations.contains(&(method.as_str(), path.as_str())),
                "undeclared {method} {path}"
            );
            // Every protected operation names the role it needs; errors have a body.
            let roles = &op["security"][0]["bearer"];
            if open.contains(&path.as_str()) {
                assert!(op.get("security").is_none(), "{method} {path}");
            } else {
                let role = roles[0]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path}: no role"));
                assert!(
                    ["viewer", "operator", "admin"].contains(&role),
                    "{method} {path}"
                );
                assert!(
                    op["responses"]["401"].is_object(),
                    "{method} {path}: no 401"
                );
            }
            // Every limit is bounded.
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["name"] == "limit" {
                    assert!(
                        p["schema"]["minimum"].is_number() && p["schema"]["maximum"].is_number(),
                        "{method} {path}: unbounded limit"
                    );
                }
            }
        }
    }
    assert_eq!(count, operations.len());

    // Links: every one names an operation of the document and parameters it takes, so a
    // client or a stateful fuzzer walks from a list to its items with ids that exist.
    let ops: Vec<&Value> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .collect();
    let by_id = |id: &str| {
        ops.iter()
            .find(|op| op["operationId"] == id)
            .unwrap_or_else(|| panic!("a link names {id}, which is not in the document"))
    };
    let mut links = 0;
    let mut targets = std::collections::BTreeSet::new();
    for op in &ops {
        for response in op["responses"].as_object().unwrap().values() {
            for (name, link) in response["links"].as_object().into_iter().flatten() {
                links += 1;
                let target = by_id(link["operationId"].as_str().unwrap());
                targets.insert(link["operationId"].as_str().unwrap().to_owned());
                for param in link["parameters"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    assert!(
                        target["parameters"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|p| p["name"] == param.as_str()),
                        "link {name} of {}: {} takes no parameter {param}",
                        op["operationId"],
                        link["operationId"]
                    );
                }
            }
        }
    }
    assert!(links >= 15, "{links} links");
    // The operations that need an id from another answer are all reached by a link.
    for id in [
        "get_topologies_tid",
        "get_topologies_tid_mutations",
        "get_workloads_wid_deploys",
        "get_workloads_wid_stats_history",
        "get_work_item_preview",
        "get_work_item_history",
        "post_work_item_dry_run",
        "post_work_item_handoff",
        "post_workloads_wid_rollback",
        "get_agents_id",
    ] {
        assert!(targets.contains(id), "no link reaches {id}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

/// The schema the document gives `method path` for `status`, with the components beside it
/// so that its `$ref`s resolve.
pub fn response_schema(doc: &Value, method: &str, path: &str, status: u16) -> Value {
    let op = &doc["paths"][path][method];
    let content = &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(
        content.is_object(),
        "{method} {path} documents no JSON body for {status}"
    );
    let mut schema = content.clone();
    schema["components"] = doc["components"].clone();
    schema
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_of_the_read_endpoints_match_the_document() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    // Traffic on every subject, from the demo, so that no list is empty.
    app.demo_traffic(&nats.url()).await;
    // A dead letter, so that its shape is checked too.
    let js = jetstream(&nats).await;
    publish_raw(&js, "result.traffic.a1", "bad", b"{ nope".to_vec())
        .await
        .await
        .unwrap();
    // A provider heartbeat, newest in the dossier: it belongs to no recurrence group.
    let heartbeat = json!({"id": "hb-openapi", "data": {"provider_event_id": "heartbeat-openapi",
        "stage": "heartbeat", "alertname": "SourceProviderHeartbeat", "severity": "info",
        "labels": {"synthetic": "true"}}});
    publish_raw(
        &js,
        "alert.signoz.shop",
        "hb-openapi",
        heartbeat.to_string().into_bytes(),
    )
    .await
    .await
    .unwrap();
    app.wait_caught_up().await;

    let doc = document(&app).await;
    let reads: [(&str, &str); 26] = [
        ("/health", "/health"),
        ("/ready", "/ready"),
        ("/api/v1/openapi.json", "/api/v1/openapi.json"),
        ("/api/v1/health/fleet", "/api/v1/health/fleet"),
        (
            "/api/v1/results/stats",
            "/api/v1/results/stats?since=1h&success=false",
        ),
        (
            "/api/v1/results/durations",
            "/api/v1/results/durations?since=2020-01-01T00:00:00Z",
        ),
        ("/api/v1/dead-letters", "/api/v1/dead-letters"),
        ("/api/v1/admin/digest", "/api/v1/admin/digest"),
        ("/api/v1/topologies", "/api/v1/topologies"),
        ("/api/v1/topologies/{tid}", "/api/v1/topologies/lab-eu"),
        (
            "/api/v1/topologies/{tid}/mutations",
            "/api/v1/topologies/lab-eu/mutations?limit=500",
        ),
        ("/api/v1/auth/whoami", "/api/v1/auth/whoami"),
        ("/api/v1/auth/providers", "/api/v1/auth/providers"),
        ("/api/v1/agents", "/api/v1/agents?limit=2"),
        ("/api/v1/agents/{id}", "/api/v1/agents/agent-0000"),
        (
            "/api/v1/system/stats/history",
            "/api/v1/system/stats/history?window=1h",
        ),
        (
            "/api/v1/system/stats/top",
            "/api/v1/system/stats/top?by=memory",
        ),
        ("/api/v1/workloads", "/api/v1/workloads"),
        (
            "/api/v1/workloads/{wid}/stats/history",
            "/api/v1/workloads/shop/stats/history",
        ),
        (
            "/api/v1/workloads/{wid}/deploys",
            "/api/v1/workloads/shop/deploys",
        ),
        (
            "/api/v1/alerts/dossier",
            "/api/v1/alerts/dossier?project_id=shop&limit=50",
        ),
        ("/api/v1/alerts/coverage", "/api/v1/alerts/coverage"),
        (
            "/api/v1/alerts/recurrence",
            "/api/v1/alerts/recurrence?limit=300",
        ),
        ("/api/v1/alerts/recent", "/api/v1/alerts/recent?limit=100"),
        ("/api/v1/alerts/freshness", "/api/v1/alerts/freshness"),
        ("/api/v1/results/stats", "/api/v1/results/stats?since=nope"),
    ];
    // A work item of the demo's recurring alerts, previewed.
    let work_item = app.first_work_item().await;
    let preview = format!("/api/v1/alerts/recurrence/work-item/preview?work_item_id={work_item}");
    let reads = reads.into_iter().chain([
        (
            "/api/v1/alerts/recurrence/work-item/preview",
            preview.as_str(),
        ),
        (
            "/api/v1/alerts/recurrence/work-item/preview",
            "/api/v1/alerts/recurrence/work-item/preview?work_item_id=wi_000000000000000000000000",
        ),
    ]);
    for (template, url) in reads {
        let res = app.get(url, Some(Role::Admin)).await;
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        let schema = response_schema(&doc, "get", template, status);
        let problems = errors(&schema, &body);
        assert!(
            problems.is_empty(),
            "GET {url} ({status}) differs from the document: {problems:#?}\n{body}"
        );
    }

    // The paged agents answer has a cursor; a missing agent and bad credentials are
    // documented errors too.
    for (url, role, status) in [
        ("/api/v1/agents/nobody", Some(Role::Admin), 404),
        ("/api/v1/topologies/nowhere", Some(Role::Viewer), 404),
        ("/api/v1/dead-letters", Some(Role::Viewer), 403),
        ("/api/v1/agents", None, 401),
    ] {
        let res = app.get(url, role).await;
        assert_eq!(res.status().as_u16(), status, "{url}");
        let body: Value = res.json().await.unwrap();
        let template = match url {
            "/api/v1/agents/nobody" => "/api/v1/agents/{id}",
            "/api/v1/topologies/nowhere" => "/api/v1/topologies/{tid}",
            other => other,
        };
        let problems = errors(&response_schema(&doc, "get", template, status), &body);
        assert!(
            problems.is_empty(),
            "GET {url} ({status}): {problems:#?}\n{body}"
        );
    }

    // And the writes' answers, once each.
    let res = app
        .post(
            "/api/v1/topologies/lab-eu/mutations?wait=true",
            Some(Role::Operator),
            json!({"op": "add_decky", "spec": {"decky": "x"}}).to_string(),
        )
        .await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    let problems = errors(
        &response_schema(&doc, "post", "/api/v1/topologies/{tid}/mutations", 202),
        &body,
    );
    assert!(problems.is_empty(), "enqueue: {problems:#?}\n{body}");
    let res = app
        .post(
            "/api/v1/alerts/provider-heartbeat",
            Some(Role::Operator),
            json!({"project_id": "shop", "providers": ["sentry"]}).to_string(),
        )
        .await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    let problems = errors(
        &response_schema(&doc, "post", "/api/v1/alerts/provider-heartbeat", 202),
        &body,
    );
    assert!(problems.is_empty(), "heartbeat: {problems:#?}\n{body}");

    // The work item's dry-run, its handoff (or the 409 that says why not) and its history.
    let item = json!({ "work_item_id": work_item }).to_string();
    for (path, status) in [
        ("/api/v1/alerts/recurrence/work-item/dry-run", Some(202)),
        ("/api/v1/alerts/recurrence/work-item/handoff", None),
    ] {
        let res = app.post(path, Some(Role::Operator), item.clone()).await;
        let got = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        if let Some(status) = status {
            assert_eq!(got, status, "{path}: {body}");
        }
        let problems = errors(&response_schema(&doc, "post", path, got), &body);
        assert!(problems.is_empty(), "{path} ({got}): {problems:#?}\n{body}");
    }
    let path = "/api/v1/alerts/recurrence/work-item/history";
    let body = app
        .get_json(&format!("{path}?work_item_id={work_item}"), Role::Viewer)
        .await;
    assert!(!body["entries"].as_array().unwrap().is_empty(), "{body}");
    let problems = errors(&response_schema(&doc, "get", path, 200), &body);
    assert!(problems.is_empty(), "history: {problems:#?}\n{body}");
}
