//! The execution results projection and the failure-count badge.

use std::time::Duration;

use base64::Engine;
use orrery::natsd::NatsServer;
use orrery::token::Role;
use serde_json::json;

use crate::helpers::*;

const MIN: u64 = 60;

#[tokio::test]
async fn failure_counts_are_exact_per_window_and_kind() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

    // (subject, success, minutes ago): edges straddle 1h by two minutes either side.
    let cases = [
        ("result.traffic.a1", false, 5),
        ("result.traffic.a2", false, 58),
        ("result.traffic.a1", false, 62),
        ("result.traffic.a1", true, 10),
        ("result.email.a7", false, 30),
        ("result.email.a7", false, 150),
        ("result.email.a7", true, 170),
        ("result.job.a3", false, 7 * 24 * 60 + 30), // older than 7d
    ];
    for (i, (subject, success, mins)) in cases.iter().enumerate() {
        let finished = ago(Duration::from_secs(mins * MIN));
        let data = if *success {
            json!({"result_id": format!("r{i}"), "exit_code": 0, "finished_at": finished})
        } else {
            json!({"result_id": format!("r{i}"), "success": false, "finished_at": finished})
        };
        publish_result(&js, subject, data).await;
    }
    app.wait_caught_up().await;

    assert_eq!(app.count("since=1h&success=false&kind=traffic").await, 2);
    assert_eq!(app.count("since=1h&success=false").await, 3);
    assert_eq!(app.count("since=1h&success=true").await, 1);
    assert_eq!(app.count("since=1h").await, 4);
    assert_eq!(app.count("since=63m&success=false&kind=traffic").await, 3);
    assert_eq!(app.count("since=3h&success=false").await, 5);
    assert_eq!(app.count("since=3h&kind=email").await, 3);
    assert_eq!(app.count("since=7d&success=false").await, 5);
    assert_eq!(app.count("since=1h&kind=deploy").await, 0);
    // The default window is 1h.
    assert_eq!(app.count("success=false&kind=traffic").await, 2);

    let body = app
        .get_json(
            "/api/v1/results/stats?since=1h&success=false&kind=traffic",
            Role::Viewer,
        )
        .await;
    assert_eq!(
        body,
        json!({"since": "1h", "success": false, "kind": "traffic", "count": 2})
    );
}

#[tokio::test]
async fn duplicate_result_ids_count_once_and_msg_id_republish_is_dropped() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

    let now = ago(Duration::ZERO);
    // Same result_id under two different event ids: both reach the stream, one row counts.
    for _ in 0..3 {
        publish_result(
            &js,
            "result.traffic.a1",
            json!({"result_id": "same", "success": false, "finished_at": now}),
        )
        .await;
    }
    // Same Nats-Msg-Id twice: JetStream keeps one message.
    let body = serde_json::to_vec(
        &json!({"id": "evt-1", "data": {"result_id": "other", "success": false, "finished_at": now}}),
    )
    .unwrap();
    let first = publish_raw(&js, "result.traffic.a1", "evt-1", body.clone())
        .await
        .await
        .unwrap();
    let second = publish_raw(&js, "result.traffic.a1", "evt-1", body)
        .await
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.sequence, second.sequence);

    app.wait_caught_up().await;
    assert_eq!(app.count("since=1h&success=false").await, 2);
    let stream = js.get_stream("RESULTS").await.unwrap();
    assert_eq!(stream.cached_info().state.messages, 4);
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_the_rest_projected() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

    let now = ago(Duration::ZERO);
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("result.traffic.a1", b"{ this is not json".to_vec()),
        (
            "result.traffic.a1",
            br#"{"id":"x","data":{"result_id":7,"success":"no"}}"#.to_vec(),
        ),
        (
            "result.traffic.a1",
            br#"{"id":"x","data":{"success":false}}"#.to_vec(),
        ),
        ("result.traffic.a1", vec![0xff, 0x00, 0xfe, 0x80, 0x01]),
        ("result.traffic.a1", br#"[{"id":"x"}]"#.to_vec()),
        (
            "result.traffic",
            br#"{"id":"x","data":{"result_id":"r","success":false}}"#.to_vec(),
        ),
        (
            "result.traffic.a1",
            format!(
                r#"{{"id":"x","data":{{"result_id":"{}","success":false}}}}"#,
                "r".repeat(100_000)
            )
            .into_bytes(),
        ),
    ];
    let mut good = 0;
    for (i, (subject, body)) in poison.iter().enumerate() {
        publish_result(
            &js,
            "result.traffic.a1",
            json!({"result_id": format!("good-{i}"), "success": false, "finished_at": now}),
        )
        .await;
        good += 1;
        publish_raw(&js, subject, &format!("poison-{i}"), body.clone())
            .await
            .await
            .unwrap();
    }
    publish_result(
        &js,
        "result.traffic.a1",
        json!({"result_id": "good-last", "success": false, "finished_at": now}),
    )
    .await;
    good += 1;
    app.wait_caught_up().await;

    assert_eq!(app.count("since=1h&success=false").await, good);
    let dl = app
        .get_json("/api/v1/dead-letters?stream=RESULTS&limit=100", Role::Admin)
        .await;
    assert_eq!(dl["total"], poison.len());
    let items = dl["items"].as_array().unwrap();
    assert_eq!(items.len(), poison.len());
    // Newest first; payloads come back byte for byte.
    let b64 = base64::engine::general_purpose::STANDARD;
    for (item, (subject, body)) in items.iter().rev().zip(&poison) {
        assert_eq!(item["subject"], *subject);
        assert_eq!(
            b64.decode(item["payload_base64"].as_str().unwrap())
                .unwrap(),
            *body
        );
        assert!(!item["reason"].as_str().unwrap().is_empty());
        assert_eq!(item["stream"], "RESULTS");
    }
    assert!(items.last().unwrap()["reason"]
        .as_str()
        .unwrap()
        .contains("invalid envelope"));

    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "orrery_dead_letters_total{{stream=\"RESULTS\"}} {}",
            poison.len()
        )),
        "{metrics}"
    );
    let limited = app
        .get_json("/api/v1/dead-letters?limit=2", Role::Admin)
        .await;
    assert_eq!(limited["items"].as_array().unwrap().len(), 2);
    assert_eq!(limited["total"], poison.len());
}

