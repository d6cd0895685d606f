//! Retention by event time: a replica that prunes while it ingests and one rebuilt later,
//! which never pruned, hold the same kept rows (equal digests); what expired is new again.

use std::path::Path;
use std::time::Duration;

use orrery::natsd::NatsServer;
use orrery::token::Role;
use serde_json::{json, Value};

use crate::helpers::*;

/// The retention both replicas run with: short enough for a test to see rows expire.
const RETENTION: [(&str, &str); 5] = [
    ("ORRERY_RESULTS_RETENTION_SECS", "3600"),
    ("ORRERY_ALERTS_RETENTION_SECS", "2"),
    ("ORRERY_MUTATIONS_RETENTION_SECS", "3600"),
    ("ORRERY_DEAD_LETTERS_RETENTION_SECS", "2"),
    ("ORRERY_WORK_ITEMS_RETENTION_SECS", "0"),
];

fn retention_settings(nats_url: &str, db: &Path) -> orrery::Settings {
    orrery::Settings {
        results_retention_secs: Some(3600),
        alerts_retention_secs: Some(2),
        mutations_retention_secs: Some(3600),
        dead_letters_retention_secs: Some(2),
        work_items_retention_secs: Some(0),
        ..settings(nats_url, db)
    }
}

/// Runs the orrery binary with the test's retention; its stdout.
fn cli(args: &[&str], db: &Path, nats_url: &str) -> Vec<u8> {
    let mut env = RETENTION.to_vec();
    env.push(("ORRERY_NATS_URL", nats_url));
    orrery_cli(args, db, &env)
}

