//! Upgrades from every earlier schema. `tests/fixtures/upgrade` holds a database written by
//! each earlier release's own code (built from its commit by `scripts/upgrade-fixtures.sh`)
//! from the first part of a traffic, and the JetStream store that traffic is in. Here this
//! release migrates each, catches up on a second part published after the "upgrade", and
//! must then equal, by digest, a database it rebuilt from the same stream.

mod rolling;
mod traffic;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use orrery::natsd::{free_port, NatsServer};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::helpers::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/upgrade");

/// Every read model kept for ever, so that the digests cover every row whenever the test runs
/// (the first part's events keep the times they were published with).
const KEEP_ALL: [(&str, &str); 5] = [
    ("ORRERY_RESULTS_RETENTION_SECS", "0"),
    ("ORRERY_ALERTS_RETENTION_SECS", "0"),
    ("ORRERY_MUTATIONS_RETENTION_SECS", "0"),
    ("ORRERY_DEAD_LETTERS_RETENTION_SECS", "0"),
    ("ORRERY_WORK_ITEMS_RETENTION_SECS", "0"),
];

fn keep_all(nats_url: &str, db: &Path) -> orrery::Settings {
    orrery::Settings {
        results_retention_secs: Some(0),
        alerts_retention_secs: Some(0),
        mutations_retention_secs: Some(0),
        dead_letters_retention_secs: Some(0),
        work_items_retention_secs: Some(0),
        // The samples' window is judged from the newest sample, which is the fixture's.
        sample_retention_secs: Some(30 * 86_400),
        ..settings(nats_url, db)
    }
}

/// `tests/fixtures/upgrade/manifest.json`: the traffic's start and the releases.
fn manifest() -> Value {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join("manifest.json"))
        .expect("tests/fixtures/upgrade/manifest.json (scripts/upgrade-fixtures.sh writes it)");
    serde_json::from_str(&text).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A nats-server on a copy (in `dir`) of the fixtures' store, which holds the first part.
fn fixture_bus(dir: &Path) -> NatsServer {
    let store = dir.join("store");
    copy_dir(&Path::new(FIXTURES).join("jetstream"), &store);
    NatsServer::start_in(store, free_port().unwrap()).unwrap()
}

async fn publish(js: &jetstream::Context, messages: &[traffic::Message]) {
    for m in messages {
        publish_raw(js, &m.subject, &m.id, m.body.clone())
            .await
            .await
            .unwrap();
    }
}

/// The newest migration a database file has.
async fn schema_of(db: &Path) -> i64 {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let v = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    v
}

/// Projects until caught up, then stops.
async fn catch_up(nats_url: &str, db: &Path) {
    let app = spawn_app_with(keep_all(nats_url, db), tempfile::tempdir().unwrap()).await;
    app.wait_caught_up().await;
    app.stop().await;
}