#[tokio::test]
async fn fixture_events_project_as_documented() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

    let fixtures = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events.jsonl"),
    )
    .unwrap();
    let mut results = 0;
    for (i, line) in fixtures.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let subject = v["subject"].as_str().unwrap();
        if !subject.starts_with("result.") {
            continue;
        }
        let body = match &v["body"] {
            serde_json::Value::String(s) => s.clone().into_bytes(),
            other => serde_json::to_vec(other).unwrap(),
        };
        publish_raw(&js, subject, &format!("fixture-{i}"), body)
            .await
            .await
            .unwrap();
        results += 1;
    }
    assert_eq!(results, 4);
    app.wait_caught_up().await;
    // Fixture times are fixed in 2026-11-22T10:0x; count them all with the widest window.
    let rows = dump_results(&app.db_path).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let by_id = |id: &str| rows.iter().find(|r| r.0 == id).unwrap().clone();
    assert_eq!(by_id("r-7f1e").3, 1); // exit_code 0
    assert_eq!(by_id("r-91aa").3, 0); // success false
    assert_eq!(by_id("d-0001").3, 0); // exit_code 1
    assert_eq!(
        by_id("r-7f1e").4,
        orrery::window::parse_rfc3339_ms("2026-11-22T10:00:03Z").unwrap()
    );
    let dl = app.get_json("/api/v1/dead-letters", Role::Admin).await;
    assert_eq!(dl["total"], 1);
}

#[tokio::test]
async fn windowed_counts_equal_a_row_by_row_count_at_every_edge() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    // Results on, just before and just after minute boundaries, over a few minutes.
    let base = (orrery::window::now_ms() / 60_000 - 10) * 60_000;
    let mut i = 0;
    for minute in 0..5 {
        for offset in [-1, 0, 1, 29_999, 59_999] {
            let at = base + minute * 60_000 + offset;
            let kind = ["traffic", "job"][i % 2];
            publish_result(
                &js,
                &format!("result.{kind}.a1"),
                json!({"result_id": format!("e{i}"), "success": i % 3 == 0,
                       "finished_at": orrery::window::format_unix_ms(at)}),
            )
            .await;
            i += 1;
        }
    }
    app.wait_caught_up().await;
    let (db_path, _dir) = app.stop().await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db_path.display()))
        .await
        .unwrap();
    let mut checked = 0;
    for from_off in [-1, 0, 1, 59_999, 60_000, 60_001, 90_000] {
        for to_off in [0, 1, 59_998, 59_999, 60_000, 179_999, 180_000, 300_000] {
            let (from, to) = (base + from_off, base + to_off);
            for kind in [None, Some("traffic")] {
                for success in [None, Some(true), Some(false)] {
                    let fast =
                        orrery::projections::results::count_results(&pool, kind, success, from, to)
                            .await
                            .unwrap();
                    let slow: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM execution_results WHERE recorded_at BETWEEN ?1 AND ?2 \
                         AND (?3 IS NULL OR kind = ?3) AND (?4 IS NULL OR success = ?4)",
                    )
                    .bind(from)
                    .bind(to)
                    .bind(kind)
                    .bind(success)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                    assert_eq!(fast, slow, "{from_off}..={to_off} {kind:?} {success:?}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 7 * 8 * 6);
}
