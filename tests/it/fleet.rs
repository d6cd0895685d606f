//! Fleet: health transitions, agents, durations, resource metrics, the deploy ledger and
//! rollback, against a real nats-server and SQLite file.

use std::time::Duration;

use orrery::natsd::NatsServer;
use orrery::token::Role;
use orrery::Settings;
use serde_json::{json, Value};

use crate::helpers::*;

async fn spawn_with(nats: &NatsServer, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&nats.url(), &dir.path().join("orrery.db"));
    tweak(&mut s);
    spawn_app_with(s, dir).await
}

async fn fleet(app: &TestApp) -> (u16, Value) {
    let res = app.get("/api/v1/health/fleet", Some(Role::Viewer)).await;
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

async fn beat(js: &async_nats::jetstream::Context, agent: &str, ago_secs: u64) {
    publish_at(
        js,
        &format!("heartbeat.{agent}"),
        &ago(Duration::from_secs(ago_secs)),
        json!({"hostname": format!("{agent}.corp"), "version": "1.8.2", "labels": {"site": "osaka"}}),
    )
    .await;
}

#[tokio::test]
async fn fleet_health_moves_between_unknown_ok_and_degraded() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_with(&nats, |s| {
        s.fleet_stale_share = Some(0.5);
        s.expect_kv = Some("config".into());
    })
    .await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: "config".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    app.wait_caught_up().await;

    // Fresh install: nobody has reported.
    let (code, v) = fleet(&app).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("unknown")), "{v}");
    assert_eq!(v["agents"]["known"], 0);
    assert_eq!(v["jetstream"]["all_ok"], true);
    assert_eq!(v["jetstream"]["total"], 7, "six streams and one KV bucket");
    assert_eq!(v["agents"]["stale_after_secs"], 120);
    assert!(v["observed_at"].as_str().is_some());

    // Agents beating: ok.
    for a in ["a1", "a2", "a3", "a4"] {
        beat(&js, a, 5).await;
    }
    publish_result(
        &js,
        "result.job.a1",
        json!({"result_id": "r1", "success": false, "finished_at": ago(Duration::from_secs(60))}),
    )
    .await;
    publish_result(
        &js,
        "result.job.a1",
        json!({"result_id": "r2", "success": true, "finished_at": ago(Duration::from_secs(60))}),
    )
    .await;
    app.wait_caught_up().await;
    let (code, v) = fleet(&app).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("ok")), "{v}");
    assert_eq!(
        v["agents"],
        json!({"known": 4, "active": 4, "stale": 0, "stale_after_secs": 120})
    );
    assert_eq!(
        v["recent_results"],
        json!({"window_hours": 24, "total": 2, "failed": 1})
    );
    assert_eq!(v["projections"].as_array().unwrap().len(), 5);

    // One of five stale (20%) is under the 50% threshold; four of eight reaches it.
    beat(&js, "a3", 600).await; // older than a3's last beat: must not move it back
    beat(&js, "a5", 600).await;
    app.wait_caught_up().await;
    let (code, v) = fleet(&app).await;
    assert_eq!((code, v["agents"]["stale"].as_i64()), (200, Some(1)), "{v}");
    for a in ["a6", "a7", "a8"] {
        beat(&js, a, 900).await;
    }
    app.wait_caught_up().await;
    let (code, v) = fleet(&app).await;
    assert_eq!((code, v["status"].as_str()), (503, Some("degraded")), "{v}");
    assert_eq!(v["agents"]["stale"], 4);
    assert!(v["reasons"][0].as_str().unwrap().contains("stale"));
    // Fresh beats bring it back.
    for a in ["a5", "a6", "a7", "a8"] {
        beat(&js, a, 1).await;
    }
    app.wait_caught_up().await;
    assert_eq!(fleet(&app).await.0, 200);

    // A stream and a bucket deleted behind Orrery's back are named.
    js.delete_stream("COMMANDS").await.unwrap();
    js.delete_key_value("config").await.unwrap();
    // JetStream facts are cached for up to a second.
    wait_until(Duration::from_secs(5), "fleet health to notice", || async {
        fleet(&app).await.0 == 503
    })
    .await;
    let (code, v) = fleet(&app).await;
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["jetstream"]["all_ok"], false);
    assert_eq!(v["jetstream"]["missing"], json!(["COMMANDS", "kv:config"]));
    assert_eq!(v["jetstream"]["healthy"], 5);

    // /health stays a pure liveness probe.
    assert_eq!(app.get("/health", None).await.status(), 200);
    assert_eq!(app.get("/api/v1/health/fleet", None).await.status(), 401);
}

