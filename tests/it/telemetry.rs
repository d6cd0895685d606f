//! `/metrics` parsed by a real OpenMetrics parser: every family the README lists, with values
//! that follow what happened.

use std::time::Duration;

use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use orrery::natsd::NatsServer;
use orrery::token::Role;
use serde_json::json;

use crate::helpers::*;

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

async fn scrape(app: &TestApp) -> Exposition {
    let res = app.get("/metrics", None).await;
    assert_eq!(res.status(), 200);
    let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let text = res.text().await.unwrap();
    openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("not OpenMetrics ({e:?}):\n{text}"))
}

/// The value of the sample of `family` whose labels include all of `labels`.
fn value(x: &Exposition, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let f = x.families.get(family)?;
    f.iter_samples()
        .find(|s| {
            let set = s.get_labelset().unwrap();
            labels
                .iter()
                .all(|(k, v)| set.get_label_value(k) == Some(*v))
        })
        .map(|s| match &s.value {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            OpenMetricsValue::Gauge(g) => g.as_f64(),
            OpenMetricsValue::Histogram(h) => h.count.unwrap_or(0) as f64,
            other => panic!("{family}: unexpected {other:?}"),
        })
}

/// Every family the README's metrics table lists.
const FAMILIES: [&str; 29] = [
    "orrery_projected_messages",
    "orrery_dead_letters",
    "orrery_projection_batches",
    "orrery_projection_errors",
    "orrery_projection_stalls",
    "orrery_projection_checkpoint",
    "orrery_projection_lag",
    "orrery_projection_missing_events",
    "orrery_projection_rate",
    "orrery_projection_batch_size",
    "orrery_projection_commit_seconds",
    "orrery_http_request_duration_seconds",
    "orrery_bus_connected",
    "orrery_bus_reconnects",
    "orrery_bus_permission_denied",
    "orrery_sse_streams_open",
    "orrery_sse_deliveries",
    "orrery_sse_resyncs",
    "orrery_sse_snapshot_loads",
    "orrery_durations_cache_reads",
    "orrery_retention_seconds",
    "orrery_retention_cutoff_timestamp_seconds",
    "orrery_retention_oldest_kept_timestamp_seconds",
    "orrery_retention_pruned_rows",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_cpu_seconds",
    "process_start_time_seconds",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_parses_as_openmetrics_and_follows_what_happened() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    for i in 0..7 {
        publish_result(
            &js,
            "result.traffic.a1",
            json!({"result_id": format!("r{i}"), "exit_code": 0}),
        )
        .await;
    }
    publish_raw(&js, "result.traffic.a1", "bad-1", b"{ not json".to_vec())
        .await
        .await
        .unwrap();
    publish_topology(&js, "t1", "status", json!({"status": "active"})).await;
    app.wait_caught_up().await;
    // A live stream that receives one event.
    let mut sse = SseClient::new(open_stream(&app.http, &app.address, "t1", "m", None).await);
    assert_eq!(
        sse.next(Duration::from_secs(10)).await.unwrap().event,
        "snapshot"
    );
    publish_topology(&js, "t1", "status", json!({"status": "paused"})).await;
    assert_eq!(
        sse.next(Duration::from_secs(10)).await.unwrap().event,
        "status"
    );
    // Requests of three status classes on templated routes.
    app.get_json("/api/v1/topologies/t1", Role::Viewer).await;
    assert_eq!(
        app.get("/api/v1/topologies/nope", Some(Role::Viewer))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get("/api/v1/results/stats?since=9y", Some(Role::Viewer))
            .await
            .status(),
        422
    );
    assert_eq!(app.get("/no/such/route", None).await.status(), 404);

    let x = scrape(&app).await;
    for family in FAMILIES {
        assert!(x.families.contains_key(family), "{family} missing");
    }
    let results = [("stream", "RESULTS")];
    assert_eq!(value(&x, "orrery_projected_messages", &results), Some(8.0));
    assert_eq!(value(&x, "orrery_dead_letters", &results), Some(1.0));
    assert_eq!(
        value(&x, "orrery_projection_checkpoint", &results),
        Some(8.0)
    );
    assert_eq!(value(&x, "orrery_projection_lag", &results), Some(0.0));
    assert_eq!(
        value(&x, "orrery_projection_missing_events", &results),
        Some(0.0)
    );
    // One histogram observation per committed batch.
    let batches = value(&x, "orrery_projection_batches", &results).unwrap();
    assert!(batches >= 1.0);
    assert_eq!(
        value(&x, "orrery_projection_batch_size", &results),
        Some(batches)
    );
    assert_eq!(
        value(&x, "orrery_projection_commit_seconds", &results),
        Some(batches)
    );
    assert_eq!(value(&x, "orrery_bus_connected", &[]), Some(1.0));
    assert_eq!(value(&x, "orrery_bus_reconnects", &[]), Some(0.0));
    assert_eq!(value(&x, "orrery_bus_permission_denied", &[]), Some(0.0));
    assert_eq!(value(&x, "orrery_sse_streams_open", &[]), Some(1.0));
    assert_eq!(value(&x, "orrery_sse_deliveries", &[]), Some(1.0));
    assert_eq!(value(&x, "orrery_sse_resyncs", &[]), Some(0.0));
    // The defaults: results kept 30 days, nothing of this minute's data pruned.
    assert_eq!(
        value(&x, "orrery_retention_seconds", &results),
        Some(2_592_000.0)
    );
    assert_eq!(
        value(&x, "orrery_retention_pruned_rows", &results),
        Some(0.0)
    );
    assert!(value(&x, "process_open_fds", &[]).unwrap() > 3.0);
    assert!(value(&x, "process_resident_memory_bytes", &[]).unwrap() > 1e6);

    // Routes by template, never by the raw path; each status class on its own series.
    let http = "orrery_http_request_duration_seconds";
    let route = |r: &'static str, status: &'static str| {
        value(
            &x,
            http,
            &[("route", r), ("method", "GET"), ("status", status)],
        )
    };
    assert_eq!(route("/api/v1/topologies/{tid}", "2xx"), Some(1.0));
    assert_eq!(route("/api/v1/topologies/{tid}", "4xx"), Some(1.0));
    assert_eq!(route("/api/v1/results/stats", "4xx"), Some(1.0));
    assert_eq!(route("unmatched", "4xx"), Some(1.0));
    let text = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        !text.contains("topologies/t1") && !text.contains("nope"),
        "a raw path leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_shows_catch_up_progress_while_a_replica_is_behind() {
    let nats = NatsServer::start().unwrap();
    let js = jetstream(&nats).await;
    // The streams as the daemon makes them, filled before it starts.
    orrery::bus::streams::provision(
        &js,
        orrery::bus::streams::Provisioning {
            replicas: 1,
            max_age: Duration::from_secs(86_400),
        },
    )
    .await
    .unwrap();
    let mut acks = Vec::new();
    for i in 0..60_000u64 {
        let body =
            json!({"id": format!("e{i}"), "data": {"result_id": format!("r{i}"), "exit_code": 0}});
        acks.push(
            publish_raw(
                &js,
                "result.traffic.a1",
                &format!("e{i}"),
                serde_json::to_vec(&body).unwrap(),
            )
            .await,
        );
        if acks.len() == 2048 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }

    // Small batches: a catch-up long enough to watch.
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(
        orrery::Settings {
            batch_size: Some(32),
            ..settings(&nats.url(), &dir.path().join("o.db"))
        },
        dir,
    )
    .await;
    let mut seen_progress = None;
    let started = std::time::Instant::now();
    loop {
        let ready: serde_json::Value = app.get("/ready", None).await.json().await.unwrap();
        // Until the bus is connected, /ready lists no projection.
        let Some(results) = ready["projections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["stream"] == "RESULTS")
            .cloned()
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if results["lag"] == 0 {
            break;
        }
        if results["rate_per_sec"].as_u64() > Some(0) && results["eta_secs"].is_u64() {
            seen_progress.get_or_insert(results);
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no catch-up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = seen_progress.expect("a rate and an ETA while behind");
    // The ETA is the lag at that rate, rounded up.
    let (lag, rate, eta) = (
        p["lag"].as_u64().unwrap(),
        p["rate_per_sec"].as_u64().unwrap(),
        p["eta_secs"].as_u64().unwrap(),
    );
    assert_eq!(eta, lag.div_ceil(rate), "{p}");
}
