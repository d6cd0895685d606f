//! Dry-runs and handoffs of work items: recorded on WORKITEMS and answered once projected,
//! every guard (409 per reason, 404, 422 per field, 403, 401), idempotent handoffs, a
//! history that holds no secret, and a rebuild that gives the same history.

use orrery::natsd::NatsServer;
use orrery::token::Role;
use serde_json::{json, Value};

use crate::helpers::*;

const SECRET: &str = "hunter2-a8f3c1";

const DRY_RUN: &str = "/api/v1/alerts/recurrence/work-item/dry-run";
const HANDOFF: &str = "/api/v1/alerts/recurrence/work-item/handoff";

/// An occurrence of group `fp` in project `ops`, with a source reference and content, URL
/// and label that carry a secret.
async fn fire(js: &async_nats::jetstream::Context, peid: &str, fp: &str) {
    publish_result(
        js,
        "alert.sentry.ops",
        json!({
            "provider_event_id": peid, "stage": "firing", "fingerprint": fp,
            "alertname": "DiskFull", "target_resource": "db-1",
            "content": format!("disk full; retried with password={SECRET} and it failed"),
            "source_url": format!("https://admin:{SECRET}@sentry.example/issues/{peid}"),
            "labels": {"api_key": SECRET},
            "source_refs": {"sentry": [format!("https://sentry.example/issues/{peid}")]},
        }),
    )
    .await;
}

fn id_of(key: &str) -> String {
    orrery::projections::work_items::work_item_id("ops", key)
}

async fn post_keyed(
    app: &TestApp,
    path: &str,
    key: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut req = app
        .http
        .post(format!("{}{path}", app.address))
        .bearer_auth(token(Role::Operator))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req.send().await.unwrap()
}

/// Posts and expects `status`; returns the body.
async fn expect(app: &TestApp, path: &str, key: Option<&str>, body: Value, status: u16) -> Value {
    let res = post_keyed(app, path, key, body.clone()).await;
    let got = res.status().as_u16();
    let answer: Value = res.json().await.unwrap();
    assert_eq!(got, status, "POST {path} {body}: {answer}");
    answer
}