async fn rows(db: &Path, table: &str) -> i64 {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let n = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

fn table_rows(digest: &Value, stream: &str, table: &str) -> u64 {
    digest["read_models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["stream"] == stream)
        .unwrap()["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == table)
        .unwrap()["rows"]
        .as_u64()
        .unwrap()
}

async fn publish_alerts(js: &async_nats::jetstream::Context, ids: &[&str]) {
    for id in ids {
        publish_result(
            js,
            "alert.sentry.shop",
            json!({"provider_event_id": id, "stage": "firing", "fingerprint": "fp-a",
                   "alertname": "Crash"}),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_pruning_while_it_ingests_and_one_rebuilt_later_agree() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a_db = dir.path().join("a.db");
    let a = spawn_app_with(
        retention_settings(&nats.url(), &a_db),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

    // Results over the last three hours (one hour kept), a dead letter, finished and pending
    // mutations from two hours ago and from now, and alerts whose ids and group recur.
    for i in 0..180u64 {
        publish_at(
            &js,
            &format!("result.scan.a{}", i % 5),
            &ago(Duration::from_secs(i * 60)),
            json!({"result_id": format!("r{i}"), "job_id": "j", "exit_code": i % 3}),
        )
        .await;
    }
    publish_raw(&js, "result.scan.a1", "bad-1", b"{".to_vec())
        .await
        .await
        .unwrap();
    let two_hours = ago(Duration::from_secs(7_200));
    for (id, state, at) in [
        ("old-applied", "applied", &two_hours),
        ("old-failed", "failed", &two_hours),
        ("old-pending", "enqueued", &two_hours),
        ("new-applied", "applied", &ago(Duration::ZERO)),
    ] {
        publish_at(
            &js,
            &format!("topology.t1.mutation.{state}"),
            at,
            json!({"mutation_id": id, "op": "add", "spec": {"v": 1}, "actor": "alice"}),
        )
        .await;
    }
    // Runs linked to alerts: a group expired whole (k-gone, with an incident), a group kept
    // for its newest run with all it counted (k-kept), groups that expired and come back
    // (k-back in one batch, k-old after the pause), runs waiting for an alert that never
    // comes (one expired), and one waiting for s-1, published just below.
    let ninety_minutes = ago(Duration::from_secs(5_400));
    let ten_minutes = ago(Duration::from_secs(600));
    let now = ago(Duration::ZERO);
    let by_key = |k: &str| json!({"recurrence_key": k});
    let by_event = |id: &str| json!({"provider": "sentry", "provider_event_id": id});
    for (id, links, at, incident) in [
        ("run-gone", by_key("k-gone"), &two_hours, Some("inc-1")),
        // Not expired when run-kept-2 joins; expired by itself after the pause below.
        (
            "run-kept-1",
            by_key("k-kept"),
            &ago(Duration::from_secs(3_599)),
            None,
        ),
        ("run-kept-2", by_key("k-kept"), &ten_minutes, None),
        ("run-old-1", by_key("k-old"), &two_hours, Some("inc-2")),
        ("run-old-2", by_key("k-old"), &ninety_minutes, None),
        ("run-back-1", by_key("k-back"), &two_hours, None),
        ("run-back-2", by_key("k-back"), &now, None),
        ("run-wait-old", by_event("never"), &two_hours, None),
        ("run-wait-new", by_event("never"), &now, None),
        ("run-s1", by_event("s-1"), &now, None),
    ] {
        let mut links = links;
        if let Some(incident) = incident {
            links["incident_id"] = json!(incident);
        }
        publish_at(
            &js,
            "result.repair.a0",
            at,
            json!({"result_id": id, "exit_code": 0, "links": links, "run_state": "succeeded"}),
        )
        .await;
    }
    publish_alerts(&js, &["s-1", "s-1", "s-2"]).await;
    // A group seen only now: it expires, and leaves the answers once pruned.
    publish_result(
        &js,
        "alert.sentry.shop",
        json!({"provider_event_id": "b-1", "stage": "firing", "fingerprint": "fp-b",
               "alertname": "Leak"}),
    )
    .await;
    a.wait_caught_up().await;
    let before = a
        .get_json("/api/v1/alerts/recurrence?project_id=shop", Role::Viewer)
        .await;
    assert_eq!(before["groups"].as_array().unwrap().len(), 2, "{before}");
    assert_eq!(before["groups"][1]["occurrence_total"], 3, "{before}");

    // Past the alerts' and dead letters' retention: s-1 is new again, and the group restarts.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    publish_alerts(&js, &["s-1", "s-3"]).await;
    // A mutation named again after it finished past its retention starts afresh.
    publish_at(
        &js,
        "topology.t1.mutation.enqueued",
        &ago(Duration::ZERO),
        json!({"mutation_id": "old-applied", "op": "redo"}),
    )
    .await;
    publish_at(
        &js,
        "result.scan.a0",
        &ago(Duration::ZERO),
        json!({"result_id": "r-last", "job_id": "j", "exit_code": 0}),
    )
    .await;
    publish_at(
        &js,
        "result.repair.a0",
        &ago(Duration::ZERO),
        json!({"result_id": "run-old-3", "exit_code": 1,
               "links": {"recurrence_key": "k-old"}, "run_state": "failed"}),
    )
    .await;
    a.wait_caught_up().await;
    let after = a
        .get_json("/api/v1/alerts/recurrence?project_id=shop", Role::Viewer)
        .await;
    assert_eq!(after["groups"][0]["occurrence_total"], 2, "{after}");
    assert_eq!(after["groups"][0]["duplicate_total"], 0, "{after}");
    let groups = || async {
        a.get_json("/api/v1/alerts/recurrence?project_id=shop", Role::Viewer)
            .await["groups"]
            .as_array()
            .unwrap()
            .len()
    };

    // A's pruner removes what expired; /ready says how far back it reaches.
    wait_until(
        Duration::from_secs(30),
        "the pruner to remove expired rows",
        || async {
            let ready = a.get_json("/ready", Role::Viewer).await;
            ready["retention"].as_array().is_some_and(|r| {
                ["RESULTS", "ALERTS", "TOPOLOGY"].iter().all(|s| {
                    r.iter()
                        .any(|m| m["stream"] == *s && m["pruned_rows"].as_u64() > Some(0))
                })
            })
        },
    )
    .await;
    // The page read before the pruning is not served after it. (Rows counted as pruned do
    // not mean the pass is over: its later tables, the group among them, may come a few
    // chunks and pauses later. With no event published meanwhile, only the pruning can
    // refresh the cached page, so a page kept past it fails here.)
    wait_until(
        Duration::from_secs(30),
        "the expired group to leave the answer",
        || async { groups().await == 1 },
    )
    .await;
    let ready = a.get_json("/ready", Role::Viewer).await;
    let results = ready["retention"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["stream"] == "RESULTS")
        .unwrap();
    assert_eq!(results["retention_secs"], 3600, "{ready}");
    assert!(results["oldest_kept_at"].as_str().unwrap() >= results["cutoff_at"].as_str().unwrap());
    let metrics = a.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("orrery_retention_oldest_kept_timestamp_seconds{stream=\"RESULTS\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("orrery_retention_pruned_rows_total{stream=\"ALERTS\"}"));
    assert!(rows(&a_db, "execution_results").await <= 62 + 5);
    // Runs: those past the retention gone, each by its own time; groups keep their figures.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", a_db.display()))
        .await
        .unwrap();
    let runs: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT result_id, recurrence_key FROM alert_runs ORDER BY result_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let runs: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        runs,
        [
            "run-back-2",
            "run-kept-2",
            "run-old-3",
            "run-s1",
            "run-wait-new"
        ]
    );
    let groups: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT recurrence_key, project_id, total, failed FROM alert_run_groups \
         ORDER BY recurrence_key",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let keys: Vec<(&str, &str, i64, i64)> = groups
        .iter()
        .map(|g| (g.0.as_str(), g.1.as_str(), g.2, g.3))
        .collect();
    assert_eq!(
        keys,
        [
            ("fp:fp-a", "shop", 1, 0),
            ("k-back", "", 1, 0),
            ("k-kept", "", 2, 0),
            ("k-old", "", 1, 1)
        ],
        "run-s1 joined s-1's group; k-back and k-old started afresh"
    );
    let incidents: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM alert_run_incidents")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(incidents, 0, "inc-1 and inc-2 left with their groups");
    pool.close().await;
    assert_eq!(
        rows(&a_db, "topology_mutations").await,
        3,
        "pending, new and renewed kept"
    );
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", a_db.display()))
        .await
        .unwrap();
    // Nothing of the finished one is merged in: no spec or actor of its.
    let renewed: (String, Option<String>, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT state, op, spec, actor FROM topology_mutations \
         WHERE mutation_id = 'old-applied'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(
        renewed,
        ("enqueued".into(), Some("redo".into()), None, None)
    );
    assert_eq!(rows(&a_db, "dead_letters").await, 0);

    // B: rebuilt from the same stream later, by the CLI, which never prunes.
    let b_db = dir.path().join("b.db");
    cli(&["rebuild"], &b_db, &nats.url());
    assert_eq!(rows(&b_db, "execution_results").await, 192);
    // B never pruned, but forgot the groups that came back after expiring, as A did.
    assert_eq!(rows(&b_db, "alert_runs").await, 8);
    assert_eq!(rows(&b_db, "dead_letters").await, 1);
    let b: Value = serde_json::from_slice(&cli(&["digest"], &b_db, &nats.url())).unwrap();
    let a_digest = a.get_json("/api/v1/admin/digest", Role::Admin).await;
    assert_eq!(a_digest, b);
    // What the digest holds is exactly what A kept.
    assert_eq!(
        table_rows(&b, "RESULTS", "execution_results") as i64,
        rows(&a_db, "execution_results").await
    );
    assert_eq!(table_rows(&b, "ALERTS", "alert_events"), 2);
    assert_eq!(table_rows(&b, "ALERTS", "alert_recurrence"), 1);
    assert_eq!(table_rows(&b, "TOPOLOGY", "topology_mutations"), 3);
    assert_eq!(table_rows(&b, "RESULTS", "alert_runs"), 5);
    assert_eq!(table_rows(&b, "RESULTS", "alert_run_groups"), 4);
}

/// Every read model's tables filled with rows on both sides of the cutoff; one pruning pass
/// must leave exactly the rows the digest counts as kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pruner_deletes_exactly_what_the_digest_no_longer_keeps() {
    use orrery::projector::prune::{prune_once, survey, Report};
    use orrery::projector::Window;
    use orrery::retention::Retention;

    const HIGH_WATER: i64 = 100_000_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let db = orrery::db::open(&path, 2).await.unwrap();
    let w = &db.writer;
    let exec = |sql: String| async move {
        sqlx::query(&sql).execute(w).await.unwrap();
    };
    for s in orrery::bus::streams::ALL {
        exec(format!(
            "INSERT INTO checkpoints (stream, last_seq, updated_at, high_water_ms) \
             VALUES ('{}', 1, {HIGH_WATER}, {HIGH_WATER})",
            s.name
        ))
        .await;
    }
    exec("INSERT INTO result_kinds VALUES ('a'), ('b')".into()).await;
    // Times from 0 to the high-water mark; 5,000 results span several chunks.
    for i in 0..5_000i64 {
        let t = i * (HIGH_WATER / 5_000);
        let kind = ["a", "b"][(i % 2) as usize];
        exec(format!(
            "INSERT INTO execution_results (result_id, kind, agent_id, success, recorded_at, seq) \
             VALUES ('r{i}', '{kind}', 'x', {}, {t}, {i})",
            i % 3 % 2
        ))
        .await;
        if i % 10 == 0 {
            exec(format!(
                "INSERT OR IGNORE INTO result_counts VALUES ('{kind}', {}, {}, 1)",
                i % 3 % 2,
                t / 60_000
            ))
            .await;
            exec(format!(
                "INSERT INTO duration_blocks VALUES ({}, 'j', '1:1', 1, 1, 'k')",
                t / 3_600_000
            ))
            .await;
        }
        if i % 25 == 0 {
            let seq = i + 1;
            // Runs linked to alerts: four to a group, groups alternately linked by key alone
            // (project '') and by event; the group across the cutoff is kept whole. And runs
            // still waiting for their alert, kept by their own time.
            let g = i / 100;
            let (project, group_project) = if g % 2 == 0 {
                ("NULL", "")
            } else {
                ("'p'", "p")
            };
            exec(format!(
                "INSERT INTO alert_runs (result_id, seq, agent_id, recorded_at, run_state, \
                 repair, verified, project_id, recurrence_key) \
                 VALUES ('run{i}', {seq}, 'x', {t}, 'succeeded', 'none', 0, {project}, 'g{g}')"
            ))
            .await;
            exec(format!(
                "INSERT INTO alert_runs (result_id, seq, agent_id, recorded_at, link_provider, \
                 link_event_id, run_state, repair, verified) \
                 VALUES ('wait{i}', {seq}, 'x', {t}, 'sentry', 'pe-none{i}', 'running', 'none', 0)"
            ))
            .await;
            exec(format!(
                "INSERT INTO alert_run_groups (recurrence_key, project_id, total, running, \
                 succeeded, failed, needs_approval, auto, manual, none, verified, latest_seq, \
                 latest_result_id, latest_agent_id, latest_state, latest_repair, \
                 latest_verified, newest_recorded_at) \
                 VALUES ('g{g}', '{group_project}', 1, 0, 1, 0, 0, 0, 0, 1, 0, {seq}, 'run{i}', \
                 'x', 'succeeded', 'none', 0, {t}) ON CONFLICT DO UPDATE SET \
                 total = total + 1, newest_recorded_at = excluded.newest_recorded_at"
            ))
            .await;
            exec(format!(
                "INSERT OR IGNORE INTO alert_run_incidents VALUES ('g{g}', '{group_project}', 'inc{g}')"
            ))
            .await;
            exec(format!(
                "INSERT INTO alert_events (seq, event_id, project_id, provider, stage, \
                 provider_event_id, has_redacted_content, redaction_version, source_ref_total, \
                 is_duplicate, is_synthetic, received_at) \
                 VALUES ({seq}, 'e{i}', 'p', 'sentry', 'firing', 'pe{i}', 0, 1, 0, 0, 0, {t})"
            ))
            .await;
            exec(format!(
                "INSERT INTO alert_event_keys (provider, provider_event_id, first_received_at, \
                 project_id) VALUES ('sentry', 'pe{i}', {t}, 'p')"
            ))
            .await;
            exec(format!(
                "INSERT INTO alert_recurrence VALUES ('p', 'k{i}', 'sentry', 1, 0, {t}, {t}, {seq})"
            ))
            .await;
            let state = ["enqueued", "applying", "applied", "failed"][(i / 25 % 4) as usize];
            exec(format!(
                "INSERT INTO topology_mutations (topology_id, mutation_id, state, updated_at, seq) \
                 VALUES ('t', 'm{i}', '{state}', {t}, {seq})"
            ))
            .await;
            exec(format!(
                "INSERT INTO work_item_history (seq, entry_id, work_item_id, project_id, kind, \
                 mode, passed, occurrences, latest_occurrence_at, recorded_at, entry) \
                 VALUES ({seq}, 'w{i}', 'wi', 'p', 'dry_run', 'm', 1, 1, {t}, {t}, '{{}}')"
            ))
            .await;
            exec(format!(
                "INSERT INTO dead_letters (stream, seq, subject, reason, payload, received_at) \
                 VALUES ('{}', {seq}, 's', 'r', x'00', {t})",
                // The streams read models project (COMMANDS has none).
                ["RESULTS", "TOPOLOGY", "ALERTS", "HEARTBEATS", "WORKITEMS"][(i / 25) as usize % 5]
            ))
            .await;
        }
    }

    let config = orrery::Settings {
        database: Some(path.clone()),
        ..Default::default()
    }
    .resolve_for(false)
    .unwrap();
    let models = orrery::projections::read_models(&config);
    let half = Duration::from_millis(HIGH_WATER as u64 / 2);
    let retention = Retention {
        results: half,
        alerts: half,
        mutations: half,
        dead_letters: half,
        work_items: half,
        samples: half,
    };
    let cutoff = HIGH_WATER / 2;
    let count = |sql: String| {
        let pool = db.readers.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&sql)
                .bind(cutoff)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let kept_tables: Vec<(&str, &str)> = models
        .iter()
        .flat_map(|(_, tables)| tables.iter())
        .filter_map(|t| match t.window {
            Some(Window::Kept { keep, .. }) => Some((t.name, keep)),
            _ => None,
        })
        .collect();
    assert_eq!(kept_tables.len(), 10, "{kept_tables:?}");
    let mut kept_before = Vec::new();
    for (table, keep) in &kept_tables {
        let kept = count(format!("SELECT COUNT(*) FROM {table} WHERE {keep}")).await;
        let all = count(format!("SELECT COUNT(*) FROM {table}")).await;
        assert!(kept > 0 && kept < all, "{table}: {kept} of {all} kept");
        kept_before.push(kept);
    }

    // Keeping everything deletes nothing.
    let report = Report::default();
    let cancel = tokio_util::sync::CancellationToken::new();
    let forever = Retention::keep_all(half);
    let n = prune_once(&db.writer, &db.readers, &models, &forever, &report, &cancel).await;
    assert_eq!(n.unwrap(), 0);

    let n = prune_once(
        &db.writer,
        &db.readers,
        &models,
        &retention,
        &report,
        &cancel,
    )
    .await
    .unwrap();
    assert!(n > 2_500, "{n} rows pruned");
    for ((table, keep), before) in kept_tables.iter().zip(kept_before) {
        let kept = count(format!("SELECT COUNT(*) FROM {table} WHERE {keep}")).await;
        let all = count(format!("SELECT COUNT(*) FROM {table}")).await;
        assert_eq!((kept, all), (before, before), "{table}");
    }
    assert_eq!(
        count("SELECT COUNT(*) FROM dead_letters WHERE received_at < ?1".into()).await,
        0
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM duration_blocks WHERE hour < ?1 / 3600000".into()).await,
        0
    );
    let results = survey(&db.readers, &models, &retention, &report)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.stream == "RESULTS")
        .unwrap();
    assert_eq!(results.cutoff_ms, Some(cutoff));
    assert!(results.oldest_ms.unwrap() >= cutoff);
    assert!(results.pruned_rows > 2_500);
    db.close().await;
}

/// Deleted rows leave free pages that SQLite reuses but never returns: `orrery compact`
/// gives them back to the file system and keeps every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_gives_free_pages_back_and_keeps_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orrery.db");
    cli(&["migrate"], &db, "nats://127.0.0.1:1");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    // 4,000 results of about a kilobyte each, then all but one deleted, as the pruner would.
    sqlx::query("INSERT INTO result_kinds VALUES ('scan')")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000) \
         INSERT INTO execution_results (result_id, kind, agent_id, success, recorded_at, seq) \
         SELECT 'r' || i, 'scan', hex(randomblob(500)), 1, i, i FROM n",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM execution_results WHERE seq > 1")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .unwrap();
    let free: i64 = sqlx::query_scalar(
        "SELECT freelist_count * page_size FROM pragma_freelist_count, pragma_page_size",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(free > 2_000_000, "{free} free bytes");
    pool.close().await;
    let before = std::fs::metadata(&db).unwrap().len();

    let out = String::from_utf8(cli(&["compact"], &db, "nats://127.0.0.1:1")).unwrap();
    assert!(out.contains("bytes before"), "{out}");
    let after = std::fs::metadata(&db).unwrap().len();
    assert!(after * 4 < before, "{before} → {after} bytes");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let kept: Vec<String> = sqlx::query_scalar("SELECT result_id FROM execution_results")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(kept, ["r1"]);
    pool.close().await;
}