#[tokio::test]
async fn a_lagging_projection_degrades_fleet_health() {
    let nats = NatsServer::start().unwrap();
    // A long batch wait holds the first heartbeat uncommitted for a while: lag 1 > 0.
    let app = spawn_with(&nats, |s| {
        s.fleet_max_lag = Some(0);
        s.batch_wait_ms = Some(4_000);
    })
    .await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    beat(&js, "a1", 1).await;
    let (code, v) = fleet(&app).await;
    assert_eq!(code, 503, "{v}");
    assert!(
        v["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("HEARTBEATS lags by 1")),
        "{v}"
    );
    app.wait_caught_up().await;
    let (code, v) = fleet(&app).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("ok")), "{v}");
}

#[tokio::test]
async fn durations_are_nearest_rank_per_job_slowest_first() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    let base = time::OffsetDateTime::now_utc() - Duration::from_secs(3_600);
    let at = |ms: i64| {
        (base + time::Duration::milliseconds(ms))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    // scan-a: 10..=100 ms in steps of 10, published out of order.
    for (i, d) in [30, 100, 10, 90, 20, 80, 40, 70, 50, 60].iter().enumerate() {
        publish_result(&js, "result.job.a1", json!({"result_id": format!("a-{d}"), "job_id": "scan-a", "success": i % 2 == 0, "started_at": at(1_000), "finished_at": at(1_000 + d)})).await;
        if i == 4 {
            // A second batch, so that scan-a has more than one block to merge.
            app.wait_caught_up().await;
        }
    }
    // scan-b: 5 ms, 500 ms, and a finish before its start (clock skew) that counts as 0.
    publish_result(&js, "result.traffic.a2", json!({"result_id": "b-5", "job_id": "scan-b", "exit_code": 0, "started_at": at(0), "finished_at": at(5)})).await;
    publish_result(&js, "result.traffic.a2", json!({"result_id": "b-500", "job_id": "scan-b", "exit_code": 0, "started_at": at(0), "finished_at": at(500)})).await;
    publish_result(&js, "result.traffic.a2", json!({"result_id": "b-skew", "job_id": "scan-b", "exit_code": 1, "started_at": at(900), "finished_at": at(100)})).await;
    // Not counted: no job, no start, or finished before `since`.
    publish_result(
        &js,
        "result.job.a1",
        json!({"result_id": "n1", "success": true, "started_at": at(0), "finished_at": at(9)}),
    )
    .await;
    publish_result(
        &js,
        "result.job.a1",
        json!({"result_id": "n2", "job_id": "scan-a", "success": true, "finished_at": at(9)}),
    )
    .await;
    publish_result(&js, "result.job.a1", json!({"result_id": "n3", "job_id": "scan-c", "success": true, "started_at": at(-20_000), "finished_at": at(-10_000)})).await;
    app.wait_caught_up().await;

    let since = at(0).replace('+', "%2B");
    let v = app
        .get_json(
            &format!("/api/v1/results/durations?since={since}"),
            Role::Viewer,
        )
        .await;
    assert_eq!(
        v["items"],
        json!([
            {"job_id": "scan-b", "count": 3, "min_ms": 0, "p50_ms": 5, "p95_ms": 500, "p99_ms": 500, "max_ms": 500, "mean_ms": 505.0 / 3.0, "max_result_id": "b-500"},
            {"job_id": "scan-a", "count": 10, "min_ms": 10, "p50_ms": 50, "p95_ms": 100, "p99_ms": 100, "max_ms": 100, "mean_ms": 55.0, "max_result_id": "a-100"},
        ])
    );
    // The default window (24 h) also sees scan-c.
    let all = app
        .get_json("/api/v1/results/durations", Role::Viewer)
        .await;
    assert_eq!(all["items"].as_array().unwrap().len(), 3);
    // There every block of scan-a and scan-b lies wholly inside the window: same figures.
    let whole: Vec<&Value> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["job_id"] != "scan-c")
        .collect();
    assert_eq!(json!(whole), v["items"]);

    // A result id seen before counts once, even with another duration.
    publish_result(&js, "result.job.a1", json!({"result_id": "a-100", "job_id": "scan-a", "success": true, "started_at": at(0), "finished_at": at(9_000)})).await;
    app.wait_caught_up().await;
    let again = app
        .get_json(
            &format!("/api/v1/results/durations?since={since}"),
            Role::Viewer,
        )
        .await;
    assert_eq!(again["items"], v["items"]);

    // Merging the per-batch blocks changes no answer.
    let (db_path, dir) = app.stop().await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .unwrap();
    let count = "SELECT COUNT(*) FROM duration_blocks";
    let before: i64 = sqlx::query_scalar(count).fetch_one(&pool).await.unwrap();
    while orrery::projections::results::compact_duration_blocks(&pool, 500)
        .await
        .unwrap()
        > 0
    {}
    let after: i64 = sqlx::query_scalar(count).fetch_one(&pool).await.unwrap();
    // (The daemon's own maintenance may have merged some already.)
    assert!(before >= after, "{before} blocks merged into {after}");
    let groups: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT DISTINCT hour, job_id FROM duration_blocks)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(after, groups, "one block per hour and job");
    pool.close().await;
    let app = spawn_app_with(settings(&nats.url(), &db_path), dir).await;
    let merged = app
        .get_json(
            &format!("/api/v1/results/durations?since={since}"),
            Role::Viewer,
        )
        .await;
    assert_eq!(merged["items"], v["items"]);
}