#[tokio::test]
async fn dry_run_then_handoff_records_history_with_every_guard() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

    // fp-d: recurring, a failed automatic repair linked (failed_repair). fp-r: a run still
    // running, so its dry-run fails a check.
    fire(&js, "d-1", "fp-d").await;
    fire(&js, "d-2", "fp-d").await;
    fire(&js, "r-1", "fp-r").await;
    fire(&js, "r-2", "fp-r").await;
    app.wait_caught_up().await;
    for (id, peid, state) in [("d-run", "d-2", "failed"), ("r-run", "r-2", "running")] {
        publish_result(
            &js,
            "result.job.fixer",
            json!({"result_id": id, "success": false, "run_state": state, "repair": "auto",
                   "verified": false,
                   "links": {"provider": "sentry", "provider_event_id": peid, "incident_id": "INC-4"}}),
        )
        .await;
    }
    app.wait_caught_up().await;
    let d = id_of("fp:fp-d");
    let r = id_of("fp:fp-r");

    // A handoff needs a dry-run first.
    let refused = expect(&app, HANDOFF, None, json!({"work_item_id": d}), 409).await;
    assert_eq!(refused["error"], "dry_run_required", "{refused}");

    // The dry-run: 202 with the entry once projected, naming its WORKITEMS sequence.
    let res = post_keyed(&app, DRY_RUN, None, json!({"work_item_id": d})).await;
    assert_eq!(res.status(), 202);
    let seq = res.headers()["orrery-seq"].to_str().unwrap().to_owned();
    let dry: Value = res.json().await.unwrap();
    assert_eq!(seq, format!("WORKITEMS:{}", dry["seq"]));
    assert_eq!(dry["kind"], "dry_run");
    assert_eq!(dry["work_item_id"], d.as_str());
    assert_eq!(dry["classification"], "failed_repair");
    assert_eq!(dry["plan"]["action"], "hand_off_to_a_person");
    assert_eq!(dry["passed"], true, "{dry}");
    assert_eq!(dry["actor"], "tester");
    assert_eq!(stream_state(&js, "WORKITEMS").await.1, 1);

    // A dry-run that fails a check records that, and a handoff on it is refused.
    let failing = expect(&app, DRY_RUN, None, json!({"work_item_id": r}), 202).await;
    assert_eq!(failing["passed"], false);
    let refused = expect(&app, HANDOFF, None, json!({"work_item_id": r}), 409).await;
    assert_eq!(refused["error"], "dry_run_failed", "{refused}");
    // A dry-run in another mode does not count.
    let refused = expect(
        &app,
        HANDOFF,
        None,
        json!({"work_item_id": d, "mode": "manual"}),
        409,
    )
    .await;
    assert_eq!(refused["error"], "dry_run_required", "{refused}");

    // The group recurs after the dry-run: it is stale.
    fire(&js, "d-3", "fp-d").await;
    app.wait_caught_up().await;
    let refused = expect(&app, HANDOFF, None, json!({"work_item_id": d}), 409).await;
    assert_eq!(refused["error"], "dry_run_stale", "{refused}");

    // Dry-run again, then hand off with a key: 202, and the same answer for a retry.
    let dry = expect(&app, DRY_RUN, None, json!({"work_item_id": d}), 202).await;
    let body = json!({"work_item_id": d, "project_id": "ops", "provider": "sentry", "limit": 50});
    let first = post_keyed(&app, HANDOFF, Some("k-1"), body.clone()).await;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let handoff: Value = first.json().await.unwrap();
    assert_eq!(handoff["kind"], "handoff");
    assert_eq!(handoff["handoff_kind"], "ticket_proposal");
    assert_eq!(handoff["dry_run_entry_id"], dry["entry_id"]);
    let ticket = &handoff["ticket"];
    assert!(
        ticket["title"]
            .as_str()
            .unwrap()
            .contains("DiskFull on db-1"),
        "{ticket}"
    );
    assert!(ticket["summary"].as_str().unwrap().contains("disk full"));
    assert_eq!(ticket["occurrences"]["total"], 3);
    assert_eq!(ticket["latest_runs"][0]["result_id"], "d-run");
    assert_eq!(ticket["incident_ids"], json!(["INC-4"]));
    assert_eq!(
        ticket["source_refs"]["sentry"][0],
        "https://sentry.example/issues/d-3"
    );
    let again = post_keyed(&app, HANDOFF, Some("k-1"), body.clone()).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), handoff);
    // The same key for another request is refused; another key meets the open handoff.
    let mut other = body.clone();
    other["handoff_kind"] = json!("manual_takeover");
    let refused = expect(&app, HANDOFF, Some("k-1"), other, 409).await;
    assert_eq!(refused["error"], "idempotency_key_reused", "{refused}");
    let refused = expect(&app, HANDOFF, Some("k-2"), body, 409).await;
    assert_eq!(refused["error"], "handoff_open", "{refused}");
    let preview = app
        .get_json(
            &format!("/api/v1/alerts/recurrence/work-item/preview?work_item_id={d}"),
            Role::Viewer,
        )
        .await;
    let check = preview["plan"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "no_open_handoff")
        .unwrap()
        .clone();
    assert_eq!(check["ok"], false, "{check}");
    assert!(check["detail"]
        .as_str()
        .unwrap()
        .contains(handoff["entry_id"].as_str().unwrap()));

    // History: newest first, each entry as it was answered.
    let history = app
        .get_json(
            &format!("/api/v1/alerts/recurrence/work-item/history?work_item_id={d}"),
            Role::Viewer,
        )
        .await;
    let entries = history["entries"].as_array().unwrap();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["handoff", "dry_run", "dry_run"], "{history}");
    assert_eq!(entries[0], handoff);
    assert_eq!(entries[1], dry);
    let only = app
        .get_json(
            &format!(
                "/api/v1/alerts/recurrence/work-item/history?work_item_id={d}&kind=dry_run&limit=1"
            ),
            Role::Viewer,
        )
        .await;
    assert_eq!(only["entries"], json!([dry]));
    let none = app
        .get_json(
            "/api/v1/alerts/recurrence/work-item/history?work_item_id=wi_000000000000000000000000",
            Role::Viewer,
        )
        .await;
    assert_eq!(none["entries"], json!([]));

    // The answers are those the OpenAPI document describes.
    let doc = crate::openapi::document(&app).await;
    for (method, path, status, body) in [
        ("post", DRY_RUN, 202, &dry),
        ("post", HANDOFF, 202, &handoff),
        ("post", HANDOFF, 409, &refused),
        (
            "get",
            "/api/v1/alerts/recurrence/work-item/history",
            200,
            &history,
        ),
    ] {
        let schema = crate::openapi::response_schema(&doc, method, path, status);
        let problems = crate::openapi::errors(&schema, body);
        assert!(
            problems.is_empty(),
            "{method} {path} ({status}): {problems:#?}\n{body}"
        );
    }

    // No secret anywhere: not in the answers, not in the database's bytes.
    let text = history.to_string();
    assert!(!text.contains(SECRET), "{text}");
    assert!(
        text.contains("[REDACTED]"),
        "the ticket quotes redacted text: {text}"
    );
    let (db, _dir) = app.stop().await;
    for suffix in ["", "-wal"] {
        let bytes = std::fs::read(format!("{}{suffix}", db.display())).unwrap_or_default();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret is in the database{suffix}"
        );
    }

    // A rebuild of WORKITEMS gives the same history.
    let before = digest_of(&db);
    rebuild(&nats.url(), &db, Some("WORKITEMS"));
    assert_eq!(digest_of(&db), before);
}

