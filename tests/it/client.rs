//! A client generated from the served OpenAPI document, as a user would make one
//! (openapi-python-client, from the project's pinned venv), drives the main flows against a
//! real daemon: the badge, fleet health, topologies and an enqueue, a deploy rollback, the
//! alert dossier, and recurrence → preview → dry-run → handoff → history
//! (`tests/client/flows.py`). The generated code is never committed: this test makes it.

use std::path::{Path, PathBuf};
use std::process::Command;

use orrery::natsd::NatsServer;
use orrery::token::Role;
use serde_json::{json, Value};

use crate::helpers::*;

const SECRET: &str = "hunter2-c7d1e9";

/// The venv's Python: `$ORRERY_PYTHON` (what `make test` passes, from
/// scripts/ensure-py-tools.sh), else the project's `.tools/venv`.
fn python() -> PathBuf {
    let py = std::env::var_os("ORRERY_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        py.exists(),
        "{} is missing: run scripts/ensure-py-tools.sh (make test does)",
        py.display()
    );
    py
}

/// Runs `cmd` to its end (bounded by the caller's own limits); panics with its output
/// unless it succeeds; returns its stdout.
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_document_drives_the_main_flows() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

    // What the flows need on the bus: an agent, a failed and a good run, a topology, a
    // pinned deploy, and an alert group that recurred with a failed automatic repair.
    publish_result(
        &js,
        "heartbeat.a1",
        json!({"hostname": "a1.corp", "version": "1.8.2"}),
    )
    .await;
    publish_result(
        &js,
        "result.traffic.a1",
        json!({"result_id": "r-ok", "success": true}),
    )
    .await;
    publish_result(
        &js,
        "result.traffic.a1",
        json!({"result_id": "r-bad", "success": false}),
    )
    .await;
    publish_topology(
        &js,
        "web",
        "status",
        json!({"status": "up", "name": "Web tier"}),
    )
    .await;
    publish_result(
        &js,
        "result.deploy.a1",
        json!({"result_id": "d-1", "workload_id": "shop", "reference": "registry.example/shop@sha256:3b2f", "exit_code": 0}),
    )
    .await;
    for peid in ["s-1", "s-2"] {
        publish_result(
            &js,
            "alert.sentry.ops",
            json!({
                "provider_event_id": peid, "stage": "firing", "fingerprint": "fp-disk",
                "alertname": "DiskFull", "target_resource": "db-1",
                "content": format!("disk full; retried with password={SECRET}"),
                "labels": {"api_key": SECRET},
                "source_refs": {"sentry": [format!("https://sentry.example/issues/{peid}")]},
            }),
        )
        .await;
    }
    app.wait_caught_up().await;
    publish_result(
        &js,
        "result.job.fixer",
        json!({"result_id": "fix-1", "success": false, "run_state": "failed", "repair": "auto",
               "verified": false, "links": {"provider": "sentry", "provider_event_id": "s-2"}}),
    )
    .await;
    app.wait_caught_up().await;

    // The client, generated from the document this daemon serves.
    let py = python();
    let generator = py.with_file_name("openapi-python-client");
    let dir = tempfile::tempdir().unwrap();
    run(
        Command::new(&py).arg("-I").arg(&generator).args([
            "generate",
            "--url",
            &format!("{}/api/v1/openapi.json", app.address),
            "--meta",
            "none",
            "--output-path",
            &dir.path().join("orrery_client").display().to_string(),
        ]),
        "openapi-python-client generate",
    );

    let flows = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client/flows.py");
    let out = run(
        Command::new(&py)
            .arg("-I")
            .arg(&flows)
            .arg(dir.path())
            .arg(&app.address)
            .arg(token(Role::Admin))
            .arg(SECRET),
        "tests/client/flows.py",
    );
    let seen: Value = serde_json::from_str(out.trim()).expect("flows.py prints one JSON object");

    // r-bad and the failed repair.
    assert_eq!(seen["failed_last_hour"], 2, "{seen}");
    assert_eq!(
        seen["fleet"],
        json!({"status": "ok", "agents": 1}),
        "{seen}"
    );
    assert_eq!(seen["topology"]["id"], "web");
    assert_eq!(seen["topology"]["status"], "up");
    assert_eq!(seen["topology"]["projected"], true, "{seen}");
    assert_eq!(seen["topology"]["state"], "enqueued");
    assert_eq!(
        seen["rollback"]["reference"], "registry.example/shop@sha256:3b2f",
        "{seen}"
    );
    assert_eq!(seen["dossier"]["events"], 2);
    assert_eq!(seen["dossier"]["redacted"], 2);
    assert_eq!(seen["work_item"]["classification"], "failed_repair");
    assert_eq!(seen["work_item"]["action"], "hand_off_to_a_person");
    assert_eq!(seen["work_item"]["history"], json!(["handoff", "dry_run"]));

    // What the client did is what the bus and the read models hold.
    let mutation = seen["topology"]["mutation"].as_str().unwrap();
    let listed = app
        .get_json("/api/v1/topologies/web/mutations", Role::Viewer)
        .await;
    assert_eq!(listed["items"][0]["mutation_id"], mutation, "{listed}");
    assert_eq!(
        stream_state(&js, "COMMANDS").await.1,
        1,
        "one rollback command"
    );
    assert_eq!(
        stream_state(&js, "COMMANDS").await.0,
        seen["rollback"]["seq"].as_u64().unwrap()
    );
    assert_eq!(
        stream_state(&js, "WORKITEMS").await.1,
        2,
        "a dry-run and a handoff"
    );
}