fn rows(digest: &Value, table: &str) -> u64 {
    digest["read_models"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["tables"].as_array().unwrap())
        .find(|t| t["table"] == table)
        .unwrap_or_else(|| panic!("no table {table} in the digest"))["rows"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_earlier_schema_upgrades_to_the_digest_of_a_rebuild() {
    let manifest = manifest();
    let t0 = OffsetDateTime::parse(manifest["t0"].as_str().unwrap(), &Rfc3339).unwrap();
    let second = traffic::traffic(2, t0);
    let releases = manifest["releases"].as_array().unwrap();
    assert!(
        releases.len() >= 9,
        "one fixture per earlier schema version"
    );
    let mut failures = Vec::new();
    for release in releases {
        let schema = release["schema"].as_i64().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let nats = fixture_bus(dir.path());
        let js = jetstream(&nats).await;
        publish(&js, &second).await;

        let upgraded = dir.path().join("upgraded.db");
        std::fs::copy(
            Path::new(FIXTURES).join(format!("schema-{schema}.db")),
            &upgraded,
        )
        .unwrap();
        assert_eq!(
            schema_of(&upgraded).await,
            schema,
            "the fixture's own schema"
        );
        catch_up(&nats.url(), &upgraded).await;
        assert_eq!(
            schema_of(&upgraded).await,
            orrery::db::schema_version(),
            "migrated to this release's schema"
        );
        let rebuilt = dir.path().join("rebuilt.db");
        catch_up(&nats.url(), &rebuilt).await;

        let digest = |db: &PathBuf| -> Value {
            serde_json::from_slice(&orrery_cli(&["digest"], db, &KEEP_ALL)).unwrap()
        };
        let (a, b) = (digest(&upgraded), digest(&rebuilt));
        let differ = differing_tables(&a, &b);
        if !differ.is_empty() {
            failures.push(format!(
                "schema {schema} ({}): {}",
                release["commit"],
                differ.join(", ")
            ));
            continue;
        }
        assert_eq!(a, b, "schema {schema}: equal tables, equal digest");
        // The digest covers what both parts sent: 2 × (60 results + 4 deploys + 3 runs),
        // the re-sent result counted once.
        assert_eq!(rows(&a, "execution_results"), 134, "schema {schema}");
        assert_eq!(rows(&a, "alert_runs"), 6, "schema {schema}");
        assert_eq!(rows(&a, "deploy_history"), 8, "schema {schema}");
        assert!(rows(&a, "alert_events") >= 2 * 9, "schema {schema}");
        assert!(rows(&a, "work_item_history") >= 4, "schema {schema}");
        drop(nats);
    }
    assert!(
        failures.is_empty(),
        "upgraded then caught up, these differ from a rebuild (upgraded/rebuilt rows):\n{}",
        failures.join("\n")
    );
}

/// A database older than schema 9 asks for RESULTS to be read again; when the stream no
/// longer holds those messages (retention moved on), the request is given up with a warning
/// and projection goes on from the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reread_the_stream_no_longer_holds_is_given_up_and_projection_goes_on() {
    let t0 = OffsetDateTime::parse(manifest()["t0"].as_str().unwrap(), &Rfc3339).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nats = fixture_bus(dir.path());
    let js = jetstream(&nats).await;
    // Everything the schema-8 release projected is gone from RESULTS.
    js.get_stream("RESULTS")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    publish(&js, &traffic::traffic(2, t0)).await;

    let db = dir.path().join("upgraded.db");
    std::fs::copy(Path::new(FIXTURES).join("schema-8.db"), &db).unwrap();
    catch_up(&nats.url(), &db).await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(count("SELECT COUNT(*) FROM stream_rereads").await, 0);
    // The first part's results stay as the old release left them, the second is projected.
    assert_eq!(count("SELECT COUNT(*) FROM execution_results").await, 134);
    // Only the second part's runs are linked: the first part's links were never stored.
    assert_eq!(count("SELECT COUNT(*) FROM alert_runs").await, 3);
    assert_eq!(
        count("SELECT COUNT(*) FROM alert_runs WHERE result_id LIKE 'run-2-%'").await,
        3
    );
}

/// `orrery rebuild` replays from the first message, so it drops a pending request to read
/// the stream again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_drops_a_pending_reread() {
    let dir = tempfile::tempdir().unwrap();
    let nats = fixture_bus(dir.path());
    let db = dir.path().join("upgraded.db");
    std::fs::copy(Path::new(FIXTURES).join("schema-8.db"), &db).unwrap();
    // Migrating alone (no projector runs) leaves the request pending.
    orrery_cli(&["migrate"], &db, &[]);
    let pending = || async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
            .await
            .unwrap();
        let v: Vec<(String, i64)> =
            sqlx::query_as("SELECT stream, through_seq FROM stream_rereads")
                .fetch_all(&pool)
                .await
                .unwrap();
        pool.close().await;
        v
    };
    assert_eq!(pending().await, vec![("RESULTS".to_owned(), 70)]);
    rebuild(&nats.url(), &db, Some("RESULTS"));
    assert_eq!(pending().await, vec![]);
}

/// `stream.table (rows upgraded/rebuilt)` of every table whose hash differs.
fn differing_tables(a: &Value, b: &Value) -> Vec<String> {
    let tables = |d: &Value| -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for m in d["read_models"].as_array().unwrap() {
            for t in m["tables"].as_array().unwrap() {
                out.push((
                    format!(
                        "{}.{}",
                        m["stream"].as_str().unwrap(),
                        t["table"].as_str().unwrap()
                    ),
                    t.clone(),
                ));
            }
            out.push((
                format!("{}.checkpoint", m["stream"].as_str().unwrap()),
                m["checkpoint"].clone(),
            ));
        }
        for t in d["shared"].as_array().unwrap() {
            out.push((
                format!("shared.{}", t["table"].as_str().unwrap()),
                t.clone(),
            ));
        }
        out
    };
    let (a, b) = (tables(a), tables(b));
    let mut differ = Vec::new();
    for (name, ta) in &a {
        match b.iter().find(|(n, _)| n == name) {
            Some((_, tb)) if tb == ta => {}
            Some((_, tb)) => differ.push(format!("{name} ({}/{})", ta["rows"], tb["rows"])),
            None => differ.push(format!("{name} (only upgraded)")),
        }
    }
    for (name, _) in &b {
        if !a.iter().any(|(n, _)| n == name) {
            differ.push(format!("{name} (only rebuilt)"));
        }
    }
    differ
}