#[tokio::test]
async fn requests_are_refused_field_by_field_and_by_role() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    fire(&js, "d-1", "fp-d").await;
    fire(&js, "d-2", "fp-d").await;
    app.wait_caught_up().await;
    let d = id_of("fp:fp-d");

    for path in [DRY_RUN, HANDOFF] {
        for (body, parameter) in [
            (json!({}), "work_item_id"),
            (json!({"work_item_id": "wi_zz"}), "work_item_id"),
            (json!({"work_item_id": 7}), "work_item_id"),
            (json!({"work_item_id": d, "mode": "yolo"}), "mode"),
            (json!({"work_item_id": d, "limit": 0}), "limit"),
            (json!({"work_item_id": d, "limit": 301}), "limit"),
            (json!({"work_item_id": d, "limit": "5"}), "limit"),
            (json!({"work_item_id": d, "limit": 2.5}), "limit"),
            (
                json!({"work_item_id": d, "project_id": "a b"}),
                "project_id",
            ),
            (json!({"work_item_id": d, "provider": "x.y"}), "provider"),
            (json!({"work_item_id": d, "note": "hi"}), "body"),
        ] {
            let answer = expect(&app, path, None, body.clone(), 422).await;
            assert_eq!(answer["parameter"], parameter, "{path} {body}: {answer}");
        }
        let res = app.post(path, Some(Role::Operator), "{ nope").await;
        assert_eq!(res.status(), 400, "{path}");
        let res = app.post(path, Some(Role::Operator), "[1]").await;
        assert_eq!(res.status(), 400, "{path}");
        let big = format!(
            r#"{{"work_item_id":"{d}","pad":"{}"}}"#,
            "x".repeat(8 * 1024)
        );
        assert_eq!(
            app.post(path, Some(Role::Operator), big).await.status(),
            413
        );
        let body = json!({"work_item_id": d}).to_string();
        assert_eq!(
            app.post(path, Some(Role::Viewer), body.clone())
                .await
                .status(),
            403
        );
        assert_eq!(app.post(path, None, body).await.status(), 401);
        let unknown = expect(
            &app,
            path,
            None,
            json!({"work_item_id": "wi_000000000000000000000000"}),
            404,
        )
        .await;
        assert_eq!(unknown["error"], "recurrence_work_item_not_found");
        let elsewhere = expect(
            &app,
            path,
            None,
            json!({"work_item_id": d, "project_id": "api"}),
            404,
        )
        .await;
        assert_eq!(elsewhere["error"], "recurrence_work_item_not_found");
    }
    for (body, parameter) in [
        (
            json!({"work_item_id": d, "handoff_kind": "email"}),
            "handoff_kind",
        ),
        (
            json!({"work_item_id": d, "handoff_kind": 1}),
            "handoff_kind",
        ),
    ] {
        let answer = expect(&app, HANDOFF, None, body.clone(), 422).await;
        assert_eq!(answer["parameter"], parameter, "{body}: {answer}");
    }
    let answer = expect(
        &app,
        DRY_RUN,
        None,
        json!({"work_item_id": d, "handoff_kind": "ticket_proposal"}),
        422,
    )
    .await;
    assert_eq!(
        answer["parameter"], "body",
        "a dry-run takes no handoff_kind"
    );
    for (query, parameter) in [
        (String::new(), "work_item_id"),
        ("work_item_id=wi_1".to_owned(), "work_item_id"),
        (format!("work_item_id={d}&kind=close"), "kind"),
        (format!("work_item_id={d}&limit=0"), "limit"),
        (format!("work_item_id={d}&limit=201"), "limit"),
    ] {
        let res = app
            .get(
                &format!("/api/v1/alerts/recurrence/work-item/history?{query}"),
                Some(Role::Viewer),
            )
            .await;
        assert_eq!(res.status(), 422, "{query}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["parameter"], parameter, "{query}: {body}");
    }
    // Nothing refused reached the bus.
    assert_eq!(stream_state(&js, "WORKITEMS").await.1, 0);
}

