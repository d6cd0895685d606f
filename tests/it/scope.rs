//! Tokens scoped to some projects and topologies: every operation of the OpenAPI document,
//! walked with such a token over the demo's traffic, returns nothing outside the scope, and
//! refuses what lies outside with the same 404 as what does not exist.

use std::collections::BTreeSet;

use orrery::config::Secret;
use orrery::natsd::NatsServer;
use orrery::token::{mint_login_scoped, mint_scoped, Claims, Role};
use serde_json::{json, Value};

use crate::helpers::*;

/// The scope: one of the demo's three projects and one of its three topologies.
const PROJECT: &str = "shop";
const OUTSIDE_PROJECT: &str = "api";
const TOPOLOGY: &str = "lab-eu";
const OUTSIDE_TOPOLOGY: &str = "lab-us";

fn scoped_claims(role: Role) -> Claims {
    let mut c = Claims::new("scoped", role, 0);
    c.projects = Some(vec![PROJECT.into()]);
    c.topologies = Some(vec![TOPOLOGY.into()]);
    c
}

fn scoped(role: Role) -> String {
    mint_scoped(&Secret::new(SECRET), &scoped_claims(role), 3600).unwrap()
}

/// Every `project_id` and `topology_id` in an answer, and the `id`s of a topology list.
fn ids(v: &Value, key: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == key {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_owned());
                    }
                }
                ids(v, key, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| ids(i, key, out)),
        _ => {}
    }
}

/// One request of the walk and what it must answer.
struct Case {
    method: &'static str,
    url: String,
    body: Option<Value>,
    status: u16,
}

fn get(url: impl Into<String>, status: u16) -> Case {
    Case {
        method: "GET",
        url: url.into(),
        body: None,
        status,
    }
}

