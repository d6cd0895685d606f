//! Auth, validation and probe endpoints as a client meets them.

use std::time::Duration;

use orrery::natsd::NatsServer;
use orrery::token::Role;
use serde_json::Value;

use crate::helpers::*;

fn jwt(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn auth_matrix() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let url = format!("{}/api/v1/results/stats?since=1h", app.address);
    let dead = format!("{}/api/v1/dead-letters", app.address);
    let exp = now() + 600;
    let cases: Vec<(&str, Option<String>, &str, u16)> = vec![
        ("no token", None, &url, 401),
        ("garbage", Some("Bearer not.a.jwt".into()), &url, 401),
        (
            "not bearer",
            Some(format!("Basic {}", token(Role::Admin))),
            &url,
            401,
        ),
        ("empty bearer", Some("Bearer ".into()), &url, 401),
        (
            "wrong signature",
            Some(format!(
                "Bearer {}",
                jwt(
                    "another-secret-another-secret-0123456",
                    serde_json::json!({"sub":"x","role":"admin","exp":exp})
                )
            )),
            &url,
            401,
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                jwt(
                    SECRET,
                    serde_json::json!({"sub":"x","role":"admin","exp":now() - 3600})
                )
            )),
            &url,
            401,
        ),
        (
            "no exp",
            Some(format!(
                "Bearer {}",
                jwt(SECRET, serde_json::json!({"sub":"x","role":"admin"}))
            )),
            &url,
            401,
        ),
        (
            "unknown role",
            Some(format!(
                "Bearer {}",
                jwt(
                    SECRET,
                    serde_json::json!({"sub":"x","role":"root","exp":exp})
                )
            )),
            &url,
            401,
        ),
        (
            "viewer reads stats",
            Some(format!("Bearer {}", token(Role::Viewer))),
            &url,
            200,
        ),
        (
            "viewer on admin route",
            Some(format!("Bearer {}", token(Role::Viewer))),
            &dead,
            403,
        ),
        (
            "operator on admin route",
            Some(format!("Bearer {}", token(Role::Operator))),
            &dead,
            403,
        ),
        (
            "admin on admin route",
            Some(format!("Bearer {}", token(Role::Admin))),
            &dead,
            200,
        ),
        ("no token on admin route", None, &dead, 401),
    ];
    for (name, header, url, want) in cases {
        let mut req = app.http.get(url);
        if let Some(h) = header {
            req = req.header("Authorization", h);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), want, "{name}");
        if want == 401 {
            assert!(res.headers().contains_key("www-authenticate"), "{name}");
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"], "unauthorized", "{name}");
        }
    }
    // Authentication comes before validation: a bad parameter without a token is still 401.
    let res = app.get("/api/v1/results/stats?since=bogus", None).await;
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn every_bad_since_kind_and_success_is_a_422_naming_the_parameter() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let cases = [
        ("since=0h", "since"),
        ("since=0s", "since"),
        ("since=8d", "since"),
        ("since=169h", "since"),
        ("since=604801s", "since"),
        ("since=1w", "since"),
        ("since=-1h", "since"),
        ("since=", "since"),
        ("since=h", "since"),
        ("since=1", "since"),
        ("since=1.5h", "since"),
        ("since=1h30m", "since"),
        ("since=%201h", "since"),
        ("since=99999999999999999999999999h", "since"),
        ("since=18446744073709551616s", "since"),
        ("since=1h&since=2h", "since"),
        ("kind=", "kind"),
        ("kind=a.b", "kind"),
        ("kind=*", "kind"),
        ("kind=%3E", "kind"),
        ("kind=traffic%20x", "kind"),
        (&format!("kind={}", "k".repeat(129)), "kind"),
        ("success=yes", "success"),
        ("success=", "success"),
        ("success=1", "success"),
    ];
    for (query, param) in cases {
        let res = app
            .get(
                &format!("/api/v1/results/stats?{query}"),
                Some(Role::Viewer),
            )
            .await;
        assert_eq!(res.status(), 422, "{query}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "invalid_parameter", "{query}");
        assert_eq!(body["parameter"], param, "{query}");
        assert!(!body["expected"].as_str().unwrap().is_empty(), "{query}");
    }
    for ok in [
        "since=7d",
        "since=1s",
        "since=168h",
        "since=10080m",
        "kind=traffic_2-x",
    ] {
        let res = app
            .get(&format!("/api/v1/results/stats?{ok}"), Some(Role::Viewer))
            .await;
        assert_eq!(res.status(), 200, "{ok}");
    }
    for (query, param) in [
        ("stream=NOPE", "stream"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
    ] {
        let res = app
            .get(&format!("/api/v1/dead-letters?{query}"), Some(Role::Admin))
            .await;
        assert_eq!(res.status(), 422, "{query}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["parameter"], param, "{query}");
    }
    let res = app.get("/api/v1/nothing-here", Some(Role::Viewer)).await;
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn health_is_liveness_and_ready_follows_the_bus() {
    let mut nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    app.wait_caught_up().await;

    let ready: Value = app.get("/ready", None).await.json().await.unwrap();
    let results = ready["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["stream"] == "RESULTS")
        .unwrap()
        .clone();
    assert_eq!(results["checkpoint"], 0);
    assert_eq!(results["stream_last_seq"], 0);
    assert_eq!(results["lag"], 0);

    nats.kill();
    wait_until(
        Duration::from_secs(10),
        "/ready to report the bus down",
        || async { app.get("/ready", None).await.status() == 503 },
    )
    .await;
    let body: Value = app.get("/ready", None).await.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert!(body["reasons"].to_string().contains("NATS"), "{body}");
    assert_eq!(app.get("/health", None).await.status(), 200);

    nats.restart().unwrap();
    wait_until(Duration::from_secs(15), "/ready to recover", || async {
        app.get("/ready", None).await.status() == 200
    })
    .await;
}

#[tokio::test]
async fn a_drifted_stream_is_left_as_the_operator_configured_it() {
    let nats = NatsServer::start().unwrap();
    let js = jetstream(&nats).await;
    // An operator's RESULTS stream: memory storage, one hour of retention.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "RESULTS".into(),
        subjects: vec!["result.>".into()],
        storage: async_nats::jetstream::stream::StorageType::Memory,
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let app = spawn_app(&nats).await;
    wait_until(Duration::from_secs(10), "the other streams", || async {
        js.get_stream("COMMANDS").await.is_ok()
    })
    .await;
    let info = js.get_stream("RESULTS").await.unwrap();
    let config = &info.cached_info().config;
    assert_eq!(
        config.storage,
        async_nats::jetstream::stream::StorageType::Memory
    );
    assert_eq!(config.max_age, Duration::from_secs(3600));

    // It is still projected.
    publish_result(
        &js,
        "result.job.a1",
        serde_json::json!({"result_id": "r1", "success": false, "finished_at": ago(Duration::ZERO)}),
    )
    .await;
    app.wait_caught_up().await;
    assert_eq!(app.count("success=false").await, 1);
}

#[tokio::test]
async fn cors_star_lets_any_origin_read_and_preflight() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&nats.url(), &dir.path().join("orrery.db"));
    s.cors_origins = Some("*".into());
    let app = spawn_app_with(s, dir).await;
    let origin = "https://anywhere.example:8443";
    let res = app
        .http
        .get(format!("{}/api/v1/topologies", app.address))
        .header("origin", origin)
        .bearer_auth(token(Role::Viewer))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    let preflight = app
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/topologies/t1/events", app.address),
        )
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization,last-event-id",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
}

#[test]
fn serve_refuses_a_bad_cors_origin_with_one_line_naming_it() {
    for (value, named) in [
        ("https://dash.example/app", "`https://dash.example/app`"),
        ("*,https://dash.example", "`*`"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_orrery"))
            .args(["serve", "--insecure-no-auth", "--cors-origins", value])
            .args(["--database", "/nonexistent/never-opened.db"])
            .env_remove("ORRERY_CONFIG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{value}: {stderr}");
        assert!(
            stderr.contains("--cors-origins") && stderr.contains(named),
            "{value}: {stderr}"
        );
    }
}
