//! The alert dossier: redaction, duplicates, recurrence, coverage, freshness and the two
//! write endpoints, against a real nats-server and SQLite file.

use orrery::natsd::NatsServer;
use orrery::token::Role;
use serde_json::{json, Value};

use crate::helpers::*;

/// Real-looking secrets, each embedded in an alert somewhere a bridge would put it.
const SECRETS: &[&str] = &[
    "s3cr3tBearerT0ken-abc.def",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZw",
    "hunter2pass",
    "Tr0ub4dorAnd3",
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "MIIEowIBAAKCAQEA7bqPRIVATEKEYBODY",
    "ghp_0123456789abcdefghijABCDEFGHIJ0123456789",
    "xoxb-1234567890-0987654321-AbCdEfGhIjKlMn",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
];

fn alert(peid: &str, stage: &str, extra: Value) -> Value {
    let mut data = json!({"provider_event_id": peid, "stage": stage});
    for (k, v) in extra.as_object().unwrap() {
        data[k] = v.clone();
    }
    data
}

async fn file_bytes(path: &std::path::Path) -> Vec<u8> {
    let mut all = std::fs::read(path).unwrap();
    for suffix in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(b) = std::fs::read(std::path::PathBuf::from(p)) {
            all.extend(b);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn secrets_never_reach_the_database_or_a_response() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

    let content = format!(
        "curl -H 'Authorization: Bearer {}' failed\njwt={} \
         dsn postgres://app:{}@db:5432/x\nlogin?user=bob&password={}\n\
         env AWS_ACCESS_KEY_ID={} aws_secret_access_key={}\n\
         -----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n\
         git {} slack {} stripe {}",
        SECRETS[0],
        SECRETS[1],
        SECRETS[2],
        SECRETS[3],
        SECRETS[4],
        SECRETS[5],
        SECRETS[6],
        SECRETS[7],
        SECRETS[8],
        SECRETS[9]
    );
    publish_result(
        &js,
        "alert.sentry.shop",
        alert(
            "sentry-1",
            "firing",
            json!({
                "alertname": "Leak",
                "content": content,
                "labels": {"api_key": SECRETS[9], "team": "pay"},
                "annotations": {"description": format!("token={}", SECRETS[0])},
                "source_url": format!("https://bob:{}@sentry.example/1", SECRETS[2]),
            }),
        ),
    )
    .await;
    // An undecodable alert still carrying a secret goes to dead_letters redacted.
    publish_result(
        &js,
        "alert.sentry.shop",
        json!({"stage": "exploded", "content": format!("password={}", SECRETS[3])}),
    )
    .await;
    app.wait_caught_up().await;

    let dossier = app
        .get_json("/api/v1/alerts/dossier?project_id=shop", Role::Viewer)
        .await;
    let event = &dossier["items"][0];
    assert_eq!(event["has_redacted_content"], true);
    assert_eq!(event["content_length"], content.len());
    assert_eq!(event["redaction_version"], 1);
    assert!(event["content_redacted"]
        .as_str()
        .unwrap()
        .contains("[REDACTED]"));
    let dead = app
        .get_json("/api/v1/dead-letters?stream=ALERTS", Role::Admin)
        .await;
    assert_eq!(dead["total"], 1);

    let mut responses = dossier.to_string();
    responses.push_str(&dead.to_string());
    for path in [
        "/api/v1/alerts/recent",
        "/api/v1/alerts/recurrence",
        "/api/v1/alerts/coverage",
    ] {
        responses.push_str(&app.get_json(path, Role::Viewer).await.to_string());
    }
    let (db_path, _dir) = app.stop().await;
    let bytes = file_bytes(&db_path).await;
    for secret in SECRETS {
        assert!(!responses.contains(secret), "{secret} in a response");
        assert!(!contains(&bytes, secret), "{secret} in the SQLite file");
    }
    // The base64 of the dead letter is checked too: decode it.
    use base64::Engine;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(dead["items"][0]["payload_base64"].as_str().unwrap())
        .unwrap();
    assert!(!contains(&payload, SECRETS[3]));
}

#[tokio::test]
async fn duplicates_recurrence_and_coverage_follow_the_events() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

    // (subject, provider_event_id, stage, extra)
    let events = [
        (
            "alert.sentry.shop",
            "s-1",
            "firing",
            json!({"fingerprint": "fp-a", "alertname": "Crash", "severity": "error", "source_refs": {"sentry": ["1", "2"]}}),
        ),
        (
            "alert.sentry.shop",
            "s-1",
            "firing",
            json!({"fingerprint": "fp-a", "alertname": "Crash", "severity": "error"}),
        ),
        (
            "alert.sentry.shop",
            "s-2",
            "firing",
            json!({"fingerprint": "fp-a", "alertname": "Crash", "severity": "critical", "content": "password=abc12345"}),
        ),
        (
            "alert.signoz.shop",
            "z-1",
            "firing",
            json!({"alertname": "Latency", "namespace": "prod", "target_resource": "api", "source_refs": {"signoz": ["9"], "alert": ["x"]}}),
        ),
        (
            "alert.signoz.shop",
            "z-2",
            "resolved",
            json!({"alertname": "Latency", "namespace": "prod", "target_resource": "api"}),
        ),
        (
            "alert.signoz.shop",
            "z-3",
            "firing",
            json!({"alertname": "Latency", "namespace": "prod", "target_resource": "db"}),
        ),
        (
            "alert.signoz.shop",
            "hb-1",
            "heartbeat",
            json!({"alertname": "SourceProviderHeartbeat"}),
        ),
        (
            "alert.signoz.shop",
            "hb-1",
            "heartbeat",
            json!({"alertname": "SourceProviderHeartbeat"}),
        ),
        (
            "alert.sentry.other",
            "s-1",
            "firing",
            json!({"fingerprint": "fp-b", "alertname": "Crash"}),
        ),
    ];
    for (subject, peid, stage, extra) in &events {
        publish_result(&js, subject, alert(peid, stage, extra.clone())).await;
    }
    app.wait_caught_up().await;

    // Duplicates: the first (provider, provider_event_id) is the original, across projects too.
    let d = app
        .get_json("/api/v1/alerts/dossier?provider_event_id=s-1", Role::Viewer)
        .await;
    let flags: Vec<bool> = d["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["is_duplicate"].as_bool().unwrap())
        .collect();
    assert_eq!(flags, [true, true, false], "newest first");
    assert_eq!(d["summary"]["duplicate_total"], 2);
    assert_eq!(d["summary"]["source_count"], 1);
    assert_eq!(d["summary"]["source_ref_total"], 2);
    assert_eq!(d["items"][2]["source_ref_counts"], json!({"sentry": 2}));

    let r = app
        .get_json("/api/v1/alerts/recurrence?project_id=shop", Role::Viewer)
        .await;
    let groups: Vec<(String, i64, i64)> = r["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["recurrence_key"].as_str().unwrap().to_owned(),
                g["occurrence_total"].as_i64().unwrap(),
                g["duplicate_total"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("k:signoz|Latency|prod|db".to_owned(), 1, 0),
            ("k:signoz|Latency|prod|api".to_owned(), 2, 0),
            ("fp:fp-a".to_owned(), 3, 1),
        ],
        "latest first, heartbeats excluded"
    );
    assert_eq!(r["groups"][2]["severity"], "critical", "the latest event's");
    assert_eq!(
        r["summary"],
        json!({"groups": 3, "recurrent_groups": 2, "duplicate_events": 1,
               "linked_run_total": 0, "unlinked_event_total": 6, "auto_repair_linked_total": 0,
               "verified_repair_group_total": 0, "open_work_item_group_total": 2,
               "manual_gate_group_total": 0, "automation_gap_group_total": 2,
               "failed_repair_group_total": 0})
    );
    let only_sentry = app
        .get_json(
            "/api/v1/alerts/recurrence?project_id=shop&provider=sentry",
            Role::Viewer,
        )
        .await;
    assert_eq!(only_sentry["groups"].as_array().unwrap().len(), 1);

    // Coverage over the newest 8 events of shop: drops only the first sentry one.
    let c = app
        .get_json(
            "/api/v1/alerts/coverage?project_id=shop&limit=7",
            Role::Viewer,
        )
        .await;
    assert_eq!(c["summary"]["total"], 7);
    assert_eq!(c["summary"]["providers"], 2);
    let sentry = &c["providers"][0];
    assert_eq!(sentry["provider"], "sentry");
    assert_eq!(
        (
            sentry["total"].as_i64(),
            sentry["duplicates"].as_i64(),
            sentry["redacted"].as_i64()
        ),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(sentry["with_source_refs"], 0);
    let signoz = &c["providers"][1];
    assert_eq!(
        (
            signoz["total"].as_i64(),
            signoz["duplicates"].as_i64(),
            signoz["with_source_refs"].as_i64(),
            signoz["without_source_refs"].as_i64()
        ),
        (Some(5), Some(1), Some(1), Some(4))
    );

    let recent = app
        .get_json(
            "/api/v1/alerts/recent?provider_prefix=sig&limit=2",
            Role::Viewer,
        )
        .await;
    let ids: Vec<&str> = recent["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["provider_event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["hb-1", "hb-1"]);

    let f = app.get_json("/api/v1/alerts/freshness", Role::Viewer).await;
    let by: std::collections::HashMap<&str, &Value> = f["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["provider"].as_str().unwrap(), p))
        .collect();
    assert_eq!(by["signoz"]["stale"], false);
    assert_eq!(by["sentry"]["stale"], false);
    assert_eq!(by["alertmanager"]["stale"], true, "never reported");
    assert!(by["alertmanager"]["last_event_at"].is_null());
}

/// `POST /api/v1/alerts/provider-heartbeat` with `body` as `role`.
async fn heartbeat(
    app: &TestApp,
    role: Option<Role>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.post("/api/v1/alerts/provider-heartbeat", role, body)
        .await
}

#[tokio::test]
async fn provider_heartbeats_are_published_and_never_recur() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

    let body = json!({"project_id": "shop", "providers": ["sentry", "signoz"], "reason": "cron", "run_ref": "run-7"});
    let res = heartbeat(&app, Some(Role::Viewer), body.to_string()).await;
    assert_eq!(res.status(), 403);
    let res = heartbeat(&app, Some(Role::Operator), body.to_string()).await;
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["event_ids"].as_array().unwrap().len(), 2);
    app.wait_caught_up().await;

    let recent = app
        .get_json("/api/v1/alerts/recent?project_id=shop", Role::Viewer)
        .await;
    let items = recent["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    for e in items {
        assert_eq!(e["stage"], "heartbeat");
        assert_eq!(e["is_synthetic"], true);
        assert_eq!(e["labels"]["synthetic"], "true");
        assert_eq!(e["labels"]["run_ref"], "run-7");
        assert!(answer["event_ids"]
            .as_array()
            .unwrap()
            .contains(&e["event_id"]));
    }
    let r = app
        .get_json("/api/v1/alerts/recurrence", Role::Viewer)
        .await;
    assert_eq!(r["summary"]["groups"], 0);
    let f = app
        .get_json("/api/v1/alerts/freshness?project_id=shop", Role::Viewer)
        .await;
    let stale: Vec<(String, bool)> = f["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["provider"].as_str().unwrap().to_owned(),
                p["stale"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stale,
        [
            ("alertmanager".to_owned(), true),
            ("sentry".to_owned(), false),
            ("signoz".to_owned(), false)
        ]
    );

    let last = stream_state(&js, "ALERTS").await.0;
    for bad in [
        json!({"project_id": "shop", "providers": []}),
        json!({"project_id": "shop", "providers": ["pagerduty"]}),
        json!({"project_id": "shop", "providers": ["sentry", "sentry"]}),
        json!({"project_id": "shop", "providers": ["sentry", "signoz", "alertmanager"]}),
        json!({"project_id": "a b", "providers": ["sentry"]}),
        json!({"project_id": "shop", "providers": ["sentry"], "reason": "x".repeat(201)}),
        json!({"project_id": "shop", "providers": ["sentry"], "extra": 1}),
        json!({"providers": ["sentry"]}),
        json!("not an object"),
    ] {
        let res = heartbeat(&app, Some(Role::Operator), bad.to_string()).await;
        assert_eq!(res.status(), 400, "{bad}");
        let v: Value = res.json().await.unwrap();
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    let res = heartbeat(&app, Some(Role::Operator), "{ nope").await;
    assert_eq!(res.status(), 400);
    let res = heartbeat(&app, Some(Role::Operator), vec![b' '; 300 * 1024]).await;
    assert_eq!(res.status(), 413);
    let after = stream_state(&js, "ALERTS").await.0;
    assert_eq!(after, last, "nothing published for bad requests");

    // The document bounds notes in characters, so 200 four-byte ones are a valid request:
    // accepted, published and projected whole.
    let wide = "𝔸".repeat(200);
    let body =
        json!({"project_id": "wide", "providers": ["sentry"], "reason": wide, "run_ref": wide});
    let res = heartbeat(&app, Some(Role::Operator), body.to_string()).await;
    assert_eq!(res.status(), 202);
    app.wait_caught_up().await;
    let recent = app
        .get_json("/api/v1/alerts/recent?project_id=wide", Role::Viewer)
        .await;
    assert_eq!(recent["items"][0]["labels"]["reason"], wide.as_str());
    assert_eq!(recent["items"][0]["labels"]["run_ref"], wide.as_str());
}

#[tokio::test]
async fn alertmanager_webhooks_become_alert_events() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

    // The shared fixture plus a second, resolved alert with a secret in its description.
    let mut hook: Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/alertmanager-webhook-v4.json").unwrap(),
    )
    .unwrap();
    let mut second = hook["alerts"][0].clone();
    second["status"] = json!("resolved");
    second["labels"]["instance"] = json!("10.0.0.8:9100");
    second["labels"]["namespace"] = json!("infra");
    second["fingerprint"] = json!("7c2e3f4a5b6c7d8e");
    second["annotations"]["description"] =
        json!("scrape failed: https://prom:hunter2pass@10.0.0.8/metrics");
    hook["alerts"].as_array_mut().unwrap().push(second);

    let path = "/api/v1/alerts/webhook/alertmanager?project_id=infra";
    assert_eq!(app.post(path, None, hook.to_string()).await.status(), 401);
    let res = app.post(path, Some(Role::Operator), hook.to_string()).await;
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["published"], 2);
    // A retried delivery (same alerts, moments later) is dropped by JetStream's duplicate
    // window: the alert ids are derived from the alert instance.
    let retry = app.post(path, Some(Role::Operator), hook.to_string()).await;
    assert_eq!(retry.status(), 202);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["event_ids"], answer["event_ids"]);
    app.wait_caught_up().await;

    let recent = app
        .get_json("/api/v1/alerts/recent?project_id=infra", Role::Viewer)
        .await;
    let items = recent["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let resolved = &items[0];
    let firing = &items[1];
    assert_eq!(firing["provider"], "alertmanager");
    assert_eq!(firing["stage"], "firing");
    assert_eq!(firing["alertname"], "InstanceDown");
    assert_eq!(firing["severity"], "page");
    assert_eq!(firing["target_resource"], "10.0.0.7:9100");
    assert_eq!(firing["fingerprint"], "6b1d2e3f4a5b6c7d");
    assert_eq!(firing["provider_ts"], "2026-11-22T08:15:00.000Z");
    assert_eq!(
        firing["source_url"],
        "http://prometheus.example:9090/graph?g0.expr=up+%3D%3D+0"
    );
    assert_eq!(firing["labels"]["job"], "node");
    assert_eq!(
        firing["annotations"]["summary"],
        "Instance 10.0.0.7:9100 down"
    );
    assert_eq!(firing["source_ref_counts"], json!({"alert": 1}));
    assert_eq!(resolved["stage"], "resolved");
    assert_eq!(resolved["namespace"], "infra");
    assert!(!resolved.to_string().contains("hunter2pass"));
    assert_eq!(resolved["has_redacted_content"], true);

    // Nothing is published for a malformed body, even when only one alert is bad.
    let last = stream_state(&js, "ALERTS").await.0;
    let mut one_bad = hook.clone();
    one_bad["alerts"][1]["startsAt"] = json!("yesterday");
    let mut no_alerts = hook.clone();
    no_alerts["alerts"] = json!([]);
    let mut v3 = hook.clone();
    v3["version"] = json!("3");
    let mut bad_status = hook.clone();
    bad_status["alerts"][0]["status"] = json!("pending");
    let mut labels_not_strings = hook.clone();
    labels_not_strings["alerts"][0]["labels"] = json!({"alertname": 5});
    for bad in [
        one_bad.to_string(),
        no_alerts.to_string(),
        v3.to_string(),
        bad_status.to_string(),
        labels_not_strings.to_string(),
        "{\"version\": \"4\"".to_owned(),
        "[]".to_owned(),
    ] {
        let res = app.post(path, Some(Role::Operator), bad.clone()).await;
        assert_eq!(res.status(), 400, "{bad}");
    }
    let res = app
        .post(
            "/api/v1/alerts/webhook/alertmanager",
            Some(Role::Operator),
            hook.to_string(),
        )
        .await;
    assert_eq!(res.status(), 422, "project_id is required");
    let after = stream_state(&js, "ALERTS").await.0;
    assert_eq!(after, last);
}