/// A run the durations test publishes: job, result id, finish (Unix ms), duration.
type Run = (String, String, i64, i64);

/// `/results/durations` computed the plain way: every run of the window, sorted.
fn durations_by_sorting(runs: &[Run], since: i64) -> Value {
    let mut jobs: std::collections::BTreeMap<&str, Vec<(i64, &str)>> = Default::default();
    for (job, id, finished, ms) in runs {
        if *finished >= since {
            jobs.entry(job).or_default().push((*ms, id));
        }
    }
    let mut items: Vec<(i64, Value)> = jobs
        .into_iter()
        .map(|(job, mut v)| {
            v.sort();
            let n = v.len();
            let rank = |percent: usize| v[(percent * n).div_ceil(100).clamp(1, n) - 1].0;
            let sum: i64 = v.iter().map(|(ms, _)| ms).sum();
            let (max_ms, max_id) = *v.last().unwrap();
            let item = json!({"job_id": job, "count": n, "min_ms": v[0].0, "p50_ms": rank(50),
                "p95_ms": rank(95), "p99_ms": rank(99), "max_ms": max_ms,
                "mean_ms": sum as f64 / n as f64, "max_result_id": max_id});
            (rank(95), item)
        })
        .collect();
    items.sort_by_key(|(p95, _)| std::cmp::Reverse(*p95));
    Value::Array(items.into_iter().map(|(_, item)| item).collect())
}

fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
        .replace('+', "%2B")
}

#[tokio::test]
async fn durations_stay_exact_as_late_runs_land_in_hours_already_read() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    let now = orrery::window::now_ms();
    let mut runs: Vec<Run> = Vec::new();
    let publish = |runs: &mut Vec<Run>, i: i64, finished: i64| {
        // Three jobs, durations with many ties (the ranks and the longest run's id matter).
        let run = (
            format!("job-{}", i % 3),
            format!("r-{i:04}"),
            finished,
            (i * 7_919) % 450,
        );
        let (job, id, f, ms) = run.clone();
        runs.push(run);
        let js = js.clone();
        async move {
            publish_result(&js, "result.job.a1", json!({"result_id": id, "job_id": job, "success": true,
                "started_at": rfc3339_ms(f - ms).replace("%2B", "+"), "finished_at": rfc3339_ms(f).replace("%2B", "+")})).await;
        }
    };
    // 300 runs over the last five hours, one every 61 s.
    for i in 0..300 {
        publish(&mut runs, i, now - i * 61_000).await;
    }
    app.wait_caught_up().await;
    let windows = [
        now - 4 * 3_600_000 - 1_234_567,
        now - 2 * 3_600_000 - 600_000,
        now - 3_000_000,
    ];
    let check = |runs: Vec<Run>| {
        let app = &app;
        async move {
            for since in windows {
                let path = format!("/api/v1/results/durations?since={}", rfc3339_ms(since));
                // Twice: the second answer comes from what the first kept.
                for _ in 0..2 {
                    let v = app.get_json(&path, Role::Viewer).await;
                    assert_eq!(
                        v["items"],
                        durations_by_sorting(&runs, since),
                        "since {since}"
                    );
                }
            }
        }
    };
    check(runs.clone()).await;
    // Late runs: into the hours each window cuts, hours wholly inside them, the open hour,
    // and before every window; then the same answers as sorting everything.
    let mut i = 300;
    for window in windows {
        for at in [window + 1, window - 1, window + 3_600_000, now - 1] {
            publish(&mut runs, i, at).await;
            i += 1;
        }
    }
    app.wait_caught_up().await;
    check(runs.clone()).await;
    // Waves into the open hour, whose kept blocks each committed batch extends: new runs,
    // then result ids already counted (re-sent with other times, which must not count)
    // beside new ones, then new runs again.
    for wave in 0..3 {
        let mut resent = Vec::new();
        for k in 0..20 {
            if wave == 1 && k % 2 == 0 {
                let (job, id, f, ms) = runs[k * 7].clone();
                resent.push(id.clone());
                publish_result(
                    &js,
                    "result.job.a1",
                    json!({"result_id": id, "job_id": job, "success": true,
                    "started_at": rfc3339_ms(now - 5 - ms - 1_000).replace("%2B", "+"),
                    "finished_at": rfc3339_ms(now - 5 + f % 3).replace("%2B", "+")}),
                )
                .await;
            } else {
                publish(&mut runs, i, now - 2 - k as i64).await;
                i += 1;
            }
        }
        assert!(wave != 1 || resent.len() == 10);
        app.wait_caught_up().await;
        check(runs.clone()).await;
    }
}

