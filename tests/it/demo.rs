//! `orrery demo`: every read model fills, nothing is dead-lettered, secrets are redacted.

use std::process::Command;

use orrery::natsd::NatsServer;
use orrery::token::Role;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_traffic_fills_every_read_model_within_the_contract() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let out = run_demo(
        &nats.url(),
        &["--rate", "300", "--duration", "6s", "--agents", "12"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let sent: u64 = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("published ")?
                .strip_suffix(" events")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no count in {stderr}"));
    // Bounded by --rate and --duration: 300/s for 6 s, give or take the first tick.
    assert!((600..=1_900).contains(&sent), "published {sent}");
    app.wait_caught_up().await;

    // Every event followed the contract.
    let dead = app
        .get_json("/api/v1/dead-letters?limit=5", Role::Admin)
        .await;
    assert_eq!(dead["total"], 0, "{dead}");

    // Results with some failures, agents, resource samples.
    assert!(app.count("since=1h").await > 300);
    assert!(app.count("since=1h&success=false").await > 0);
    let agents = app.get_json("/api/v1/agents", Role::Viewer).await;
    assert_eq!(agents["items"].as_array().unwrap().len(), 12, "{agents}");
    let top = app
        .get_json("/api/v1/system/stats/top?by=cpu&limit=3", Role::Viewer)
        .await;
    assert_eq!(top["items"].as_array().map(Vec::len), Some(3), "{top}");
    let durations = app
        .get_json(
            "/api/v1/results/durations?since=2020-01-01T00:00:00Z",
            Role::Viewer,
        )
        .await;
    assert!(
        durations["items"].as_array().unwrap().len() >= 3,
        "{durations}"
    );

    // Topologies with mutations moving through their states.
    let topologies = app.get_json("/api/v1/topologies", Role::Viewer).await;
    assert_eq!(
        topologies["items"].as_array().unwrap().len(),
        3,
        "{topologies}"
    );
    let mut states = std::collections::BTreeSet::new();
    for t in topologies["items"].as_array().unwrap() {
        let path = format!(
            "/api/v1/topologies/{}/mutations?limit=500",
            t["id"].as_str().unwrap()
        );
        for m in app.get_json(&path, Role::Viewer).await["items"]
            .as_array()
            .unwrap()
        {
            states.insert(m["state"].as_str().unwrap().to_owned());
        }
    }
    assert!(
        states.contains("applied") && states.len() >= 2,
        "{states:?}"
    );

    // Alerts that recur, from three providers, with secrets redacted.
    let recurrence = app
        .get_json(
            "/api/v1/alerts/recurrence?project_id=shop&limit=50",
            Role::Viewer,
        )
        .await;
    let groups = recurrence["groups"].as_array().unwrap();
    assert!(
        groups
            .iter()
            .any(|g| g["occurrence_total"].as_u64() >= Some(2)),
        "{recurrence}"
    );
    let dossier = app
        .get_json(
            "/api/v1/alerts/dossier?project_id=shop&limit=50",
            Role::Viewer,
        )
        .await;
    assert!(
        dossier["summary"]["redacted_total"].as_u64() > Some(0),
        "{}",
        dossier["summary"]
    );
    let text = dossier.to_string();
    for secret in ["hunter2", "sk_live_demo", "c2lnbmF0dXJlLWRlbW8"] {
        assert!(!text.contains(secret), "{secret} reached the dossier");
    }
    let freshness = app
        .get_json("/api/v1/alerts/freshness?project_id=shop", Role::Viewer)
        .await;
    for provider in ["alertmanager", "sentry", "signoz"] {
        assert!(freshness.to_string().contains(provider), "{freshness}");
    }

    // Deploys in the ledger, the error text never shown.
    let mut deploys = 0;
    for w in ["shop", "api", "worker"] {
        let ledger = app
            .get_json(&format!("/api/v1/workloads/{w}/deploys"), Role::Viewer)
            .await;
        assert!(!ledger.to_string().contains("hunter2"), "{ledger}");
        deploys += ledger["items"].as_array().unwrap().len();
    }
    assert!(deploys > 0);
}

#[test]
fn demo_refuses_bad_bounds_with_exit_code_2() {
    for args in [
        ["--rate", "0"],
        ["--rate", "10001"],
        ["--agents", "0"],
        ["--duration", "soon"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_orrery"))
            .arg("demo")
            .args(args)
            .env("ORRERY_NATS_URL", "nats://127.0.0.1:1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(args[0]), "{args:?}: {stderr}");
    }
}

/// `orrery bench soak` runs the daemon as its own process under demo traffic, live clients
/// and queries, and reports each interval what it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_reports_memory_files_lag_and_latency_every_interval() {
    let out = tokio::task::spawn_blocking(|| {
        Command::new(env!("CARGO_BIN_EXE_orrery"))
            .args(["bench", "soak", "--duration", "4s", "--every", "1s"])
            .args([
                "--rate",
                "200",
                "--sse-clients",
                "6",
                "--query-clients",
                "2",
                "--json",
            ])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["intervals"].as_array().unwrap();
    assert!(rows.len() >= 3, "{report}");
    for row in rows {
        assert!(row["rss_bytes"].as_u64().unwrap() > 1_000_000, "{row}");
        assert!(row["fds"].as_u64().unwrap() > 3, "{row}");
        assert!(row["queries"].as_u64().unwrap() > 0, "{row}");
        assert_eq!(row["query_errors"], 0, "{row}");
        assert_eq!(row["sse_errors"], 0, "{row}");
        assert!(row["lag"].as_u64().unwrap() < 10_000, "{row}");
    }
    let total = |k: &str| rows.iter().map(|r| r[k].as_u64().unwrap()).sum::<u64>();
    assert!(total("sse_sessions") >= 6, "{report}");
    assert!(total("sse_deliveries") > 0, "{report}");
    assert!(report["published"].as_u64().unwrap() > 300, "{report}");
    assert_eq!(report["final_lag"], 0, "{report}");
}

/// `orrery bench ingest` measures what agents send (UUID ids, spread times) and then the
/// labelled best case, each projected whole in process and by a daemon started on it; a
/// bad window is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ingest_measures_the_realistic_shape_and_the_labelled_best_case() {
    let run = |args: &'static [&'static str]| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_orrery"))
                .args(["bench", "ingest", "--events", "3000", "--json"])
                .args(args)
                .env("RUST_LOG", "warn")
                .output()
                .unwrap()
        })
    };
    let out = run(&["--spread", "6h"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shapes: Vec<_> = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["shape"].clone())
        .collect();
    assert_eq!(
        shapes,
        [
            serde_json::json!({"realistic": {"spread_secs": 21600}}),
            serde_json::json!("sequential")
        ]
    );
    for r in reports.as_array().unwrap() {
        assert_eq!(r["rows"], 3000, "{r}");
        assert!(r["catchup_eps"].as_f64().unwrap() > 0.0, "{r}");
        // The daemon itself, started on the stream of this shape alone, reached lag 0.
        let daemon = &r["daemon"];
        assert!(daemon["seconds"].as_f64().unwrap() > 0.0, "{r}");
        assert!(daemon["eps"].as_f64().unwrap() > 0.0, "{r}");
        assert!(daemon["database_mib"].as_f64().unwrap() > 0.0, "{r}");
        assert!(daemon["peak_rss_mib"].as_f64().unwrap() > 1.0, "{r}");
    }
    let out = run(&["--spread", "0s"]).await.unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--spread"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `orrery bench fanout --peer nchan` measures Orrery, then nchan in nginx with the same
/// clients and publish rate, and reports both; a missing nginx is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_fanout_measures_nchan_the_same_way_in_the_same_run() {
    let nginx = std::env::var("ORRERY_NGINX")
        .expect("set ORRERY_NGINX to Debian's nginx with libnginx-mod-nchan (make test does)");
    let run = |nginx: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_orrery"))
                .args(["bench", "fanout", "--clients", "40", "--topologies", "4"])
                .args([
                    "--rate",
                    "40",
                    "--duration",
                    "2s",
                    "--peer",
                    "nchan",
                    "--json",
                ])
                .arg("--nginx")
                .arg(nginx)
                .env("RUST_LOG", "warn")
                .output()
                .unwrap()
        })
    };
    let out = run(nginx).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nchan = &report["nchan"];
    for r in [&report, nchan] {
        assert_eq!(r["connected"], 40, "{r}");
        assert_eq!(r["published"], 80, "{r}");
        // 80 events over 4 topologies of 10 clients each.
        assert_eq!(r["expected"], 800, "{r}");
        assert_eq!(r["delivered"], 800, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["latency"]["p99_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["rss_connected"].as_u64().unwrap() > 1_000_000, "{r}");
    }
    assert!(nchan["nchan"].is_null(), "{nchan}");

    let out = run("/nonexistent/nginx".into()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("/nonexistent/nginx not found"), "{stderr}");
}
