//! Work items: runs linked to alerts (in either arrival order), each classification on
//! hand-built streams, and the summary of `/alerts/recurrence`.

use orrery::natsd::NatsServer;
use orrery::token::Role;
use serde_json::{json, Value};

use crate::helpers::*;

/// A run answering an alert: `links` as sent, then its state, repair kind and verification.
fn run(id: &str, links: Value, state: &str, repair: &str, verified: bool) -> Value {
    json!({"result_id": id, "success": state != "failed", "links": links,
           "run_state": state, "repair": repair, "verified": verified})
}

fn by_event(peid: &str) -> Value {
    json!({"provider": "sentry", "provider_event_id": peid})
}

async fn fire(js: &async_nats::jetstream::Context, project: &str, peid: &str, fp: &str) {
    publish_result(
        js,
        &format!("alert.sentry.{project}"),
        json!({"provider_event_id": peid, "stage": "firing", "fingerprint": fp, "alertname": "Crash"}),
    )
    .await;
}

fn group<'a>(v: &'a Value, key: &str) -> &'a Value {
    v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["recurrence_key"] == key)
        .unwrap_or_else(|| panic!("no group {key} in {v}"))
}

/// One group of each classification in project `shop` (and `fp-f` again in `api`), a run
/// projected before its alert, and three runs the contract refuses.
async fn publish_groups(js: &async_nats::jetstream::Context, app: &TestApp) {
    let js = js.clone();
    // A run projected before its alert: linked once the alert arrives.
    publish_result(
        &js,
        "result.job.fixer",
        run(
            "o-run",
            json!({"provider": "sentry", "provider_event_id": "o-1", "incident_id": "INC-7"}),
            "running",
            "auto",
            false,
        ),
    )
    .await;
    app.wait_caught_up().await;

    for (peid, fp) in [
        ("v-1", "fp-v"),
        ("v-2", "fp-v"),
        ("f-1", "fp-f"),
        ("f-2", "fp-f"),
        ("g-1", "fp-g"),
        ("g-2", "fp-g"),
        ("n-1", "fp-n"),
        ("n-2", "fp-n"),
        ("o-1", "fp-o"),
        ("o-2", "fp-o"),
        ("s-1", "fp-s"),
    ] {
        fire(&js, "shop", peid, fp).await;
    }
    // The same fingerprint in another project: runs linked by key belong to both.
    fire(&js, "api", "a-1", "fp-f").await;
    fire(&js, "api", "a-2", "fp-f").await;

    // Runs projected after their alerts, and (the last three) refused with a reason, not
    // guessed. (agent, result id, links, state, repair, verified)
    let key_f = json!({"recurrence_key": "fp:fp-f"});
    let n_2 = json!({"provider": "sentry", "provider_event_id": "n-2", "incident_id": "INC-9"});
    let runs = [
        ("fixer", "v-run", by_event("v-2"), "succeeded", "auto", true),
        ("fixer", "f-run-1", key_f.clone(), "succeeded", "auto", true),
        ("fixer", "f-run-2", key_f, "failed", "auto", false),
        (
            "fixer",
            "g-run",
            by_event("g-1"),
            "needs_approval",
            "none",
            false,
        ),
        ("human", "n-run", n_2, "succeeded", "none", false),
        ("fixer", "s-run", by_event("s-1"), "succeeded", "auto", true),
        (
            "fixer",
            "bad-state",
            by_event("v-1"),
            "sort-of",
            "auto",
            false,
        ),
        (
            "fixer",
            "bad-link",
            json!({"provider": "sentry"}),
            "running",
            "auto",
            false,
        ),
        (
            "fixer",
            "bad-repair",
            by_event("v-1"),
            "running",
            "robot",
            false,
        ),
    ];
    for (agent, id, links, state, repair, verified) in runs {
        let subject = format!("result.job.{agent}");
        publish_result(&js, &subject, run(id, links, state, repair, verified)).await;
    }
    app.wait_caught_up().await;
}