#[tokio::test]
async fn resource_metrics_aggregate_per_timestamp_and_hide_ids_from_non_admins() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    let now = time::OffsetDateTime::now_utc()
        .replace_millisecond(0)
        .unwrap();
    let at = |secs: u64| {
        (now - Duration::from_secs(secs))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let c = |id: &str, w: &str, role: &str, cpu: f64, mem: i64, lim: i64| json!({"container_id": id, "workload_id": w, "role": role, "cpu_percent": cpu, "memory_usage": mem, "memory_limit": lim});
    let hb = |stats: Value, containers: Vec<Value>| json!({"hostname": "h", "stats": stats, "containers": containers});
    let t1 = at(600);
    let t2 = at(300);
    let t3 = at(30);
    publish_at(
        &js,
        "heartbeat.a1",
        &t1,
        hb(
            json!({"cpu_percent": 10.0, "memory_usage": 1, "memory_limit": 8}),
            vec![c("c1", "shop", "web", 10.0, 100, 1_000)],
        ),
    )
    .await;
    publish_at(
        &js,
        "heartbeat.a2",
        &t1,
        hb(
            json!({"cpu_percent": 20.0, "memory_usage": 2, "memory_limit": 8}),
            vec![
                c("c2", "shop", "db", 5.0, 50, 2_000),
                c("c9", "blog", "web", 1.0, 10, 100),
            ],
        ),
    )
    .await;
    publish_at(
        &js,
        "heartbeat.a1",
        &t2,
        hb(
            json!({"cpu_percent": 30.0, "memory_usage": 3, "memory_limit": 8}),
            vec![c("c1", "shop", "web", 20.0, 200, 1_000)],
        ),
    )
    .await;
    publish_at(
        &js,
        "heartbeat.a1",
        &t3,
        hb(
            json!({"cpu_percent": 40.0}),
            vec![
                c("c1", "shop", "web", 50.0, 300, 1_000),
                c("c3", "blog", "worker", 70.0, 10, 100),
            ],
        ),
    )
    .await;
    publish_at(
        &js,
        "heartbeat.a2",
        &t3,
        hb(Value::Null, vec![c("c2", "shop", "db", 60.0, 900, 2_000)]),
    )
    .await;
    // A deploy makes "api" a known workload without samples.
    publish_result(&js, "result.deploy.a1", json!({"result_id": "d-api", "workload_id": "api", "reference": "r@sha256:aa", "exit_code": 0})).await;
    app.wait_caught_up().await;

    let h = app
        .get_json(
            "/api/v1/workloads/shop/stats/history?window=1h",
            Role::Viewer,
        )
        .await;
    let fmt =
        |t: &str| orrery::window::format_unix_ms(orrery::window::parse_rfc3339_ms(t).unwrap());
    assert_eq!(
        h,
        json!([
            {"at": fmt(&t1), "cpu_percent": 15.0, "memory_usage": 150, "memory_limit": 2_000, "containers": 2},
            {"at": fmt(&t2), "cpu_percent": 20.0, "memory_usage": 200, "memory_limit": 1_000, "containers": 1},
            {"at": fmt(&t3), "cpu_percent": 110.0, "memory_usage": 1_200, "memory_limit": 2_000, "containers": 2},
        ])
    );
    let short = app
        .get_json(
            "/api/v1/workloads/shop/stats/history?window=5m",
            Role::Viewer,
        )
        .await;
    assert_eq!(short.as_array().unwrap().len(), 1);
    assert_eq!(
        app.get_json("/api/v1/workloads/api/stats/history", Role::Viewer)
            .await,
        json!([])
    );
    assert_eq!(
        app.get("/api/v1/workloads/nope/stats/history", Some(Role::Viewer))
            .await
            .status(),
        404
    );

    let sys = app
        .get_json(
            "/api/v1/system/stats/history?window=1h30m&agent=a1",
            Role::Viewer,
        )
        .await;
    let cpus: Vec<f64> = sys
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["cpu_percent"].as_f64().unwrap())
        .collect();
    assert_eq!(cpus, [10.0, 30.0, 40.0], "ascending, a1 only");
    let all = app
        .get_json("/api/v1/system/stats/history", Role::Viewer)
        .await;
    assert_eq!(
        all.as_array().unwrap().len(),
        4,
        "a2's heartbeat without stats has no sample"
    );

    // Top: latest sample per container within the last 2 minutes only.
    let top = app
        .get_json("/api/v1/system/stats/top?by=cpu&limit=2", Role::Viewer)
        .await;
    let rows: Vec<(String, f64, String)> = top["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["owner_name"].as_str().unwrap().to_owned(),
                r["cpu_percent"].as_f64().unwrap(),
                r["container_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("blog/worker".to_owned(), 70.0, String::new()),
            ("shop/db".to_owned(), 60.0, String::new())
        ]
    );
    let top = app
        .get_json("/api/v1/system/stats/top?by=memory", Role::Admin)
        .await;
    let ids: Vec<&str> = top["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["container_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c2", "c1", "c3"], "admins see ids; c9 is too old");
    assert_eq!(top["items"][1]["memory_usage"], 300, "c1's latest sample");
}

