//! Work items: runs linked to alerts (in either arrival order), each classification on
//! hand-built streams, and the summary of `/alerts/recurrence`.

use std::process::Command;

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

#[tokio::test]
async fn runs_link_to_alerts_in_either_order_and_classify_each_group() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

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

    // Runs projected after their alerts.
    publish_result(
        &js,
        "result.job.fixer",
        run("v-run", by_event("v-2"), "succeeded", "auto", true),
    )
    .await;
    publish_result(
        &js,
        "result.job.fixer",
        run(
            "f-run-1",
            json!({"recurrence_key": "fp:fp-f"}),
            "succeeded",
            "auto",
            true,
        ),
    )
    .await;
    publish_result(
        &js,
        "result.job.fixer",
        run(
            "f-run-2",
            json!({"recurrence_key": "fp:fp-f"}),
            "failed",
            "auto",
            false,
        ),
    )
    .await;
    publish_result(
        &js,
        "result.job.fixer",
        run("g-run", by_event("g-1"), "needs_approval", "none", false),
    )
    .await;
    publish_result(
        &js,
        "result.job.human",
        run(
            "n-run",
            json!({"provider": "sentry", "provider_event_id": "n-2", "incident_id": "INC-9"}),
            "succeeded",
            "none",
            false,
        ),
    )
    .await;
    publish_result(
        &js,
        "result.job.fixer",
        run("s-run", by_event("s-1"), "succeeded", "auto", true),
    )
    .await;
    // Refused with a reason, not guessed.
    publish_result(
        &js,
        "result.job.fixer",
        run("bad-state", by_event("v-1"), "sort-of", "auto", false),
    )
    .await;
    publish_result(
        &js,
        "result.job.fixer",
        run(
            "bad-link",
            json!({"provider": "sentry"}),
            "running",
            "auto",
            false,
        ),
    )
    .await;
    publish_result(
        &js,
        "result.job.fixer",
        run("bad-repair", by_event("v-1"), "running", "robot", false),
    )
    .await;
    app.wait_caught_up().await;

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
    let digest = |db: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_orrery"))
            .args(["digest", "--database"])
            .arg(db)
            .env_remove("ORRERY_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let before = digest(&db);
    for stream in ["ALERTS", "RESULTS"] {
        let out = Command::new(env!("CARGO_BIN_EXE_orrery"))
            .args(["rebuild", "--stream", stream, "--database"])
            .arg(&db)
            .env_remove("ORRERY_CONFIG")
            .env("ORRERY_NATS_URL", nats.url())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&digest(&db)),
            String::from_utf8_lossy(&before),
            "after rebuilding {stream}"
        );
    }
}