/// Regenerates `tests/fixtures/upgrade` with the old releases in `$ORRERY_OLD_RELEASES`
/// (`orrery-schema-<N>` each): run by `scripts/upgrade-fixtures.sh`, never by `make test`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "regenerates the committed fixtures; run scripts/upgrade-fixtures.sh"]
async fn regenerate_upgrade_fixtures() {
    let releases = PathBuf::from(
        std::env::var_os("ORRERY_OLD_RELEASES").expect("ORRERY_OLD_RELEASES: the old binaries"),
    );
    let out = Path::new(FIXTURES);
    let work = tempfile::tempdir().unwrap();
    // An hour boundary some hours ago: the old releases prune stats samples by their clock.
    let now = OffsetDateTime::now_utc();
    let t0 = now
        .replace_minute(0)
        .unwrap()
        .replace_second(0)
        .unwrap()
        .replace_nanosecond(0)
        .unwrap()
        - time::Duration::hours(3);

    // The store: every stream this release knows, kept for ever, holding the first part.
    let store = work.path().join("store");
    {
        let mut nats = NatsServer::start_in(store.clone(), free_port().unwrap()).unwrap();
        let js = jetstream(&nats).await;
        let keep = orrery::bus::streams::Provisioning {
            replicas: 1,
            max_age: Duration::ZERO,
        };
        for spec in orrery::bus::streams::ALL {
            js.create_stream(keep.config(spec)).await.unwrap();
        }
        publish(&js, &traffic::traffic(1, t0)).await;
        nats.stop().unwrap();
    }

    let mut manifest = Vec::new();
    for line in std::fs::read_to_string(releases.join("releases"))
        .unwrap()
        .lines()
    {
        let (schema, commit) = line.split_once(':').unwrap();
        let schema: i64 = schema.parse().unwrap();
        let bin = releases.join(format!("orrery-schema-{schema}"));
        let run = work.path().join(format!("run-{schema}"));
        copy_dir(&store, &run.join("store"));
        let mut nats = NatsServer::start_in(run.join("store"), free_port().unwrap()).unwrap();
        let db = run.join("orrery.db");
        let log = std::fs::File::create(run.join("orrery.log")).unwrap();
        let mut old = std::process::Command::new(&bin)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("ORRERY_NATS_URL", nats.url())
            .env("ORRERY_DATABASE", &db)
            .env("ORRERY_LISTEN", "127.0.0.1:0")
            .env("ORRERY_JWT_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_old_release(&nats, &db, &mut old, schema).await;
        assert!(
            orrery::natsd::terminate(&mut old).unwrap().success(),
            "schema {schema} stopped badly"
        );
        nats.stop().unwrap();
        assert_eq!(
            schema_of(&db).await,
            schema,
            "{} wrote another schema",
            bin.display()
        );

        // One self-contained file, without the WAL.
        let target = out.join(format!("schema-{schema}.db"));
        let _ = std::fs::remove_file(&target);
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query("VACUUM INTO ?1")
            .bind(target.display().to_string())
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        manifest.push(json!({"schema": schema, "commit": commit}));
    }

    let target = out.join("jetstream");
    let _ = std::fs::remove_dir_all(&target);
    // The fixture is the stream data alone, not the log of the server that wrote it.
    let _ = std::fs::remove_file(store.join(orrery::natsd::LOG_FILE));
    copy_dir(&store, &target);
    let manifest = json!({"t0": t0.format(&Rfc3339).unwrap(), "releases": manifest});
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest).unwrap() + "\n",
    )
    .unwrap();
}

/// Waits until the old release has projected every message of every stream it consumes
/// (its checkpoints stand at their streams' last sequences and stay there for a second).
async fn wait_for_old_release(
    nats: &NatsServer,
    db: &Path,
    old: &mut std::process::Child,
    schema: i64,
) {
    let js = jetstream(nats).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut settled = 0;
    let mut last: Vec<(String, i64)> = Vec::new();
    while settled < 5 {
        assert!(
            old.try_wait().unwrap().is_none(),
            "schema {schema} exited early: see its orrery.log"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "schema {schema} never caught up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !db.exists() {
            continue;
        }
        let Ok(pool) =
            sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display())).await
        else {
            continue;
        };
        let now: Vec<(String, i64)> =
            sqlx::query_as("SELECT stream, last_seq FROM checkpoints ORDER BY stream")
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
        pool.close().await;
        let mut at_end = !now.is_empty();
        for (stream, seq) in &now {
            let (last_seq, _) = stream_state(&js, stream).await;
            at_end &= *seq as u64 == last_seq;
        }
        settled = if at_end && now == last {
            settled + 1
        } else {
            0
        };
        last = now;
    }
}