#[tokio::test]
async fn every_bad_limit_and_filter_is_a_422_naming_it() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let cases = [
        ("/api/v1/alerts/dossier?limit=0", "limit"),
        ("/api/v1/alerts/dossier?limit=51", "limit"),
        ("/api/v1/alerts/dossier?limit=ten", "limit"),
        ("/api/v1/alerts/dossier?project_id=a.b", "project_id"),
        (
            "/api/v1/alerts/dossier?provider_event_id=",
            "provider_event_id",
        ),
        ("/api/v1/alerts/coverage?limit=201", "limit"),
        ("/api/v1/alerts/coverage?provider=*", "provider"),
        ("/api/v1/alerts/recurrence?limit=301", "limit"),
        ("/api/v1/alerts/recurrence?limit=-1", "limit"),
        (
            "/api/v1/alerts/recurrence?project_id=x&project_id=y",
            "project_id",
        ),
        ("/api/v1/alerts/recent?limit=101", "limit"),
        (
            "/api/v1/alerts/recent?provider_prefix=s%20x",
            "provider_prefix",
        ),
        ("/api/v1/alerts/freshness?project_id=%3E", "project_id"),
    ];
    for (path, parameter) in cases {
        let res = app.get(path, Some(Role::Viewer)).await;
        assert_eq!(res.status(), 422, "{path}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["parameter"], parameter, "{path}");
        assert!(v["expected"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert_eq!(app.get("/api/v1/alerts/recent", None).await.status(), 401);
    let ok = app
        .get_json("/api/v1/alerts/dossier?limit=50", Role::Viewer)
        .await;
    assert_eq!(ok["items"], json!([]));

    // provider_event_id is bounded in characters, as the document's maxLength counts them:
    // 256 four-byte ones are valid to ask for (wider than any stored id, so nothing matches),
    // one character more is not.
    let wide = "%F0%9D%94%B8".repeat(256);
    let ok = app
        .get_json(
            &format!("/api/v1/alerts/dossier?provider_event_id={wide}"),
            Role::Viewer,
        )
        .await;
    assert_eq!(ok["items"], json!([]));
    let res = app
        .get(
            &format!(
                "/api/v1/alerts/dossier?provider_event_id={}",
                "a".repeat(257)
            ),
            Some(Role::Viewer),
        )
        .await;
    assert_eq!(res.status(), 422);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["parameter"], "provider_event_id");
}
