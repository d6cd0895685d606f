//! Snapshots in a JetStream object store: a fresh replica restores a verified one and
//! catches up, a bad one is never used, and a gap the stream can no longer fill is reported.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, object_store};
use futures::TryStreamExt;
use orrery::natsd::NatsServer;
use orrery::token::Role;
use serde_json::{json, Value};

use crate::helpers::*;

const BUCKET: &str = "orrery-snaps";

/// Publishes results `from..to` with pipelined acks (one batch of futures at a time).
async fn publish_results(js: &jetstream::Context, range: std::ops::Range<u64>) {
    let finished = ago(Duration::from_secs(60));
    let mut acks = Vec::new();
    for i in range {
        let body = json!({"id": format!("evt-{i}"), "data": {
            "result_id": format!("res-{i}"), "exit_code": i % 7, "finished_at": finished}});
        let subject = format!("result.traffic.agent-{}", i % 13);
        acks.push(
            publish_raw(
                js,
                &subject,
                &format!("evt-{i}"),
                serde_json::to_vec(&body).unwrap(),
            )
            .await,
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

fn with_bucket(nats: &NatsServer, db: &std::path::Path) -> orrery::Settings {
    orrery::Settings {
        snapshot_bucket: Some(BUCKET.to_owned()),
        ..settings(&nats.url(), db)
    }
}

/// A bus, a scratch directory and replica `a` with the snapshot bucket (`extra` settings on
/// top), its streams provisioned.
async fn replica_a(
    extra: orrery::Settings,
) -> (NatsServer, jetstream::Context, tempfile::TempDir, TestApp) {
    let nats = NatsServer::start().unwrap();
    let js = jetstream(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = with_bucket(&nats, &dir.path().join("a.db"));
    settings.snapshot_interval_secs = extra.snapshot_interval_secs;
    settings.snapshot_keep = extra.snapshot_keep;
    let a = spawn_app_with(settings, tempfile::tempdir().unwrap()).await;
    wait_for_streams(&js).await;
    (nats, js, dir, a)
}

async fn digest(app: &TestApp) -> Value {
    app.get_json("/api/v1/admin/digest", Role::Admin).await
}

/// Snapshot objects in the bucket, oldest first.
async fn snapshots(js: &jetstream::Context) -> Vec<object_store::ObjectInfo> {
    let store = js.get_object_store(BUCKET).await.unwrap();
    let mut all: Vec<_> = store
        .list()
        .await
        .unwrap()
        .try_filter(|i| futures::future::ready(!i.deleted))
        .try_collect()
        .await
        .unwrap();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// `orrery snapshot` as an operator runs it, beside the serving daemon with its settings.
fn snapshot_command(nats: &NatsServer, db: &std::path::Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_orrery"))
        .arg("snapshot")
        .env("ORRERY_NATS_URL", nats.url())
        .env("ORRERY_DATABASE", db)
        .env("ORRERY_SNAPSHOT_BUCKET", BUCKET)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "orrery snapshot: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_replica_restores_a_verified_snapshot_and_catches_up_past_retention() {
    let (nats, js, dir, a) = replica_a(orrery::Settings::default()).await;
    publish_results(&js, 0..300).await;
    publish_topology(&js, "t1", "status", json!({"status": "active"})).await;
    a.wait_caught_up().await;

    let info = snapshot_command(&nats, &a.db_path);
    assert_eq!(info["checkpoints"]["RESULTS"], 300, "{info}");
    assert_eq!(info["checkpoints"]["TOPOLOGY"], 1, "{info}");
    assert_eq!(snapshots(&js).await.len(), 1);

    // Then the stream moves on and retention drops everything the snapshot holds.
    publish_results(&js, 300..400).await;
    js.get_stream("RESULTS")
        .await
        .unwrap()
        .purge()
        .sequence(301)
        .await
        .unwrap();
    assert_eq!(stream_state(&js, "RESULTS").await, (400, 100));
    a.wait_caught_up().await;

    // A replica with the bucket restores the snapshot and needs only the 100 after it.
    let b = spawn_app_with(
        with_bucket(&nats, &dir.path().join("b.db")),
        tempfile::tempdir().unwrap(),
    )
    .await;
    b.wait_caught_up().await;
    assert_eq!(digest(&b).await, digest(&a).await);
    assert_eq!(b.count("since=1h").await, 400);
    let ready: Value = b.get("/ready", None).await.json().await.unwrap();
    assert_eq!(ready["gaps"], json!([]), "{ready}");

    // One without it can only project what the stream still holds, and says so.
    let c = spawn_app_with(
        settings(&nats.url(), &dir.path().join("c.db")),
        tempfile::tempdir().unwrap(),
    )
    .await;
    c.wait_caught_up().await;
    assert_eq!(c.count("since=1h").await, 100);
    let ready: Value = c.get("/ready", None).await.json().await.unwrap();
    let gaps = ready["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{ready}");
    assert_eq!(
        (
            &gaps[0]["stream"],
            &gaps[0]["first_seq"],
            &gaps[0]["last_seq"],
            &gaps[0]["events"]
        ),
        (&json!("RESULTS"), &json!(1), &json!(300), &json!(300)),
        "{ready}"
    );
    let metrics = c.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("orrery_projection_missing_events{stream=\"RESULTS\"} 300"),
        "{metrics}"
    );
    assert!(metrics.contains("orrery_projection_missing_events{stream=\"TOPOLOGY\"} 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_fails_verification_is_skipped_for_an_older_good_one() {
    let (nats, js, dir, a) = replica_a(orrery::Settings::default()).await;
    publish_results(&js, 0..50).await;
    a.wait_caught_up().await;
    let good = snapshot_command(&nats, &a.db_path);

    // Newer objects that must not be used: a copy whose recorded digest is not its own,
    // one that is not a database, and one from a newer schema than this binary knows.
    let store = js.get_object_store(BUCKET).await.unwrap();
    let original = snapshots(&js).await.pop().unwrap();
    let mut bytes = Vec::new();
    tokio::io::copy(&mut store.get(&original.name).await.unwrap(), &mut bytes)
        .await
        .unwrap();
    let schema = orrery::snapshot::schema_version();
    let name = |n: u64, s: i64| format!("orrery-{:013}-s{s:04}-bad{n}.db", 9_000_000_000_000 + n);
    let mut tampered_digest = original.metadata.clone();
    tampered_digest.insert(
        "orrery-digest".into(),
        original.metadata["orrery-digest"].replace("\"checkpoint\":50", "\"checkpoint\":49"),
    );
    assert_ne!(tampered_digest, original.metadata);
    let mut newer_schema = original.metadata.clone();
    newer_schema.insert("orrery-schema".into(), (schema + 1).to_string());
    let uploads: [(String, HashMap<String, String>, Vec<u8>); 3] = [
        (name(1, schema), tampered_digest, bytes.clone()),
        (
            name(2, schema),
            original.metadata.clone(),
            b"not a database".to_vec(),
        ),
        (name(3, schema + 1), newer_schema, bytes.clone()),
    ];
    for (object, metadata, body) in uploads {
        let meta = object_store::ObjectMetadata {
            name: object,
            metadata,
            ..Default::default()
        };
        store.put(meta, &mut body.as_slice()).await.unwrap();
    }
    assert_eq!(snapshots(&js).await.len(), 4);

    let b_db = dir.path().join("b.db");
    let read_models =
        orrery::projections::read_models(&orrery::Settings::default().resolve_for(false).unwrap());
    let restored = orrery::snapshot::restore(&b_db, &js, BUCKET, &read_models)
        .await
        .unwrap()
        .expect("the good snapshot");
    assert_eq!(json!(restored.name), good["name"]);
    assert_eq!(restored.checkpoints["RESULTS"], 50);
    // Nothing of the bad ones was left behind beside the database.
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".orrery-snapshot-"))
        .collect();
    assert!(entries.is_empty(), "{entries:?}");

    // And a daemon on the restored file agrees with the one it came from.
    let b = spawn_app_with(with_bucket(&nats, &b_db), tempfile::tempdir().unwrap()).await;
    b.wait_caught_up().await;
    assert_eq!(digest(&b).await, digest(&a).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_daemon_writes_snapshots_on_its_interval_and_keeps_the_newest() {
    let (_nats, js, _dir, a) = replica_a(orrery::Settings {
        snapshot_interval_secs: Some(1),
        snapshot_keep: Some(2),
        ..Default::default()
    })
    .await;
    publish_results(&js, 0..20).await;
    a.wait_caught_up().await;
    // Every name ever listed: four distinct ones prove the interval runs.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "snapshots written: {seen:?}"
        );
        if let Ok(store) = js.get_object_store(BUCKET).await {
            if let Ok(list) = store.list().await {
                let now: Vec<_> = list.try_collect().await.unwrap_or_default();
                seen.extend(now.into_iter().filter(|i| !i.deleted).map(|i| i.name));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Between an upload and its pruning a third may show for a moment; without pruning
    // there would be four or more for good.
    wait_until(Duration::from_secs(5), "the newest two only", || async {
        snapshots(&js).await.len() <= 2
    })
    .await;
    let kept = snapshots(&js).await;
    for info in &kept {
        assert_eq!(
            info.metadata["orrery-schema"],
            orrery::snapshot::schema_version().to_string()
        );
        let recorded: Value = serde_json::from_str(&info.metadata["orrery-digest"]).unwrap();
        assert_eq!(recorded["read_models"][0]["checkpoint"], 20, "{recorded}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_stream_no_longer_holds_are_a_gap_not_lag() {
    let nats = NatsServer::start().unwrap();
    let js = jetstream(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_app_with(
        settings(&nats.url(), &dir.path().join("a.db")),
        tempfile::tempdir().unwrap(),
    )
    .await;
    wait_for_streams(&js).await;
    publish_results(&js, 0..40).await;
    js.get_stream("RESULTS")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    drop(a);

    // Nothing left to project: ready with lag 0, and the range it can never see reported.
    let b = spawn_app_with(
        settings(&nats.url(), &dir.path().join("b.db")),
        tempfile::tempdir().unwrap(),
    )
    .await;
    b.wait_caught_up().await;
    let ready: Value = b.get("/ready", None).await.json().await.unwrap();
    let gaps = ready["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{ready}");
    assert_eq!(
        (
            &gaps[0]["stream"],
            &gaps[0]["first_seq"],
            &gaps[0]["last_seq"]
        ),
        (&json!("RESULTS"), &json!(1), &json!(40)),
        "{ready}"
    );

    // Once a message follows, the projector passes the gap and records it.
    publish_results(&js, 40..41).await;
    b.wait_caught_up().await;
    assert_eq!(b.count("since=1h").await, 1);
    let ready: Value = b.get("/ready", None).await.json().await.unwrap();
    assert_eq!(ready["gaps"].as_array().unwrap().len(), 1, "{ready}");
    assert_eq!(ready["gaps"][0]["last_seq"], 40, "{ready}");
    let metrics = b.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("orrery_projection_missing_events{stream=\"RESULTS\"} 40"),
        "{metrics}"
    );
}