#[tokio::test]
async fn runs_link_to_alerts_in_either_order_and_classify_each_group() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

    publish_groups(&js, &app).await;

    let v = app
        .get_json("/api/v1/alerts/recurrence?project_id=shop", Role::Viewer)
        .await;
    let class = |key: &str| group(&v, key)["work_item"]["classification"].clone();
    assert_eq!(class("fp:fp-v"), "verified");
    assert_eq!(class("fp:fp-f"), "failed_repair");
    assert_eq!(class("fp:fp-g"), "manual_gate");
    assert_eq!(class("fp:fp-n"), "automation_gap");
    assert_eq!(class("fp:fp-o"), "open");
    assert_eq!(
        group(&v, "fp:fp-s")["work_item"],
        Value::Null,
        "one occurrence: no work item"
    );
    assert_eq!(group(&v, "fp:fp-s")["linked_run_total"], 1);

    let o = group(&v, "fp:fp-o");
    assert_eq!(o["linked_run_total"], 1, "{o}");
    assert_eq!(o["latest_run_id"], "o-run");
    assert_eq!(o["latest_run_state"], "running");
    assert_eq!(o["latest_agent_id"], "fixer");
    assert_eq!(o["latest_incident_id"], "INC-7");
    assert_eq!(o["incident_ids"], json!(["INC-7"]));
    let f = group(&v, "fp:fp-f");
    assert_eq!(f["linked_run_total"], 2);
    assert_eq!(
        f["run_state_counts"],
        json!({"running": 0, "succeeded": 1, "failed": 1, "needs_approval": 0})
    );
    assert_eq!(f["latest_run_id"], "f-run-2");
    assert_eq!(f["repair_summary"]["auto"], 2);
    assert_eq!(f["repair_summary"]["verified"], 1);
    let id = f["work_item"]["id"].as_str().unwrap();
    assert!(id.starts_with("wi_"), "{id}");
    assert_eq!(f["work_item"]["open"], true);
    assert_eq!(group(&v, "fp:fp-v")["work_item"]["open"], false);

    assert_eq!(
        v["summary"],
        json!({
            "groups": 6, "recurrent_groups": 5, "duplicate_events": 0,
            "linked_run_total": 7, "unlinked_event_total": 0, "auto_repair_linked_total": 5,
            "verified_repair_group_total": 1, "open_work_item_group_total": 4,
            "manual_gate_group_total": 1, "automation_gap_group_total": 1,
            "failed_repair_group_total": 1,
        })
    );

    // The other project's group with the same key: the runs linked by key, not the others.
    let api = app
        .get_json("/api/v1/alerts/recurrence?project_id=api", Role::Viewer)
        .await;
    let a = group(&api, "fp:fp-f");
    assert_eq!(a["linked_run_total"], 2);
    assert_eq!(a["work_item"]["classification"], "failed_repair");
    assert_ne!(
        a["work_item"]["id"], f["work_item"]["id"],
        "one work item per project"
    );

    let dead = app
        .get_json("/api/v1/dead-letters?stream=RESULTS", Role::Admin)
        .await;
    assert_eq!(dead["total"], 3, "{dead}");
    let reasons = dead.to_string();
    for why in [
        "run_state must be one of",
        "data.links must be",
        "repair must be one of",
    ] {
        assert!(reasons.contains(why), "{why}: {reasons}");
    }

    // Rebuilding either stream alone gives the same links: the second projection to see a
    // pair fills the group, whichever it is.
    let (db, _dir) = app.stop().await;
    let before = digest_of(&db);
    for stream in ["ALERTS", "RESULTS"] {
        rebuild(&nats.url(), &db, Some(stream));
        assert_eq!(digest_of(&db), before, "after rebuilding {stream}");
    }
}

