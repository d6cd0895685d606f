//! `orrery backup` beside a serving daemon under live ingest, and `orrery restore` refusing
//! what it cannot trust.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use orrery::natsd::NatsServer;
use orrery::token::Role;
use serde_json::{json, Value};

use crate::helpers::*;

fn orrery(args: &[&str], database: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orrery"))
        .args(args)
        .arg("--database")
        .arg(database)
        .env_remove("ORRERY_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Exit code 2 and one line on stderr containing `needle`.
fn refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(needle), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_live_ingest_restores_to_the_digest_of_a_replica_that_never_stopped() {
    let nats = NatsServer::start().unwrap();
    let a = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for i in 0..3_000 {
                publish_result(
                    &js,
                    &format!("result.scan.a{}", i % 7),
                    json!({"result_id": format!("r{i}"), "job_id": "j", "exit_code": i % 5}),
                )
                .await;
                // About three seconds in all: the backup is taken while this runs.
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };
    wait_until(
        Duration::from_secs(30),
        "some results projected",
        || async { a.count("since=1h").await > 300 },
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orrery.backup");
    let (db, file_arg) = (a.db_path.clone(), file.to_str().unwrap().to_owned());
    let out = tokio::task::spawn_blocking(move || orrery(&["backup", &file_arg], &db))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !publisher.is_finished(),
        "the backup was taken after ingest ended"
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let at = info["checkpoints"]["RESULTS"].as_u64().unwrap();
    assert!(at > 0 && at < 3_000, "{info}");
    publisher.await.unwrap();
    // The stream forgets what the backup holds: only the backup can bring it back.
    js.get_stream("RESULTS")
        .await
        .unwrap()
        .purge()
        .sequence(at + 1)
        .await
        .unwrap();

    // A second backup to the same file is refused; so is a restore over a database.
    refused(
        &orrery(&["backup", file.to_str().unwrap()], &a.db_path),
        "already exists",
    );
    refused(
        &orrery(&["restore", file.to_str().unwrap()], &a.db_path),
        "already exists",
    );

    let restored = dir.path().join("restored.db");
    let out = orrery(&["restore", file.to_str().unwrap()], &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b_dir = tempfile::tempdir().unwrap();
    let b = spawn_app_with(settings(&nats.url(), &restored), b_dir).await;
    a.wait_caught_up().await;
    b.wait_caught_up().await;
    assert_eq!(b.count("since=1h").await, 3_000);
    assert_eq!(
        b.get_json("/api/v1/admin/digest", Role::Admin).await,
        a.get_json("/api/v1/admin/digest", Role::Admin).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_newer_or_foreign_backup_is_refused_and_nothing_is_restored() {
    let nats = NatsServer::start().unwrap();
    let a = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;
    for i in 0..20 {
        publish_result(
            &js,
            "result.scan.a1",
            json!({"result_id": format!("r{i}"), "job_id": "j", "exit_code": 0}),
        )
        .await;
    }
    a.wait_caught_up().await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.backup");
    let out = orrery(&["backup", good.to_str().unwrap()], &a.db_path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let variant = |name: &str, sql: &str| {
        let path = dir.path().join(name);
        std::fs::copy(&good, &path).unwrap();
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        path
    };
    let edited = variant(
        "edited.backup",
        "UPDATE execution_results SET exit_code = 9 WHERE result_id = 'r3'",
    );
    let newer = variant(
        "newer.backup",
        "UPDATE _orrery_backup SET value = '9999' WHERE key = 'schema_version'",
    );
    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    let junk = dir.path().join("junk.backup");
    std::fs::write(&junk, b"not a database at all").unwrap();

    for (file, needle) in [
        (&edited, "do not match the digest"),
        (&newer, "schema version 9999"),
        (&foreign, "not an Orrery backup"),
        (&junk, "not an Orrery backup"),
        (&dir.path().join("missing.backup"), "is not a file"),
    ] {
        let target = dir.path().join("target.db");
        refused(
            &orrery(&["restore", file.to_str().unwrap()], &target),
            needle,
        );
        assert!(!target.exists(), "{}", file.display());
        // Nothing is left behind beside the target either.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".orrery-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    let out = orrery(
        &["restore", good.to_str().unwrap()],
        &dir.path().join("ok.db"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