#[tokio::test]
async fn agents_list_pages_and_filters_by_staleness() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    for (a, secs) in [("a1", 5), ("a2", 500), ("a3", 5), ("a4", 500), ("a5", 5)] {
        beat(&js, a, secs).await;
    }
    app.wait_caught_up().await;
    let page = app.get_json("/api/v1/agents?limit=2", Role::Viewer).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_cursor"], "a2");
    let next = app
        .get_json("/api/v1/agents?limit=2&cursor=a2", Role::Viewer)
        .await;
    assert_eq!(next["items"][0]["agent_id"], "a3");
    let last = app
        .get_json("/api/v1/agents?limit=2&cursor=a4", Role::Viewer)
        .await;
    assert!(last["next_cursor"].is_null());
    // By default the fleet is degraded only once every known agent is stale.
    assert_eq!(fleet(&app).await.0, 200);
    let stale = app
        .get_json("/api/v1/agents?stale=true", Role::Viewer)
        .await;
    let ids: Vec<&str> = stale["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a2", "a4"]);
    let fresh = app
        .get_json("/api/v1/agents?stale=false", Role::Viewer)
        .await;
    assert_eq!(fresh["items"].as_array().unwrap().len(), 3);
    let one = app.get_json("/api/v1/agents/a1", Role::Viewer).await;
    assert_eq!(one["hostname"], "a1.corp");
    assert_eq!(one["labels"], json!({"site": "osaka"}));
    assert_eq!(one["stale"], false);
    assert_eq!(
        app.get("/api/v1/agents/zz", Some(Role::Viewer))
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn the_deploy_ledger_hides_errors_prunes_and_guards_rollbacks() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_with(&nats, |s| s.deploy_history_keep = Some(3)).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    let secret = "registry-password-hunter2xyz";
    let base = time::OffsetDateTime::now_utc() - Duration::from_secs(3_600);
    let at = |m: u64| {
        (base + Duration::from_secs(m * 60))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let deploys = [
        ("d1", "shop@sha256:0001", "deploy", true),
        ("d2", "shop@sha256:0002", "deploy", true),
        ("d3", "shop:latest", "deploy", true),
        ("d4", "shop@sha256:0004", "deploy", false),
        ("d5", "shop@sha256:0002", "rollback", true),
        ("d6", "shop@sha256:0006", "deploy", true),
    ];
    for (i, (id, reference, reason, ok)) in deploys.iter().enumerate() {
        let mut data = json!({"result_id": id, "workload_id": "shop", "reference": reference, "reason": reason, "exit_code": if *ok { 0 } else { 1 }, "finished_at": at(i as u64)});
        if !ok {
            data["error"] = json!(format!("pull access denied: {secret}"));
        }
        publish_result(&js, "result.deploy.agent-1", data).await;
    }
    // Invalid deploy results go to dead letters with the error text scrubbed.
    publish_result(&js, "result.deploy.agent-1", json!({"result_id": "bad", "reason": "deploy", "exit_code": 1, "error": format!("auth {secret}")})).await;
    app.wait_caught_up().await;

    // Newest three kept; the failure reads as the marker.
    let v = app
        .get_json("/api/v1/workloads/shop/deploys", Role::Viewer)
        .await;
    let ids: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deploy_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["d6", "d5", "d4"]);
    assert_eq!(v["items"][2]["error"], "deploy failed (see server logs)");
    assert_eq!(v["items"][2]["success"], false);
    assert_eq!(v["items"][1]["reason"], "rollback");
    assert!(v["items"][0]["error"].is_null());
    let paged = app
        .get_json(
            "/api/v1/workloads/shop/deploys?limit=1&offset=1",
            Role::Viewer,
        )
        .await;
    assert_eq!(paged["items"][0]["deploy_id"], "d5");
    assert_eq!(
        app.get("/api/v1/workloads/nope/deploys", Some(Role::Viewer))
            .await
            .status(),
        404
    );
    // The deploy results still count as execution results.
    assert_eq!(app.count("since=2h&kind=deploy&success=false").await, 1);

    let rb = |id: &str| json!({"deploy_id": id}).to_string();
    let path = "/api/v1/workloads/shop/rollback";
    assert_eq!(
        app.post(path, Some(Role::Operator), rb("d6"))
            .await
            .status(),
        403
    );
    assert_eq!(
        app.post(path, Some(Role::Admin), rb("d4")).await.status(),
        409,
        "failed deploy"
    );
    assert_eq!(
        app.post(path, Some(Role::Admin), rb("d1")).await.status(),
        404,
        "pruned"
    );
    assert_eq!(
        app.post(path, Some(Role::Admin), rb("zz")).await.status(),
        404
    );
    assert_eq!(
        app.post(
            "/api/v1/workloads/nope/rollback",
            Some(Role::Admin),
            rb("d6")
        )
        .await
        .status(),
        404
    );
    assert_eq!(
        app.post(path, Some(Role::Admin), "{\"deploy\":1}")
            .await
            .status(),
        400
    );
    assert_eq!(
        app.post(path, Some(Role::Admin), "nope").await.status(),
        400
    );

    // An unpinned reference cannot be rolled back to (d3 was pruned, so use another workload).
    publish_result(&js, "result.deploy.agent-1", json!({"result_id": "u1", "workload_id": "blog", "reference": "blog:latest", "exit_code": 0})).await;
    app.wait_caught_up().await;
    let res = app
        .post(
            "/api/v1/workloads/blog/rollback",
            Some(Role::Admin),
            rb("u1"),
        )
        .await;
    assert_eq!(res.status(), 422);
    let commands = stream_state(&js, "COMMANDS").await.1;
    assert_eq!(commands, 0, "nothing published for refused rollbacks");

    let res = app.post(path, Some(Role::Admin), rb("d5")).await;
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    let msg = js
        .get_stream("COMMANDS")
        .await
        .unwrap()
        .get_raw_message(answer["seq"].as_u64().unwrap())
        .await
        .unwrap();
    assert_eq!(msg.subject.as_str(), "command.deploy.shop");
    let body: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(body["id"], answer["command_id"]);
    assert_eq!(body["data"]["command_id"], answer["command_id"]);
    assert_eq!(body["data"]["reference"], "shop@sha256:0002");
    assert_eq!(body["data"]["reason"], "rollback");
    assert_eq!(body["data"]["requested_by"], "tester");
    assert_eq!(
        msg.headers.get("Nats-Msg-Id").unwrap().as_str(),
        answer["command_id"].as_str().unwrap()
    );

    // The secret appears in no response and nowhere in the database file.
    let mut seen = v.to_string();
    seen.push_str(
        &app.get_json("/api/v1/dead-letters?stream=RESULTS", Role::Admin)
            .await
            .to_string(),
    );
    let (db_path, _dir) = app.stop().await;
    let mut bytes = std::fs::read(&db_path).unwrap();
    if let Ok(wal) = std::fs::read(format!("{}-wal", db_path.display())) {
        bytes.extend(wal);
    }
    assert!(!seen.contains(secret));
    assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
}