/// Files whose bytes must not change while nothing is published.
fn database_bytes(db: &std::path::Path) -> Vec<Vec<u8>> {
    ["", "-wal"]
        .iter()
        .map(|suffix| std::fs::read(format!("{}{suffix}", db.display())).unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_preview_proposes_by_classification_and_changes_nothing() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    publish_groups(&js, &app).await;
    app.wait_caught_up().await;
    let v = app
        .get_json("/api/v1/alerts/recurrence?project_id=shop", Role::Viewer)
        .await;
    let id = |key: &str| {
        group(&v, key)["work_item"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let preview = |id: String, extra: &'static str| {
        let app = &app;
        async move {
            app.get_json(
                &format!("/api/v1/alerts/recurrence/work-item/preview?work_item_id={id}{extra}"),
                Role::Viewer,
            )
            .await
        }
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let before = database_bytes(&app.db_path);

    // (group, mode, resolved mode, action)
    let cases = [
        ("fp:fp-v", "", "none", "none"),
        ("fp:fp-f", "", "manual", "hand_off_to_a_person"),
        (
            "fp:fp-f",
            "&mode=automation",
            "automation",
            "retry_automatic_repair",
        ),
        ("fp:fp-g", "", "manual", "hand_off_to_a_person"),
        ("fp:fp-n", "", "automation", "propose_automatic_repair"),
        ("fp:fp-n", "&mode=manual", "manual", "hand_off_to_a_person"),
        (
            "fp:fp-o",
            "&project_id=shop&provider=sentry&limit=10",
            "automation",
            "verify_latest_repair",
        ),
    ];
    for (key, extra, resolved, action) in cases {
        let p = preview(id(key), extra).await;
        assert_eq!(p["work_item"]["id"], id(key).as_str(), "{p}");
        assert_eq!(p["work_item"]["recurrence_key"], key);
        assert_eq!(
            p["work_item"]["classification"],
            group(&v, key)["work_item"]["classification"]
        );
        assert_eq!(
            p["group"],
            *group(&v, key),
            "the group as /recurrence lists it"
        );
        assert_eq!(p["plan"]["resolved_mode"], resolved, "{key}{extra}: {p}");
        assert_eq!(p["plan"]["action"], action, "{key}{extra}: {p}");
        assert!(p["guarantees"].to_string().contains("read-only"), "{p}");
        let check = |name: &str| {
            p["plan"]["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == name)
                .unwrap_or_else(|| panic!("no check {name}: {p}"))["ok"]
                .clone()
        };
        assert_eq!(check("still_recurring"), true);
        assert_eq!(
            check("source_refs_present"),
            false,
            "these alerts carry none"
        );
        assert_eq!(check("latest_run_not_running"), key != "fp:fp-o");
        assert_eq!(check("work_item_open"), key != "fp:fp-v");
        assert_eq!(
            p["plan"]["ready"], false,
            "a check fails in every case here"
        );
    }
    assert_eq!(
        database_bytes(&app.db_path),
        before,
        "a preview changed the database"
    );

    // Refusals: unknown (404 with its own code), malformed (422 naming it), no token (401).
    let unknown = app
        .get(
            "/api/v1/alerts/recurrence/work-item/preview?work_item_id=wi_000000000000000000000000",
            Some(Role::Viewer),
        )
        .await;
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"], "recurrence_work_item_not_found", "{body}");
    // A single occurrence has no work item, and one of another project is not found here.
    let single = work_item_id_of("shop", "fp:fp-s");
    let elsewhere = id("fp:fp-f");
    for path in [
        format!("/api/v1/alerts/recurrence/work-item/preview?work_item_id={single}"),
        format!(
            "/api/v1/alerts/recurrence/work-item/preview?work_item_id={elsewhere}&project_id=api"
        ),
    ] {
        assert_eq!(
            app.get(&path, Some(Role::Viewer)).await.status(),
            404,
            "{path}"
        );
    }
    let good = id("fp:fp-f");
    for (query, parameter) in [
        (String::new(), "work_item_id"),
        ("work_item_id=wi_zz".to_owned(), "work_item_id"),
        (
            "work_item_id=WI_000000000000000000000000".to_owned(),
            "work_item_id",
        ),
        (format!("work_item_id={good}&mode=yolo"), "mode"),
        (format!("work_item_id={good}&limit=0"), "limit"),
        (format!("work_item_id={good}&limit=301"), "limit"),
        (
            format!("work_item_id={good}&project_id=a%20b"),
            "project_id",
        ),
        (format!("work_item_id={good}&provider=x.y"), "provider"),
    ] {
        let res = app
            .get(
                &format!("/api/v1/alerts/recurrence/work-item/preview?{query}"),
                Some(Role::Viewer),
            )
            .await;
        assert_eq!(res.status(), 422, "{query}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["parameter"], parameter, "{query}: {body}");
    }
    let anonymous = app
        .get(
            &format!("/api/v1/alerts/recurrence/work-item/preview?work_item_id={good}"),
            None,
        )
        .await;
    assert_eq!(anonymous.status(), 401);
}

/// The id /alerts/recurrence would give the group, computed the documented way.
fn work_item_id_of(project: &str, key: &str) -> String {
    orrery::api::alerts::plan::work_item_id(project, key)
}

/// `GET path` with `Orrery-Min-Seq: min_seq` as a viewer; the body.
async fn read_after(app: &TestApp, path: &str, min_seq: &str) -> Value {
    let res = app
        .http
        .get(format!("{}{path}", app.address))
        .bearer_auth(token(Role::Viewer))
        .header("orrery-min-seq", min_seq)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{path}");
    res.json().await.unwrap()
}

/// Publishes `data` on `subject`; its stream sequence.
async fn publish_seq(js: &async_nats::jetstream::Context, subject: &str, data: Value) -> u64 {
    let id = uuid::Uuid::new_v4().to_string();
    let body = json!({"id": id, "data": data}).to_string().into_bytes();
    publish_raw(js, subject, &id, body)
        .await
        .await
        .unwrap()
        .sequence
}

#[tokio::test]
async fn recurrence_pages_change_with_every_commit_of_alerts_or_runs() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    let alert = |peid: &str| {
        json!({"provider_event_id": peid, "stage": "firing", "fingerprint": "fp-c",
               "source_refs": {"sentry": ["1"]}})
    };
    publish_seq(&js, "alert.sentry.shop", alert("c-1")).await;
    let seq = publish_seq(&js, "alert.sentry.shop", alert("c-2")).await;
    let path = "/api/v1/alerts/recurrence?project_id=shop";
    let id = work_item_id_of("shop", "fp:fp-c");
    let preview = format!("/api/v1/alerts/recurrence/work-item/preview?work_item_id={id}");
    // Read (and kept) at each step, then read again right after the next write lands.
    let page = read_after(&app, path, &format!("ALERTS:{seq}")).await;
    assert_eq!(group(&page, "fp:fp-c")["occurrence_total"], 2);
    assert_eq!(
        read_after(&app, path, "ALERTS:0").await,
        page,
        "kept while nothing changed"
    );

    let seq = publish_seq(&js, "alert.sentry.shop", alert("c-3")).await;
    let page = read_after(&app, path, &format!("ALERTS:{seq}")).await;
    assert_eq!(group(&page, "fp:fp-c")["occurrence_total"], 3, "{page}");
    let p = read_after(&app, &preview, &format!("ALERTS:{seq}")).await;
    assert_eq!(p["group"]["occurrence_total"], 3);

    let run = run(
        "c-run",
        json!({"recurrence_key": "fp:fp-c"}),
        "succeeded",
        "auto",
        true,
    );
    let seq = publish_seq(&js, "result.job.fixer", run).await;
    let page = read_after(&app, path, &format!("RESULTS:{seq}")).await;
    let g = group(&page, "fp:fp-c");
    assert_eq!(g["linked_run_total"], 1, "{g}");
    assert_eq!(g["work_item"]["classification"], "verified");
    let p = read_after(&app, &preview, &format!("RESULTS:{seq}")).await;
    assert_eq!(p["work_item"]["classification"], "verified");
}

#[tokio::test]
async fn many_runs_of_one_group_in_a_batch_add_up_as_they_would_one_by_one() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    fire(&js, "shop", "x-1", "fp-x").await;
    fire(&js, "shop", "x-2", "fp-x").await;
    app.wait_caught_up().await;
    // Published back to back, the runs share batches: a group's figures are summed per batch
    // before they are written, and must come out as the runs' own count.
    const STATES: [&str; 4] = ["running", "succeeded", "failed", "needs_approval"];
    const REPAIRS: [&str; 3] = ["auto", "manual", "none"];
    let (mut states, mut repairs, mut verified) = ([0; 4], [0; 3], 0);
    let mut last_repair = None;
    for i in 0..60usize {
        let (state, repair, v) = (STATES[i % 4], REPAIRS[i % 3], i % 5 == 0);
        let links = if i % 2 == 0 {
            by_event(if i % 4 == 0 { "x-1" } else { "x-2" })
        } else {
            json!({"recurrence_key": "fp:fp-x", "incident_id": format!("INC-{}", i % 3)})
        };
        states[i % 4] += 1;
        repairs[i % 3] += 1;
        verified += i64::from(v);
        if repair != "none" {
            last_repair = Some((format!("x-run-{i}"), repair, state, v));
        }
        publish_result(
            &js,
            "result.job.fixer",
            run(&format!("x-run-{i}"), links, state, repair, v),
        )
        .await;
    }
    app.wait_caught_up().await;
    let v = app
        .get_json("/api/v1/alerts/recurrence?project_id=shop", Role::Viewer)
        .await;
    let g = group(&v, "fp:fp-x");
    assert_eq!(g["linked_run_total"], 60, "{g}");
    assert_eq!(
        g["run_state_counts"],
        json!({"running": states[0], "succeeded": states[1], "failed": states[2],
               "needs_approval": states[3]})
    );
    assert_eq!(g["repair_summary"]["auto"], repairs[0], "{g}");
    assert_eq!(g["repair_summary"]["manual"], repairs[1], "{g}");
    assert_eq!(g["repair_summary"]["verified"], verified, "{g}");
    assert_eq!(g["latest_run_id"], "x-run-59");
    assert_eq!(g["latest_run_state"], STATES[59 % 4]);
    assert_eq!(g["incident_ids"], json!(["INC-0", "INC-1", "INC-2"]));
    assert_eq!(g["repair_summary"]["none"], repairs[2], "{g}");
    let (id, repair, state, verified) = last_repair.unwrap();
    assert_eq!(
        g["repair_summary"]["latest_repair"],
        json!({"result_id": id, "repair": repair, "run_state": state, "verified": verified})
    );
}

#[tokio::test]
async fn a_run_sent_again_counts_once_whether_its_first_copy_is_in_an_earlier_batch_or_the_same() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    fire(&js, "shop", "y-1", "fp-y").await;
    app.wait_caught_up().await;
    for i in 0..30 {
        let id = format!("y-run-{i}");
        publish_result(
            &js,
            "result.job.fixer",
            run(&id, by_event("y-1"), "succeeded", "auto", true),
        )
        .await;
    }
    app.wait_caught_up().await;
    // Back to back, so that batches mix new runs, copies of runs of earlier batches and
    // copies of runs of the same batch: only the first copy of each counts.
    for i in 30..50 {
        let new = format!("y-run-{i}");
        let old = format!("y-run-{}", i - 30);
        publish_result(
            &js,
            "result.job.fixer",
            run(&new, by_event("y-1"), "failed", "auto", false),
        )
        .await;
        publish_result(
            &js,
            "result.job.fixer",
            run(&old, by_event("y-1"), "failed", "manual", false),
        )
        .await;
        publish_result(
            &js,
            "result.job.fixer",
            run(&new, by_event("y-1"), "running", "none", true),
        )
        .await;
    }
    app.wait_caught_up().await;
    let v = app
        .get_json("/api/v1/alerts/recurrence?project_id=shop", Role::Viewer)
        .await;
    let g = group(&v, "fp:fp-y");
    assert_eq!(g["linked_run_total"], 50, "{g}");
    assert_eq!(
        g["run_state_counts"],
        json!({"running": 0, "succeeded": 30, "failed": 20, "needs_approval": 0}),
        "{g}"
    );
    assert_eq!(g["repair_summary"]["auto"], 50, "{g}");
    assert_eq!(g["repair_summary"]["manual"], 0, "{g}");
    assert_eq!(g["repair_summary"]["verified"], 30, "{g}");
    assert_eq!(g["latest_run_id"], "y-run-49", "{g}");
    assert_eq!(g["latest_run_state"], "failed", "{g}");

    // The same figures as a database rebuilt from the stream.
    let (db, _dir) = app.stop().await;
    let before = digest_of(&db);
    rebuild(&nats.url(), &db, Some("RESULTS"));
    assert_eq!(digest_of(&db), before);
}
