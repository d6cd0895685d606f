//! A rolling deploy: replicas of the previous release (`$ORRERY_PREVIOUS_RELEASE`, built by
//! `scripts/ensure-release.sh`) and of this one share a bus and a snapshot bucket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use orrery::natsd::{free_port, NatsServer};
use orrery::token::Role;
use serde_json::Value;
use time::OffsetDateTime;

use super::{publish, traffic};
use crate::helpers::*;

const BUCKET: &str = "rolling";

/// The previous release's binary: `$ORRERY_PREVIOUS_RELEASE`, else the one
/// `scripts/ensure-release.sh` builds into `.tools/releases`.
fn previous_release() -> PathBuf {
    if let Some(path) = std::env::var_os("ORRERY_PREVIOUS_RELEASE") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let releases = std::fs::read_to_string(root.join("scripts/releases.txt")).unwrap();
    let schema = releases
        .lines()
        .rfind(|l| !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    let path = root.join(format!(".tools/releases/orrery-schema-{schema}"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/ensure-release.sh (make test does) or set \
         ORRERY_PREVIOUS_RELEASE",
        path.display()
    );
    path
}

/// A replica running as its own process, as in production: `orrery serve` of `bin`.
struct Replica {
    child: Child,
    address: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Replica {
    fn start(bin: &Path, nats_url: &str, dir: &Path, name: &str) -> Self {
        let port = free_port().unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("ORRERY_NATS_URL", nats_url)
            .env("ORRERY_DATABASE", dir.join(format!("{name}.db")))
            .env("ORRERY_LISTEN", format!("127.0.0.1:{port}"))
            .env("ORRERY_JWT_SECRET", SECRET)
            .env("ORRERY_SNAPSHOT_BUCKET", BUCKET)
            .env("RUST_LOG", "info")
            .env("ORRERY_LOG_FORMAT", "json")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
            log,
            http: reqwest::Client::new(),
        }
    }

    async fn get_json(&self, path: &str) -> Value {
        let res = self
            .http
            .get(format!("{}{path}", self.address))
            .bearer_auth(token(Role::Admin))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
        res.json().await.unwrap()
    }

    /// Waits until it answers `/ready` with every projection at lag 0.
    async fn wait_caught_up(&mut self) {
        let limit = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the replica exited: {}",
                self.log()
            );
            assert!(
                std::time::Instant::now() < limit,
                "never caught up: {}",
                self.log()
            );
            if let Ok(res) = self
                .http
                .get(format!("{}/ready", self.address))
                .send()
                .await
            {
                if caught_up(&res.json().await.unwrap_or_default()) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it as an init system would (SIGTERM) and waits.
    fn stop(mut self) {
        let status = orrery::natsd::terminate(&mut self.child).unwrap();
        assert!(status.success(), "{}", self.log());
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `orrery snapshot` of `bin` on a replica's database, with the shared bucket.
fn snapshot(bin: &Path, nats_url: &str, db: &Path) -> Value {
    let out = Command::new(bin)
        .arg("snapshot")
        .env_clear()
        .env("ORRERY_NATS_URL", nats_url)
        .env("ORRERY_DATABASE", db)
        .env("ORRERY_SNAPSHOT_BUCKET", BUCKET)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Answers that do not depend on the moment they are asked, and that the releases share.
const SAME_ANSWERS: [&str; 9] = [
    "/api/v1/topologies",
    "/api/v1/topologies/lab-eu/mutations",
    "/api/v1/topologies/lab-us",
    "/api/v1/alerts/recurrence?project_id=shop",
    "/api/v1/alerts/dossier?project_id=shop",
    "/api/v1/alerts/recent?project_id=ops",
    "/api/v1/workloads/shop/deploys",
    "/api/v1/dead-letters?stream=RESULTS",
    "/api/v1/agents/agent-1",
];

/// An answer without what is each replica's own: a dead letter's `id` numbers the dead
/// letters of every stream in the order this replica stored them.
fn same_everywhere(mut answer: Value) -> Value {
    if let Some(items) = answer["items"].as_array_mut() {
        for item in items {
            if item.get("payload_base64").is_some() {
                item.as_object_mut().unwrap().remove("id");
            }
        }
    }
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_keeps_serving_and_each_release_restores_only_snapshots_it_understands() {
    let previous = previous_release();
    let this = PathBuf::from(env!("CARGO_BIN_EXE_orrery"));
    let nats = NatsServer::start().unwrap();
    let js = jetstream(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t0 = OffsetDateTime::now_utc() - time::Duration::hours(2);

    // Two replicas of the previous release serve the first part.
    let mut one = Replica::start(&previous, &nats.url(), d, "one");
    let two = Replica::start(&previous, &nats.url(), d, "two");
    wait_for_streams(&js).await;
    publish(&js, &traffic::traffic(1, t0)).await;
    one.wait_caught_up().await;

    // The second is upgraded in place: this release starts on its file and migrates it,
    // while the first, still on the previous release, serves on; both project the second
    // part and answer alike.
    two.stop();
    let mut two = Replica::start(&this, &nats.url(), d, "two");
    publish(&js, &traffic::traffic(2, t0)).await;
    one.wait_caught_up().await;
    two.wait_caught_up().await;
    for path in SAME_ANSWERS {
        assert_eq!(
            same_everywhere(one.get_json(path).await),
            same_everywhere(two.get_json(path).await),
            "{path}"
        );
    }

    // This release's snapshot is of a schema the previous release does not know: a fresh
    // replica of it skips the snapshot and replays the bus instead, to the same state.
    let ours = snapshot(&this, &nats.url(), &d.join("two.db"));
    let schema = orrery::db::schema_version();
    assert_eq!(ours["schema_version"], schema, "{ours}");
    let mut three = Replica::start(&previous, &nats.url(), d, "three");
    three.wait_caught_up().await;
    let log = three.log();
    assert!(
        log.contains("snapshot skipped") && log.contains("newer than this binary"),
        "{log}"
    );
    assert!(!log.contains("restored and verified a snapshot"), "{log}");
    assert_eq!(
        three.get_json("/api/v1/admin/digest").await,
        one.get_json("/api/v1/admin/digest").await
    );

    // The previous release's snapshot, the newest in the bucket now, is restored by this
    // release, migrated, and equals the replica upgraded in place.
    let theirs = snapshot(&previous, &nats.url(), &d.join("one.db"));
    assert!(
        theirs["schema_version"].as_i64().unwrap() < schema,
        "{theirs}"
    );
    let mut four = Replica::start(&this, &nats.url(), d, "four");
    four.wait_caught_up().await;
    let log = four.log();
    // Restored, not skipped in favour of the older snapshot of this release.
    assert!(
        log.lines()
            .any(|l| l.contains("restored and verified a snapshot")
                && l.contains(theirs["name"].as_str().unwrap())),
        "{log}"
    );
    assert!(!log.contains("snapshot skipped"), "{log}");
    let digest = two.get_json("/api/v1/admin/digest").await;
    assert_eq!(four.get_json("/api/v1/admin/digest").await, digest);

    // Last, the first replica is upgraded too.
    one.stop();
    let mut one = Replica::start(&this, &nats.url(), d, "one");
    one.wait_caught_up().await;
    assert_eq!(one.get_json("/api/v1/admin/digest").await, digest);
    for r in [one, two, three, four] {
        r.stop();
    }
}