/// Publishes one heartbeat with one container per `(agent, time)`, lets the daemon project
/// them, stops it, prunes with a retention of a day and returns (rows deleted, system and
/// container samples left).
async fn prune_a_day_of(times: &[(&str, String)]) -> (u64, (i64, i64)) {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    let c = json!([{"container_id": "c1", "workload_id": "shop", "cpu_percent": 1.0}]);
    for (agent, time) in times {
        publish_at(
            &js,
            &format!("heartbeat.{agent}"),
            time,
            json!({"stats": {"cpu_percent": 1.0}, "containers": c}),
        )
        .await;
    }
    app.wait_caught_up().await;
    let (db_path, _dir) = app.stop().await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .unwrap();
    let deleted =
        orrery::projections::heartbeats::prune_samples(&pool, Duration::from_secs(86_400))
            .await
            .unwrap();
    let left: (i64, i64) = sqlx::query_as("SELECT (SELECT COUNT(*) FROM system_stats_samples), (SELECT COUNT(*) FROM container_stats_samples)")
        .fetch_one(&pool)
        .await
        .unwrap();
    let agents: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM agents")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(agents, 2, "agents are never pruned");
    (deleted, left)
}

#[tokio::test]
async fn old_samples_are_pruned_and_recent_ones_kept() {
    let days = |d: u64| Duration::from_secs(d * 86_400);
    let (deleted, left) = prune_a_day_of(&[
        ("a1", ago(days(3))),
        ("a1", ago(Duration::from_secs(60))),
        ("a2", ago(days(2))),
    ])
    .await;
    assert_eq!(deleted, 4, "two system and two container samples");
    assert_eq!(left, (1, 1));
}