#[tokio::test]
async fn entries_published_by_others_are_redacted_or_dead_lettered() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    let d = id_of("fp:fp-d");
    let plan = json!({"mode": "auto", "resolved_mode": "manual", "action": "x",
                      "reason": format!("token={SECRET}"),
                      "checks": [{"name": "a", "ok": true, "detail": format!("password={SECRET}")}],
                      "ready": true});
    let entry = |ticket: Value| {
        json!({
            "recurrence_key": "fp:fp-d", "actor": "bridge", "mode": "auto",
            "classification": "open", "occurrences": 2,
            "latest_occurrence_at": "2026-11-30T10:00:00Z",
            "plan": plan, "passed": true,
            "handoff_kind": "manual_takeover", "ticket": ticket,
        })
    };
    let ticket = json!({
        "title": "t", "summary": format!("curl -H 'Authorization: Bearer {SECRET}'"),
        "proposed_action": "x", "reason": "y",
        "occurrences": {"total": 2, "duplicates": 0, "first_received_at": "2026-11-30T09:00:00Z",
                        "latest_received_at": "2026-11-30T10:00:00Z"},
        "source_url": null, "source_refs": {"sentry": [format!("https://u:{SECRET}@s.example/1")]},
        "incident_ids": [], "latest_runs": [],
    });
    publish_result(
        &js,
        &format!("workitem.ops.{d}.handoff"),
        entry(ticket.clone()),
    )
    .await;
    // Refused: no ticket on a handoff; a work item id that is not the key's; a plan or a
    // ticket not of the documented shape (a history answer must match its schema).
    let mut no_ticket = entry(json!({}));
    no_ticket.as_object_mut().unwrap().remove("ticket");
    publish_result(&js, &format!("workitem.ops.{d}.handoff"), no_ticket).await;
    publish_result(
        &js,
        "workitem.ops.wi_000000000000000000000000.handoff",
        entry(ticket.clone()),
    )
    .await;
    let mut odd_plan = entry(ticket);
    odd_plan["plan"] = json!({"action": "x", "note": format!("token={SECRET}")});
    publish_result(&js, &format!("workitem.ops.{d}.handoff"), odd_plan).await;
    publish_result(
        &js,
        &format!("workitem.ops.{d}.handoff"),
        entry(json!({"title": "t", "summary": format!("password={SECRET}")})),
    )
    .await;
    app.wait_caught_up().await;
    let history = app
        .get_json(
            &format!("/api/v1/alerts/recurrence/work-item/history?work_item_id={d}"),
            Role::Viewer,
        )
        .await;
    assert_eq!(history["entries"].as_array().unwrap().len(), 1, "{history}");
    let dead = app
        .get_json("/api/v1/dead-letters?stream=WORKITEMS", Role::Admin)
        .await;
    assert_eq!(dead["total"], 4, "{dead}");
    let stored = &history["entries"][0];
    assert_eq!(stored["actor"], "bridge");
    assert_eq!(stored["ticket"]["title"], "t");
    for text in [history.to_string(), dead.to_string()] {
        assert!(!text.contains(SECRET), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_handoffs_decided_at_once_on_two_replicas_exactly_one_is_recorded() {
    let nats = NatsServer::start().unwrap();
    let a = spawn_app(&nats).await;
    let b = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    fire(&js, "d-1", "fp-d").await;
    fire(&js, "d-2", "fp-d").await;
    a.wait_caught_up().await;
    b.wait_caught_up().await;
    let d = id_of("fp:fp-d");
    expect(&a, DRY_RUN, None, json!({"work_item_id": d}), 202).await;
    b.wait_caught_up().await;

    // Sixteen operators at once, eight on each replica, each with a key of their own.
    let body = json!({"work_item_id": d});
    let attempts = (0..16).map(|i| {
        let (app, body) = (if i % 2 == 0 { &a } else { &b }, body.clone());
        async move {
            let res = post_keyed(app, HANDOFF, Some(&format!("op-{i}")), body).await;
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    });
    let answers = futures::future::join_all(attempts).await;
    let recorded = answers.iter().filter(|(s, _)| *s == 202).count();
    assert_eq!(recorded, 1, "{answers:?}");
    for (status, body) in &answers {
        if *status != 202 {
            assert_eq!(*status, 409, "{body}");
            assert_eq!(body["error"], "handoff_open", "{body}");
        }
    }
    a.wait_caught_up().await;
    for app in [&a, &b] {
        let history = app
            .get_json(
                &format!(
                    "/api/v1/alerts/recurrence/work-item/history?work_item_id={d}&kind=handoff"
                ),
                Role::Viewer,
            )
            .await;
        assert_eq!(history["entries"].as_array().unwrap().len(), 1, "{history}");
    }

    // What the handler's retry rests on: JetStream checks the expected subject sequence
    // before the Nats-Msg-Id, so a retry of a publish that landed is refused, not answered
    // as a duplicate; the last message on the subject then carries the retry's id.
    let subject = "workitem.probe.x.handoff";
    let publish = || {
        let js = js.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", "probe-1");
            headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
            js.publish_with_headers(subject, headers, "{}".into())
                .await
                .unwrap()
                .await
        }
    };
    let first = publish().await.unwrap();
    let again = publish().await.unwrap_err();
    assert_eq!(
        again.kind(),
        async_nats::jetstream::context::PublishErrorKind::WrongLastSequence
    );
    let last = js
        .get_stream("WORKITEMS")
        .await
        .unwrap()
        .get_last_raw_message_by_subject(subject)
        .await
        .unwrap();
    assert_eq!(last.sequence, first.sequence);
    assert_eq!(last.headers.get("Nats-Msg-Id").unwrap().as_str(), "probe-1");
}
