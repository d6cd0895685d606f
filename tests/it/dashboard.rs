//! The dashboard at `/`: served strictly, signed into by token or single-use link, and used
//! in a real headless Chromium — overview, a live topology, role-aware controls, expiry.

use std::time::Duration;

use orrery::config::Secret;
use orrery::natsd::NatsServer;
use orrery::token::{mint_login, Role};
use serde_json::{json, Value};

use crate::cdp::Browser;
use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(20);

fn screenshots() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
}

fn login_link(app: &TestApp, role: Role) -> String {
    let login = mint_login(&Secret::new(SECRET), "tester", role, 3600).unwrap();
    format!("{}/#login={login}", app.address)
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_a_strict_policy_and_revalidated() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let res = app.get("/", None).await;
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for rule in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(rule), "{csp}");
    }
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    let etag = res.headers()["etag"].clone();
    let html = res.text().await.unwrap();
    // Nothing inline for the policy to refuse: no script body, no style attribute, no handler.
    assert!(
        !html.contains("<script>") && !html.contains("style=") && !html.contains(" on"),
        "{html}"
    );

    // Every asset the page (and its modules) references is served, with its own type.
    let mut assets = vec![
        "/assets/app.js",
        "/assets/api.js",
        "/assets/oidc.js",
        "/assets/views.js",
        "/assets/style.css",
        "/assets/vendor/uplot.esm.js",
        "/assets/vendor/uplot.min.css",
        "/assets/favicon.svg",
        "/assets/docs.js",
        "/assets/docs.css",
        "/assets/vendor/swagger-ui-bundle.js",
        "/assets/vendor/swagger-ui.css",
    ];
    for referenced in html.split('"').filter(|s| s.starts_with("/assets/")) {
        assert!(
            assets.contains(&referenced),
            "{referenced} is not in the list"
        );
    }
    for asset in assets.drain(..) {
        let res = app.get(asset, None).await;
        assert_eq!(res.status(), 200, "{asset}");
        let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
        let want = if asset.ends_with(".js") {
            "text/javascript"
        } else if asset.ends_with(".css") {
            "text/css"
        } else {
            "image/svg+xml"
        };
        assert_eq!(kind, want, "{asset}");
        assert!(
            res.headers().contains_key("content-security-policy"),
            "{asset}"
        );
    }

    // Revalidation: the same tag answers 304 with no body; another tag gets the page.
    let again = app
        .http
        .get(format!("{}/", app.address))
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());
    let stale = app
        .http
        .get(format!("{}/", app.address))
        .header("if-none-match", "\"old\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
    for missing in [
        "/assets/nope.js",
        "/assets/../Cargo.toml",
        "/assets/vendor/",
        "/assets/app.js/x",
    ] {
        assert_eq!(app.get(missing, None).await.status(), 404, "{missing}");
    }
}