#[tokio::test]
async fn samples_are_pruned_by_the_newest_event_not_by_the_clock() {
    // A replica catching up on heartbeats sent ten days ago keeps the last day of them, as
    // the replica that projected them live did: pruning by the wall clock would drop all.
    let days = |d: u64| Duration::from_secs(d * 86_400);
    let (deleted, left) = prune_a_day_of(&[
        ("a1", ago(days(13))),
        ("a1", ago(days(10) + Duration::from_secs(60))),
        ("a2", ago(days(10) + Duration::from_secs(3_600))),
        ("a2", ago(days(12))),
    ])
    .await;
    assert_eq!(deleted, 4, "the samples of 12 and 13 days ago");
    assert_eq!(left, (2, 2));
}

#[tokio::test]
async fn an_agent_clock_far_ahead_prunes_nobody_recent() {
    let ahead = time::OffsetDateTime::now_utc() + time::Duration::days(30);
    let ahead = ahead
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (deleted, left) = prune_a_day_of(&[
        ("a1", ago(Duration::from_secs(3 * 86_400))),
        ("a1", ago(Duration::from_secs(60))),
        ("a2", ahead),
    ])
    .await;
    assert_eq!(deleted, 2, "only the sample three days old");
    assert_eq!(left, (2, 2));
}

#[tokio::test]
async fn every_bad_window_since_by_and_limit_is_a_422() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let cases = [
        ("/api/v1/system/stats/history?window=0m", "window"),
        ("/api/v1/system/stats/history?window=25h", "window"),
        ("/api/v1/system/stats/history?window=2x", "window"),
        ("/api/v1/system/stats/history?window=-1h", "window"),
        ("/api/v1/system/stats/history?window=", "window"),
        ("/api/v1/system/stats/history?window=1h30", "window"),
        ("/api/v1/system/stats/history?agent=a.b", "agent"),
        ("/api/v1/workloads/shop/stats/history?window=2d", "window"),
        ("/api/v1/system/stats/top?by=disk", "by"),
        ("/api/v1/system/stats/top?limit=0", "limit"),
        ("/api/v1/system/stats/top?limit=101", "limit"),
        ("/api/v1/results/durations?since=yesterday", "since"),
        ("/api/v1/results/durations?since=1h", "since"),
        ("/api/v1/agents?limit=0", "limit"),
        ("/api/v1/agents?limit=1001", "limit"),
        ("/api/v1/agents?stale=maybe", "stale"),
        ("/api/v1/agents?cursor=a%20b", "cursor"),
        ("/api/v1/workloads/shop/deploys?limit=201", "limit"),
        ("/api/v1/workloads/shop/deploys?offset=-1", "offset"),
    ];
    for (path, parameter) in cases {
        let res = app.get(path, Some(Role::Viewer)).await;
        assert_eq!(res.status(), 422, "{path}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["parameter"], parameter, "{path}");
    }
}

