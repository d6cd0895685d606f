//! Orrery against a NATS locked down as in production: users with permissions, and what an
//! operator sees when one is missing.

use std::time::{Duration, Instant};

use orrery::natsd::NatsServer;
use orrery::token::Role;
use serde_json::{json, Value};

use crate::helpers::*;

/// Users: `admin` may do anything; each other user lacks one permission Orrery needs.
const USERS: &str = r#"
authorization {
  users = [
    { user: admin, password: admin-pw }
    { user: no-create, password: pw, permissions: { publish: { deny: ["$JS.API.STREAM.CREATE.>"] } } }
    { user: no-mutations, password: pw, permissions: { publish: { deny: ["topology.*.mutation.>"] } } }
  ]
}
"#;

async fn app_as(nats: &NatsServer, user: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&nats.url(), &dir.path().join("orrery.db"));
    s.nats_user = Some(user.into());
    s.nats_password = Some(if user == "admin" { "admin-pw" } else { "pw" }.into());
    spawn_app_with(s, dir).await
}

/// Polls `/ready` until one of its reasons contains `needle`; that reason and how long it took.
async fn ready_reason(app: &TestApp, needle: &str) -> (String, Duration) {
    let started = Instant::now();
    loop {
        let body: Value = app.get("/ready", None).await.json().await.unwrap();
        let found = body["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|r| r.contains(needle));
        if let Some(reason) = found {
            return (reason.to_owned(), started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "/ready never named {needle}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// JetStream as `admin`, who may do anything.
async fn as_admin(nats: &NatsServer) -> async_nats::jetstream::Context {
    let admin =
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin-pw".into())
            .connect(nats.url())
            .await
            .unwrap();
    async_nats::jetstream::new(admin)
}

async fn ready_now(app: &TestApp) -> Value {
    let started = Instant::now();
    loop {
        let res = app.get("/ready", None).await;
        let ok = res.status() == 200;
        let body: Value = res.json().await.unwrap();
        if ok {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn denied_metric(app: &TestApp) -> f64 {
    let text = app.get("/metrics", None).await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("orrery_bus_permission_denied_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no orrery_bus_permission_denied_total in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_denied_stream_creation_is_named_in_ready_and_metrics_and_clears_once_granted() {
    let nats = NatsServer::start_with_config(USERS).unwrap();
    let app = app_as(&nats, "no-create").await;
    let (reason, took) = ready_reason(&app, "NATS denied publish to `$JS.API.STREAM.CREATE.").await;
    eprintln!("named in /ready after {took:?}: {reason}");
    assert!(
        reason.contains("grant this user that permission"),
        "{reason}"
    );
    assert!(denied_metric(&app).await >= 1.0);

    // Someone allowed to creates the streams: the replica carries on and turns ready.
    let js = as_admin(&nats).await;
    let provisioning = orrery::bus::streams::Provisioning {
        replicas: 1,
        max_age: Duration::from_secs(7 * 86_400),
    };
    orrery::bus::streams::provision(&js, provisioning)
        .await
        .unwrap();
    publish_result(
        &js,
        "result.traffic.a1",
        json!({"result_id": "r1", "exit_code": 0}),
    )
    .await;
    ready_now(&app).await;
    assert_eq!(app.count("since=1h").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_denied_publishing_mutations_gets_a_clear_refusal_not_a_timeout() {
    let nats = NatsServer::start_with_config(USERS).unwrap();
    let app = app_as(&nats, "no-mutations").await;
    app.wait_caught_up().await;
    let started = Instant::now();
    let res = app.enqueue("t1").await;
    let status = res.status();
    let body = res.text().await.unwrap();
    eprintln!(
        "enqueue answered {status} after {:?}: {body}",
        started.elapsed()
    );
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("NATS denied publish to `topology.t1.mutation.enqueued`"),
        "{body}"
    );
    let (reason, took) = ready_reason(
        &app,
        "NATS denied publish to `topology.t1.mutation.enqueued`",
    )
    .await;
    eprintln!("named in /ready {took:?} after the answer: {reason}");
    assert!(denied_metric(&app).await >= 1.0);
}

/// A user entry whose permissions are exactly the file `deploy/nats/orrery-{set}.permissions.conf`.
fn user_with_set(user: &str, set: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("deploy/nats/orrery-{set}.permissions.conf"));
    let permissions = std::fs::read_to_string(&path).unwrap();
    format!("{{ user: {user}, password: pw, permissions: {{\n{permissions}\n}} }}")
}

/// A nats-server with `admin` (anything), `provisioner` (the provisioning set) and `replica`
/// (the replica set).
fn nats_with_both_sets() -> NatsServer {
    let config = format!(
        "authorization {{ users = [\n{{ user: admin, password: admin-pw }}\n{}\n{}\n] }}",
        user_with_set("provisioner", "provisioning"),
        user_with_set("replica", "replica"),
    );
    NatsServer::start_with_config(&config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orrery_runs_under_exactly_the_documented_permission_sets() {
    let nats = nats_with_both_sets();

    // A replica that may not create streams, started first: the streams' absence is its
    // /ready reason, by name.
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&nats.url(), &dir.path().join("orrery.db"));
    s.nats_user = Some("replica".into());
    s.nats_password = Some("pw".into());
    s.provision_streams = Some(false);
    let replica = spawn_app_with(s, dir).await;
    let (reason, _) = ready_reason(&replica, "does not exist").await;
    let stream = reason
        .strip_prefix("stream ")
        .and_then(|r| r.split(' ').next());
    assert!(
        orrery::bus::streams::by_name(stream.unwrap_or_default()).is_some(),
        "{reason}"
    );

    // The provisioning set creates them; both replicas then project and serve everything.
    let provisioner = app_as(&nats, "provisioner").await;
    ready_now(&provisioner).await;
    ready_now(&replica).await;

    let js = as_admin(&nats).await;
    publish_result(&js, "result.deploy.a1", json!({"result_id": "d1", "workload_id": "shop", "reference": "shop@sha256:01", "exit_code": 0})).await;
    publish_result(&js, "heartbeat.a1", json!({"hostname": "a1.corp"})).await;
    publish_result(
        &js,
        "topology.t1.status",
        json!({"status": "active", "name": "lab"}),
    )
    .await;
    for i in 0..3 {
        publish_result(&js, "alert.sentry.shop", json!({"provider_event_id": format!("e-{i}"), "stage": "firing", "fingerprint": "fp-crash", "alertname": "Crash"})).await;
    }
    for app in [&provisioner, &replica] {
        app.wait_caught_up().await;
        let fleet = app.get("/api/v1/health/fleet", Some(Role::Viewer)).await;
        assert_eq!(fleet.status(), 200, "{}", fleet.text().await.unwrap());
        // Writes through the API: a mutation, a rollback command, a webhook's alert.
        let res = app.enqueue("t1").await;
        assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
        let res = app
            .post(
                "/api/v1/workloads/shop/rollback",
                Some(Role::Admin),
                json!({"deploy_id": "d1"}).to_string(),
            )
            .await;
        assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
        let res = app
            .post(
                "/api/v1/alerts/provider-heartbeat",
                Some(Role::Operator),
                json!({"project_id": "shop", "providers": ["sentry"]}).to_string(),
            )
            .await;
        assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
        // A live stream resumed from its first event: read back from the bus.
        let mut live =
            SseClient::new(open_stream(&app.http, &app.address, "t1", "perm", Some(0)).await);
        let first = live
            .next(Duration::from_secs(10))
            .await
            .expect("an event replayed from the bus");
        assert_ne!(first.event, "reset", "{first:?}");
    }
    // A work item of the recurring alert: dry-run, then the handoff (which reads the last
    // entry on its subject first).
    provisioner.wait_caught_up().await;
    let item = provisioner.first_work_item().await;
    let body = json!({ "work_item_id": item }).to_string();
    let res = provisioner
        .post(
            "/api/v1/alerts/recurrence/work-item/dry-run",
            Some(Role::Operator),
            body.clone(),
        )
        .await;
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    provisioner.wait_caught_up().await;
    let res = replica
        .post(
            "/api/v1/alerts/recurrence/work-item/handoff",
            Some(Role::Operator),
            body,
        )
        .await;
    let status = res.status();
    let text = res.text().await.unwrap();
    assert!(status == 202 || status == 409, "{status}: {text}");
    assert!(!text.contains("denied"), "{text}");

    // Nothing was refused along the way, and both are ready.
    for app in [&provisioner, &replica] {
        assert_eq!(denied_metric(app).await, 0.0);
        let ready = ready_now(app).await;
        assert_eq!(ready["reasons"], json!([]), "{ready}");
    }
}

#[test]
fn the_readme_lists_every_subject_of_the_permission_sets() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for set in ["replica", "provisioning"] {
        let file = std::fs::read_to_string(
            root.join(format!("deploy/nats/orrery-{set}.permissions.conf")),
        )
        .unwrap();
        let subjects: Vec<&str> = file
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split('"').skip(1).step_by(2))
            .collect();
        assert!(subjects.len() > 20, "{set}: {subjects:?}");
        for subject in subjects {
            // The README writes the per-stream subjects once, with <S> for the stream.
            let general = ["TOPOLOGY", "HEARTBEATS", "ALERTS", "RESULTS", "COMMANDS"]
                .iter()
                .fold(subject.to_owned(), |s, name| s.replace(name, "<S>"));
            let general = if general.starts_with("$JS.API.STREAM.MSG.GET") {
                subject.to_owned()
            } else {
                general.replace("WORKITEMS", "<S>")
            };
            assert!(
                readme.contains(&format!("`{general}`")),
                "{set}: the README does not list `{general}` ({subject})"
            );
        }
    }
}

/// A private PKI made by `openssl` for one test: a CA, a server certificate for localhost and
/// 127.0.0.1, a client certificate, an expired client certificate, and a second, unrelated CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = Self { dir };
        pki.ca("ca");
        pki.ca("wrong-ca");
        pki.leaf(
            "server",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth",
            2,
        );
        pki.leaf("client", "orrery", "extendedKeyUsage=clientAuth", 2);
        // Valid for no time at all: expired by the time anyone presents it.
        pki.leaf("expired", "orrery", "extendedKeyUsage=clientAuth", 0);
        std::thread::sleep(Duration::from_millis(1100));
        pki
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl (Debian's openssl package)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `openssl req`: a new P-256 key into `key` and, for `subject`, a request (or with
    /// `-x509`, a self-signed certificate) into `out`.
    fn new_key(&self, extra: &[&str], key: &str, out: &str, subject: &str) {
        let args = [
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ][..],
            extra,
            &["-keyout", key, "-out", out, "-subj", subject],
        ]
        .concat();
        self.openssl(&args);
    }

    fn ca(&self, name: &str) {
        let (key, pem, subject) = (
            format!("{name}.key"),
            format!("{name}.pem"),
            format!("/CN={name}"),
        );
        self.new_key(&["-x509", "-days", "2"], &key, &pem, &subject);
    }

    fn leaf(&self, name: &str, cn: &str, extensions: &str, days: u32) {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(self.path(&ext), extensions).unwrap();
        self.new_key(&[], &key, &csr, &format!("/CN={cn}"));
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            &days.to_string(),
            "-extfile",
            &ext,
        ]);
    }

    /// nats-server's `tls` block: the server certificate, and with `verify` client
    /// certificates checked against the CA (mutual TLS).
    fn server_block(&self, verify: bool) -> String {
        format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: {verify}, timeout: 5 }}",
            self.path("server.pem").display(),
            self.path("server.key").display(),
            self.path("ca.pem").display(),
        )
    }
}

/// Orrery's settings for `nats` over TLS trusting `ca`, presenting `client` (a name in the
/// PKI) when given.
fn tls_settings(
    nats: &NatsServer,
    pki: &Pki,
    ca: &str,
    client: Option<&str>,
    dir: &std::path::Path,
) -> orrery::Settings {
    let mut s = settings(
        &format!("tls://localhost:{}", nats.port()),
        &dir.join("orrery.db"),
    );
    s.nats_tls_ca = Some(pki.path(&format!("{ca}.pem")));
    if let Some(client) = client {
        s.nats_tls_cert = Some(pki.path(&format!("{client}.pem")));
        s.nats_tls_key = Some(pki.path(&format!("{client}.key")));
    }
    s
}

/// Enqueues a mutation through the API and waits until this replica has projected it: the
/// daemon connected, published and consumed.
async fn publishes_and_projects(app: &TestApp) {
    ready_now(app).await;
    let res = app.enqueue("t1").await;
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    app.wait_caught_up().await;
    let v = app
        .get_json("/api/v1/topologies/t1/mutations", Role::Viewer)
        .await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_mutual_tls_connect_project_and_publish() {
    let pki = Pki::new();
    for verify in [false, true] {
        let nats = NatsServer::start_with_config(&pki.server_block(verify)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let client = verify.then_some("client");
        let s = tls_settings(&nats, &pki, "ca", client, dir.path());
        let app = spawn_app_with(s, dir).await;
        publishes_and_projects(&app).await;
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_user_connects_and_a_wrong_seed_is_named_in_ready() {
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let config = format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}",
        user.public_key()
    );
    let nats = NatsServer::start_with_config(&config).unwrap();
    for (seed, works) in [
        (user.seed().unwrap(), true),
        (stranger.seed().unwrap(), false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(&nats.url(), &dir.path().join("orrery.db"));
        s.nats_nkey = Some(seed);
        let app = spawn_app_with(s, dir).await;
        if works {
            publishes_and_projects(&app).await;
        } else {
            let (reason, took) = ready_reason(&app, "not connected to NATS: ").await;
            eprintln!("wrong seed, after {took:?}: {reason}");
            assert!(
                reason.to_lowercase().contains("authorization violation"),
                "{reason}"
            );
        }
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_and_an_expired_client_certificate_are_named_in_ready() {
    let pki = Pki::new();
    let nats = NatsServer::start_with_config(&pki.server_block(true)).unwrap();
    for (ca, client, cause) in [
        ("wrong-ca", "client", "UnknownIssuer"),
        ("ca", "expired", "CertificateExpired"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let s = tls_settings(&nats, &pki, ca, Some(client), dir.path());
        let app = spawn_app_with(s, dir).await;
        let (reason, took) = ready_reason(&app, "not connected to NATS: ").await;
        eprintln!("{ca} + {client}, after {took:?}: {reason}");
        assert!(reason.contains(cause), "{ca} + {client}: {reason}");
        app.stop().await;
    }
}

/// A NATS JWT (`ed25519-nkey`) for `claims`, signed by `issuer`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": now,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signing_input = format!("{header}.{}", b64.encode(claims.to_string()));
    let signature = issuer.sign(signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", b64.encode(signature))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_in_operator_mode_connects_projects_and_publishes() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "test-operator",
        json!({"type": "operator", "version": 2}),
    );
    let unlimited = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1,
        "streams": -1, "consumer": -1});
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "orrery",
        json!({"limits": unlimited, "type": "account", "version": 2}),
    );
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        "orrery",
        json!({"subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
    );
    // JetStream needs a system account too.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        json!({"type": "account", "version": 2}),
    );
    let config = format!(
        "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{ {sys}: {system_jwt}, {acc}: {account_jwt} }}\n",
        sys = system.public_key(),
        acc = account.public_key()
    );
    let nats = NatsServer::start_with_config(&config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("orrery.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    let mut s = settings(&nats.url(), &dir.path().join("orrery.db"));
    s.nats_creds = Some(creds);
    let app = spawn_app_with(s, dir).await;
    publishes_and_projects(&app).await;
}

/// The bucket the permission sets grant for snapshots.
const SNAPSHOT_BUCKET: &str = "orrery-snapshots";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_written_pruned_and_restored_under_the_documented_permission_sets() {
    let nats = nats_with_both_sets();
    // A serving daemon writing a snapshot every second and keeping two: uploads and prunes.
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&nats.url(), &dir.path().join("orrery.db"));
    s.nats_user = Some("provisioner".into());
    s.nats_password = Some("pw".into());
    s.snapshot_bucket = Some(SNAPSHOT_BUCKET.into());
    s.snapshot_interval_secs = Some(1);
    s.snapshot_keep = Some(2);
    let writer = spawn_app_with(s, dir).await;
    ready_now(&writer).await;
    let js = as_admin(&nats).await;
    for i in 0..20 {
        publish_result(
            &js,
            "result.scan.a1",
            json!({"result_id": format!("r{i}"), "job_id": "j", "exit_code": 0}),
        )
        .await;
    }
    writer.wait_caught_up().await;
    // Three names seen while no more than two are kept prove uploads and pruning.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut kept = 0;
        if let Ok(store) = js.get_object_store(SNAPSHOT_BUCKET).await {
            if let Ok(list) = store.list().await {
                let listed: Vec<_> = futures::TryStreamExt::try_collect(list)
                    .await
                    .unwrap_or_default();
                for info in listed.into_iter().filter(|i| !i.deleted) {
                    kept += 1;
                    seen.insert(info.name);
                }
            }
        }
        if seen.len() >= 3 && kept <= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "snapshots seen: {seen:?}, kept {kept}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stream forgets what was snapshotted: only a restore can bring it back.
    let stream = js.get_stream("RESULTS").await.unwrap();
    stream.purge().await.unwrap();

    // A replica that may not create streams restores the newest snapshot and catches up.
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&nats.url(), &dir.path().join("orrery.db"));
    s.nats_user = Some("replica".into());
    s.nats_password = Some("pw".into());
    s.provision_streams = Some(false);
    s.snapshot_bucket = Some(SNAPSHOT_BUCKET.into());
    let reader = spawn_app_with(s, dir).await;
    reader.wait_caught_up().await;
    assert_eq!(reader.count("since=1h").await, 20);
    for app in [&writer, &reader] {
        assert_eq!(denied_metric(app).await, 0.0);
        let ready = ready_now(app).await;
        assert_eq!(ready["reasons"], json!([]), "{ready}");
    }
}