#[tokio::test]
async fn a_sign_in_link_works_once_and_is_no_api_credential() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let login = mint_login(&Secret::new(SECRET), "alice", Role::Operator, 600).unwrap();
    let exchange = |body: String| {
        let http = app.http.clone();
        let url = format!("{}/api/v1/auth/login", app.address);
        async move {
            http.post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };

    // The link's token itself opens nothing.
    let res = app
        .http
        .get(format!("{}/api/v1/auth/whoami", app.address))
        .bearer_auth(&login)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let res = exchange(json!({"login_token": login}).to_string()).await;
    assert_eq!(res.status(), 200);
    let session: Value = res.json().await.unwrap();
    assert_eq!(
        (session["sub"].as_str(), session["role"].as_str()),
        (Some("alice"), Some("operator"))
    );
    let who: Value = app
        .http
        .get(format!("{}/api/v1/auth/whoami", app.address))
        .bearer_auth(session["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["role"], "operator");
    assert_eq!(who["auth"], true);

    // Once only.
    let res = exchange(json!({"login_token": login}).to_string()).await;
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("already used"),
        "{body}"
    );

    // An API token is no sign-in link; garbage and malformed bodies get clear answers.
    let api_token = token(Role::Admin);
    assert_eq!(
        exchange(json!({"login_token": api_token}).to_string())
            .await
            .status(),
        401
    );
    assert_eq!(
        exchange(json!({"login_token": "x.y.z"}).to_string())
            .await
            .status(),
        401
    );
    assert_eq!(exchange("{".into()).await.status(), 400);
    assert_eq!(
        exchange(json!({"token": "x"}).to_string()).await.status(),
        400
    );
    assert_eq!(exchange("x".repeat(20_000)).await.status(), 413);
}

/// Opens the dashboard without credentials and waits for its sign-in form.
async fn open_sign_in(b: &mut Browser, app: &TestApp) {
    b.goto(&format!("{}/", app.address)).await;
    b.wait_for(
        "!document.getElementById('signin').hidden",
        "the sign-in form",
        WAIT,
    )
    .await;
}

/// Opens topology `tid`'s live view and waits until its stream is live.
async fn open_live_topology(b: &mut Browser, app: &TestApp, tid: &str) {
    b.goto(&format!("{}/#/topologies/{tid}", app.address)).await;
    b.wait_for(
        "document.querySelector('[data-testid=live-state]')?.innerText === 'live'",
        "the live stream",
        WAIT,
    )
    .await;
}

/// Publishes a topology, a pinned successful deploy and a result, and waits for them.
async fn seed(app: &TestApp, js: &async_nats::jetstream::Context) {
    wait_for_streams(js).await;
    publish_topology(
        js,
        "lab",
        "status",
        json!({"status": "active", "name": "Lab"}),
    )
    .await;
    publish_result(
        js,
        "result.deploy.agent-1",
        json!({"result_id": "d-1", "workload_id": "shop", "exit_code": 0,
               "reference": "registry.example/shop@sha256:0123456789abcdef",
               "finished_at": ago(Duration::from_secs(30))}),
    )
    .await;
    publish_result(
        js,
        "result.traffic.agent-1",
        json!({"result_id": "r-1", "success": false, "finished_at": ago(Duration::from_secs(30))}),
    )
    .await;
    // The same alert twice: a recurring group, so a work item.
    for (peid, secs) in [("s-0", 40), ("s-1", 20)] {
        publish_at(
            js,
            "alert.sentry.shop",
            &ago(Duration::from_secs(secs)),
            json!({"provider_event_id": peid, "stage": "firing", "alertname": "Boom",
                   "content": "login failed: password=hunter2",
                   "source_refs": {"sentry": ["8841"]}}),
        )
        .await;
    }
    app.wait_caught_up().await;
}

/// Opens the work item of the seeded alert on the Alerts page and waits for its plan.
async fn open_work_item(b: &mut Browser) {
    b.wait_for(
        "document.querySelector('[data-testid=work-item-open]')",
        "the work item list",
        WAIT,
    )
    .await;
    b.eval("document.querySelector('[data-testid=work-item-open]').click(); true")
        .await;
    b.wait_for(
        "document.querySelector('[data-testid=work-item]').innerText.includes('propose automatic repair')",
        "the work item's plan",
        WAIT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_signs_in_by_link_sees_the_overview_and_no_operator_controls() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    seed(&app, &js).await;

    let mut b = Browser::start().await;
    b.goto(&login_link(&app, Role::Viewer)).await;
    b.wait_for(
        "document.body.dataset.role === 'viewer'",
        "the viewer to be signed in",
        WAIT,
    )
    .await;
    // The single-use link left the address bar.
    assert!(!b
        .eval("location.href")
        .await
        .as_str()
        .unwrap()
        .contains("login="));
    let badge = b
        .wait_for(
            "document.querySelector('[data-testid=failure-badge]')?.innerText",
            "the failure badge",
            WAIT,
        )
        .await;
    assert!(
        badge.as_str().unwrap().contains("failed, last 15m"),
        "{badge}"
    );
    b.wait_for(
        "document.body.innerText.includes('RESULTS')",
        "the projections table",
        WAIT,
    )
    .await;
    // Dead letters are for admins only.
    assert_eq!(
        b.eval("!!document.querySelector('[data-testid=dead-letters]')")
            .await,
        false
    );
    b.screenshot(&screenshots().join("overview-viewer.png"))
        .await;

    // A live topology, but no enqueue form.
    open_live_topology(&mut b, &app, "lab").await;
    assert_eq!(
        b.eval("!!document.querySelector('[data-testid=enqueue-form]')")
            .await,
        false
    );

    // Alerts, redacted.
    b.goto(&format!("{}/#/alerts", app.address)).await;
    b.wait_for(
        "document.body.innerText.includes('password=[REDACTED]')",
        "the redacted alert",
        WAIT,
    )
    .await;
    assert_eq!(
        b.eval("document.body.innerText.includes('hunter2')").await,
        false
    );
    // Its work item's plan, but nothing to record it with.
    open_work_item(&mut b).await;
    assert_eq!(
        b.eval("!!document.querySelector('[data-testid=dry-run]')")
            .await,
        false
    );

    // The deploy ledger, but no rollback control.
    b.goto(&format!("{}/#/deploys", app.address)).await;
    b.wait_for(
        "document.body.innerText.includes('d-1')",
        "the ledger",
        WAIT,
    )
    .await;
    assert_eq!(
        b.eval("document.querySelectorAll('[data-testid=rollback]').length")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sees_mutations_live_enqueues_rolls_back_and_hands_off_a_work_item() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    seed(&app, &js).await;

    // Sign in by pasting a token.
    let mut b = Browser::start().await;
    open_sign_in(&mut b, &app).await;
    b.eval(&format!(
        "document.getElementById('token').value = '{}'; \
         document.getElementById('signin-form').requestSubmit(); true",
        token(Role::Admin)
    ))
    .await;
    b.wait_for(
        "document.body.dataset.role === 'admin'",
        "the admin to be signed in",
        WAIT,
    )
    .await;
    b.wait_for(
        "document.querySelector('[data-testid=dead-letters]')?.innerText.includes('0 in all')",
        "the admin's dead letters",
        WAIT,
    )
    .await;

    open_live_topology(&mut b, &app, "lab").await;
    // A mutation published on the bus appears without a reload, then moves on.
    publish_topology(
        &js,
        "lab",
        "mutation.enqueued",
        json!({"mutation_id": "m-from-bus", "op": "add_decky"}),
    )
    .await;
    b.wait_for(
        "document.querySelector('[data-testid=in-flight]').innerText.includes('m-from-bus')",
        "the published mutation in flight",
        WAIT,
    )
    .await;
    publish_topology(
        &js,
        "lab",
        "mutation.applied",
        json!({"mutation_id": "m-from-bus"}),
    )
    .await;
    b.wait_for(
        "!document.querySelector('[data-testid=in-flight]').innerText.includes('m-from-bus') && \
         document.querySelector('[data-testid=event-log]').innerText.includes('m-from-bus applied')",
        "the mutation applied",
        WAIT,
    )
    .await;

    // The enqueue form publishes a mutation, which comes back over the stream.
    b.eval(
        "const f = document.querySelector('[data-testid=enqueue-form]'); \
         f.querySelector('[name=op]').value = 'rotate_keys'; f.requestSubmit(); true",
    )
    .await;
    let enqueued = b
        .wait_for(
            "(document.querySelector('[data-testid=enqueue-form]').innerText.match(/enqueued (\\S+)/) || [])[1]",
            "the enqueue answer",
            WAIT,
        )
        .await;
    let id = enqueued.as_str().unwrap().to_owned();
    b.wait_for(
        &format!("document.querySelector('[data-testid=in-flight]').innerText.includes('{id}')"),
        "the enqueued mutation over the stream",
        WAIT,
    )
    .await;
    b.screenshot(&screenshots().join("topology-admin.png"))
        .await;

    // Rollback behind a confirmation: declined, nothing is published; accepted, it is.
    b.goto(&format!("{}/#/deploys", app.address)).await;
    b.wait_for(
        "document.querySelector('[data-testid=rollback]')",
        "the rollback control",
        WAIT,
    )
    .await;
    b.eval("window.confirm = () => false; document.querySelector('[data-testid=rollback]').click(); true")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stream_state(&js, "COMMANDS").await.1, 0);
    b.eval("window.confirm = () => true; document.querySelector('[data-testid=rollback]').click(); true")
        .await;
    b.wait_for(
        "document.body.innerText.includes('rollback requested')",
        "the rollback answer",
        WAIT,
    )
    .await;
    assert_eq!(stream_state(&js, "COMMANDS").await.1, 1);

    // A work item: its plan, a dry-run, then a handoff with a drafted ticket, in its history.
    b.goto(&format!("{}/#/alerts", app.address)).await;
    open_work_item(&mut b).await;
    b.eval("document.querySelector('[data-testid=handoff]').click(); true")
        .await;
    b.wait_for(
        "document.querySelector('[data-testid=work-item-out]')?.innerText.includes('dry_run_required')",
        "the handoff refused before a dry-run",
        WAIT,
    )
    .await;
    b.eval("document.querySelector('[data-testid=dry-run]').click(); true")
        .await;
    b.wait_for(
        "document.querySelector('[data-testid=work-item-out]')?.innerText.includes('(passed)')",
        "the dry-run recorded",
        WAIT,
    )
    .await;
    b.eval("document.querySelector('[data-testid=handoff]').click(); true")
        .await;
    b.wait_for(
        "document.querySelector('[data-testid=work-item-out]')?.innerText.includes('handoff recorded') && \
         document.querySelector('[data-testid=work-item]').innerText.includes('Recurring alert Boom')",
        "the handoff and its ticket in the history",
        WAIT,
    )
    .await;
    assert_eq!(stream_state(&js, "WORKITEMS").await.1, 2);
    b.eval("document.querySelector('[data-testid=work-items]').scrollIntoView(); true")
        .await;
    b.screenshot(&screenshots().join("alerts-work-item.png"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_sends_the_user_back_to_sign_in() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &orrery::token::Claims::new("old", Role::Viewer, now - 120),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut b = Browser::start().await;
    open_sign_in(&mut b, &app).await;
    b.eval(&format!(
        "sessionStorage.setItem('orrery.token', '{expired}'); location.reload(); true"
    ))
    .await;
    let why = b
        .wait_for(
            "!document.getElementById('signin').hidden && document.getElementById('signin-why').innerText",
            "the expiry message",
            WAIT,
        )
        .await;
    assert!(why.as_str().unwrap().contains("expired"), "{why}");
    assert_eq!(b.eval("document.getElementById('top').hidden").await, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reference_renders_every_operation_offline_under_the_policy() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let res = app.get("/api/docs", None).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    let mut b = Browser::start().await;
    // Anything the policy blocks is recorded before the page's own scripts run.
    b.on_new_document(
        "window.__blocked = []; document.addEventListener('securitypolicyviolation', \
         (e) => window.__blocked.push(e.violatedDirective + ' ' + e.blockedURI));",
    )
    .await;
    // As many operations as the document declares.
    let doc: Value = reqwest::get(format!("{}/api/v1/openapi.json", app.address))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let declared: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert!(declared >= 33, "{declared}");
    b.goto(&format!("{}/api/docs", app.address)).await;
    let operations = b
        .wait_for(
            &format!(
                "document.querySelectorAll('.opblock').length >= {declared} && \
                 document.querySelectorAll('.opblock').length"
            ),
            "every operation rendered",
            WAIT,
        )
        .await;
    assert_eq!(operations, declared);
    assert_eq!(b.eval("window.__blocked").await, json!([]));
    b.screenshot(&screenshots().join("api-docs.png")).await;
}