/// Publishes `count` runs of `jobs` jobs, one every `every_min` minutes back from a minute
/// before `now`, each a little longer than the one before.
async fn publish_runs(
    js: &async_nats::jetstream::Context,
    now: i64,
    count: i64,
    every_min: i64,
    jobs: i64,
) {
    let format = orrery::window::format_unix_ms;
    for i in 0..count {
        let finished = now - 60_000 - i * every_min * 60_000;
        publish_result(
            js,
            "result.job.a1",
            json!({"result_id": format!("r{i}"), "job_id": format!("job-{}", i % jobs),
                   "success": true, "started_at": format(finished - 100 - i),
                   "finished_at": format(finished)}),
        )
        .await;
    }
}

/// A herd of requests for one cold window (every dashboard right after a start) reads it
/// from the database once: the others wait for that read and answer from memory, alike.
#[tokio::test]
async fn concurrent_cold_durations_read_the_database_once() {
    use orrery::projections::results::durations::{job_durations, DurationCache};

    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    let now = orrery::window::now_ms();
    // Runs finished over the last five hours, so that a four-hour window has a start hour
    // (read from the results) and whole hours (merged from the blocks).
    publish_runs(&js, now, 300, 1, 3).await;
    app.wait_caught_up().await;
    let db = orrery::db::open(&app.db_path, 8).await.unwrap();
    let since = now - 4 * 3_600_000;

    let cache = DurationCache::new();
    let herd = (0..8).map(|_| job_durations(&db.readers, &cache, since, now));
    let answers: Vec<_> = futures::future::join_all(herd)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        cache.reads(),
        2,
        "one merged range and one start hour, once"
    );
    assert!(answers.iter().all(|a| a == &answers[0]));
    assert_eq!(answers[0].len(), 3, "{:?}", answers[0]);

    // The same window asked again reads nothing, and answers what a fresh cache reads.
    let again = job_durations(&db.readers, &cache, since, now)
        .await
        .unwrap();
    assert_eq!(cache.reads(), 2);
    let fresh = DurationCache::new();
    assert_eq!(
        job_durations(&db.readers, &fresh, since, now)
            .await
            .unwrap(),
        again
    );
    assert_eq!(again, answers[0]);
    db.close().await;
}

/// The dashboard's 24 h durations window is read in the background once the results are
/// projected: the requests that come afterwards read nothing from the database.
#[tokio::test]
async fn the_default_durations_window_is_warm_before_anyone_asks() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    publish_runs(&js, orrery::window::now_ms(), 120, 11, 4).await;
    app.wait_caught_up().await;
    let reads = || async {
        let text = app.get("/metrics", None).await.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("orrery_durations_cache_reads_total "))
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    // Bounded: the warmer looks every 5 s.
    let mut warmed = 0;
    for _ in 0..150 {
        warmed = reads().await;
        if warmed >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(warmed >= 2, "the window was not read in the background");
    // A request in the same hour as the warm-up reads nothing (when the window's hour
    // turns meanwhile, it may read the new hour once: measure again).
    for _ in 0..3 {
        let hour = orrery::window::now_ms() / 3_600_000;
        let before = reads().await;
        let answers: Vec<Value> = futures::future::join_all(
            (0..8).map(|_| app.get_json("/api/v1/results/durations", Role::Viewer)),
        )
        .await;
        let after = reads().await;
        if orrery::window::now_ms() / 3_600_000 != hour {
            continue;
        }
        assert_eq!(after, before, "requests read from the database");
        assert_eq!(
            answers[0]["items"].as_array().unwrap().len(),
            4,
            "{}",
            answers[0]
        );
        assert!(answers.iter().all(|a| a["items"] == answers[0]["items"]));
        return;
    }
    panic!("the hour turned during every attempt");
}