fn post(url: impl Into<String>, body: Value, status: u16) -> Case {
    Case {
        method: "POST",
        url: url.into(),
        body: Some(body),
        status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_token_sees_only_its_projects_and_topologies_on_every_route() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    app.demo_traffic(&nats.url()).await;

    // Work items inside and outside the scope, as an unscoped admin sees them.
    let groups = app
        .get_json("/api/v1/alerts/recurrence?limit=300", Role::Admin)
        .await;
    let work_item = |inside: bool| {
        groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| (g["latest"]["project_id"] == PROJECT) == inside)
            .find_map(|g| g["work_item"]["id"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("the demo made no work item (inside: {inside})"))
    };
    let (mine, theirs) = (work_item(true), work_item(false));
    let all_projects: BTreeSet<String> = {
        let mut v = Vec::new();
        ids(&groups, "project_id", &mut v);
        v.into_iter().collect()
    };
    assert!(all_projects.len() > 1, "{all_projects:?}");

    let wi = |id: &str| json!({"work_item_id": id, "mode": "manual"});
    let cases = |method: &str, path: &str| -> Vec<Case> {
        let tid_path = |tid: &str| path.replace("{tid}", tid);
        match (method, path) {
            // Open, or about the caller: nothing of any project or topology.
            ("get", "/health" | "/ready" | "/metrics" | "/api/v1/openapi.json")
            | ("get", "/api/v1/auth/providers" | "/api/v1/auth/whoami") => {
                vec![get(path, 200)]
            }
            // Fleet-wide facts without a project or topology in their events.
            ("get", "/api/v1/health/fleet") => vec![get(path, 200)],
            ("get", "/api/v1/results/stats") => vec![get(format!("{path}?since=1h"), 200)],
            ("get", "/api/v1/results/durations" | "/api/v1/agents" | "/api/v1/workloads") => {
                vec![get(path, 200)]
            }
            ("get", "/api/v1/agents/{id}") => vec![get("/api/v1/agents/no-such-agent", 404)],
            ("get", "/api/v1/system/stats/history" | "/api/v1/system/stats/top") => {
                vec![get(path, 200)]
            }
            (
                "get",
                "/api/v1/workloads/{wid}/stats/history" | "/api/v1/workloads/{wid}/deploys",
            ) => {
                vec![get(path.replace("{wid}", "shop"), 200)]
            }
            // Whole-fleet admin routes: no scoped token, whatever its role.
            ("get", "/api/v1/dead-letters" | "/api/v1/admin/digest") => vec![get(path, 403)],
            ("post", "/api/v1/workloads/{wid}/rollback") => vec![post(
                path.replace("{wid}", "shop"),
                json!({"deploy_id": "x"}),
                403,
            )],
            // Topologies.
            ("get", "/api/v1/topologies") => vec![get(path, 200)],
            ("get", "/api/v1/topologies/{tid}" | "/api/v1/topologies/{tid}/mutations") => vec![
                get(tid_path(TOPOLOGY), 200),
                get(tid_path(OUTSIDE_TOPOLOGY), 404),
            ],
            ("get", "/api/v1/topologies/{tid}/events") => {
                vec![get(tid_path(OUTSIDE_TOPOLOGY), 404)]
            }
            ("post", "/api/v1/topologies/{tid}/mutations") => vec![
                post(tid_path(TOPOLOGY), json!({"op": "add", "spec": {}}), 202),
                post(
                    tid_path(OUTSIDE_TOPOLOGY),
                    json!({"op": "add", "spec": {}}),
                    404,
                ),
            ],
            ("post", "/api/v1/auth/sse-ticket") => vec![post(path, json!({}), 200)],
            ("post", "/api/v1/auth/login") => vec![],
            // Alerts: lists filtered, an outside project filtered like an empty one.
            (
                "get",
                "/api/v1/alerts/dossier"
                | "/api/v1/alerts/coverage"
                | "/api/v1/alerts/recurrence"
                | "/api/v1/alerts/recent"
                | "/api/v1/alerts/freshness",
            ) => vec![
                get(path, 200),
                get(format!("{path}?project_id={OUTSIDE_PROJECT}"), 200),
            ],
            ("get", "/api/v1/alerts/recurrence/work-item/preview") => vec![
                get(format!("{path}?work_item_id={mine}"), 200),
                get(format!("{path}?work_item_id={theirs}"), 404),
            ],
            ("get", "/api/v1/alerts/recurrence/work-item/history") => {
                vec![get(format!("{path}?work_item_id={theirs}"), 200)]
            }
            ("post", "/api/v1/alerts/recurrence/work-item/dry-run") => {
                vec![post(path, wi(&mine), 202), post(path, wi(&theirs), 404)]
            }
            ("post", "/api/v1/alerts/recurrence/work-item/handoff") => {
                vec![post(path, wi(&theirs), 404)]
            }
            ("post", "/api/v1/alerts/provider-heartbeat") => vec![
                post(
                    path,
                    json!({"project_id": PROJECT, "providers": ["sentry"]}),
                    202,
                ),
                post(
                    path,
                    json!({"project_id": OUTSIDE_PROJECT, "providers": ["sentry"]}),
                    404,
                ),
            ],
            ("post", "/api/v1/alerts/webhook/alertmanager") => {
                let body = json!({"version": "4", "status": "firing", "receiver": "orrery",
                    "groupKey": "g", "alerts": [{"status": "firing", "labels": {"alertname": "X"},
                    "annotations": {}, "startsAt": "2026-01-01T00:00:00Z", "fingerprint": "f1"}]});
                vec![
                    post(format!("{path}?project_id={PROJECT}"), body.clone(), 202),
                    post(format!("{path}?project_id={OUTSIDE_PROJECT}"), body, 404),
                ]
            }
            _ => panic!("{method} {path}: the scope walk has no case for this operation"),
        }
    };

    let doc: Value = app.get_json("/api/v1/openapi.json", Role::Viewer).await;
    let (mut inside_projects, mut inside_topologies, mut walked) = (0, 0, 0);
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let role = match op["security"][0]["bearer"][0].as_str() {
                Some("operator") => Role::Operator,
                Some("admin") => Role::Admin,
                _ => Role::Viewer,
            };
            let token = scoped(role);
            for case in cases(method, path) {
                walked += 1;
                let url = format!("{}{}", app.address, case.url);
                let req = match case.method {
                    "GET" => app.http.get(&url),
                    _ => app
                        .http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(case.body.clone().unwrap().to_string()),
                };
                let res = req.bearer_auth(&token).send().await.unwrap();
                let status = res.status().as_u16();
                let is_stream = res
                    .headers()
                    .get("content-type")
                    .is_some_and(|t| t.to_str().unwrap_or("").starts_with("text/event-stream"));
                let text = if is_stream {
                    String::new()
                } else {
                    res.text().await.unwrap()
                };
                assert_eq!(status, case.status, "{} {}: {text}", case.method, case.url);
                let Ok(body) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                // The OpenAPI document holds no data: its `project_id`s are parameter names
                // and link expressions.
                if case.url.ends_with("/openapi.json") {
                    continue;
                }
                let list = case.url.ends_with("/api/v1/topologies");
                for (keys, allowed, count) in [
                    (&["project_id"][..], PROJECT, &mut inside_projects),
                    (
                        if list {
                            &["topology_id", "id"][..]
                        } else {
                            &["topology_id"][..]
                        },
                        TOPOLOGY,
                        &mut inside_topologies,
                    ),
                ] {
                    let mut seen = Vec::new();
                    for key in keys {
                        ids(&body, key, &mut seen);
                    }
                    assert!(
                        seen.iter().all(|s| s == allowed),
                        "{} {} shows {seen:?} beside {allowed}",
                        case.method,
                        case.url
                    );
                    *count += seen.len();
                }
            }
        }
    }
    // The walk saw what the scope holds, not just empty answers.
    assert!(walked >= 40, "{walked}");
    assert!(inside_projects > 10, "{inside_projects}");
    assert!(inside_topologies > 0, "{inside_topologies}");

    // An SSE ticket keeps the scope of the token that bought it.
    let ticket = app.sse_ticket(&scoped(Role::Viewer)).await;
    let t = ticket["ticket"].as_str().unwrap();
    let res = app
        .http
        .get(format!(
            "{}/topologies/{OUTSIDE_TOPOLOGY}/events?ticket={t}",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // A scoped sign-in link opens a session with the same scope.
    let link = mint_login_scoped(&Secret::new(SECRET), &scoped_claims(Role::Viewer), 600).unwrap();
    let session: Value = app
        .http
        .post(format!("{}/api/v1/auth/login", app.address))
        .header("content-type", "application/json")
        .body(json!({"login_token": link}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let who: Value = app
        .http
        .get(format!("{}/api/v1/auth/whoami", app.address))
        .bearer_auth(session["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["projects"], json!([PROJECT]));
    assert_eq!(who["topologies"], json!([TOPOLOGY]));
}
