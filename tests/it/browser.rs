//! A real browser: headless Chromium opens a page whose `EventSource` receives the snapshot
//! and a live event from Orrery, across origins (CORS) with a single-use ticket.

use std::process::Stdio;
use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use orrery::natsd::NatsServer;
use orrery::token::Role;
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::helpers::*;

fn chromium() -> String {
    std::env::var("ORRERY_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_event_source_gets_the_snapshot_and_live_events() {
    let nats = NatsServer::start().unwrap();
    // The page is served from its own origin; Orrery allows it by CORS.
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!(
        "http://127.0.0.1:{}",
        page_listener.local_addr().unwrap().port()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&nats.url(), &dir.path().join("orrery.db"));
    s.cors_origins = Some(page_origin.clone());
    let app = spawn_app_with(s, dir).await;
    let js = jetstream(&nats).await;
    wait_until(Duration::from_secs(10), "TOPOLOGY stream", || async {
        js.get_stream("TOPOLOGY").await.is_ok()
    })
    .await;
    let first = publish_topology(
        &js,
        "web",
        "status",
        json!({"status": "active", "name": "Web"}),
    )
    .await;
    app.wait_caught_up().await;

    let ticket = app.sse_ticket(&token(Role::Viewer)).await;
    let page = format!(
        r#"<!doctype html><html><head><title>waiting</title></head><body><ul id="log"></ul><script>
const log = (t) => {{ const li = document.createElement("li"); li.textContent = t;
  document.getElementById("log").appendChild(li); }};
const es = new EventSource("{base}/topologies/web/events?ticket={ticket}");
es.addEventListener("snapshot", (e) => {{
  log("snapshot " + e.lastEventId + " " + JSON.parse(e.data).status);
  fetch("/snapshot-seen"); }});
es.addEventListener("status", (e) => {{
  log("status " + e.lastEventId + " " + JSON.parse(e.data).payload.status);
  es.close(); document.title = "done"; }});
es.onerror = () => log("error " + es.readyState);
</script></body></html>"#,
        base = app.address,
        ticket = ticket["ticket"].as_str().unwrap(),
    );
    // The page tells its own server once the snapshot is in, so that the live event is
    // published after the stream is subscribed, not merely accepted.
    let snapshot_seen = std::sync::Arc::new(tokio::sync::Notify::new());
    let seen = snapshot_seen.clone();
    let page_server = tokio::spawn(async move {
        let router = axum::Router::new()
            .route("/", get(move || async move { Html(page) }))
            .route(
                "/snapshot-seen",
                get(move || async move {
                    seen.notify_one();
                    "ok"
                }),
            );
        axum::serve(page_listener, router).await.unwrap();
    });

    let profile = tempfile::tempdir().unwrap();
    let mut browser = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=20000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("{page_origin}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium (install Debian's chromium or set ORRERY_CHROMIUM)");

    // Once the browser holds the snapshot, publish a live event.
    tokio::time::timeout(Duration::from_secs(30), snapshot_seen.notified())
        .await
        .expect("the browser received its snapshot in time");
    let live = publish_topology(&js, "web", "status", json!({"status": "paused"})).await;

    let mut dom = String::new();
    let mut stdout = browser.stdout.take().unwrap();
    tokio::time::timeout(Duration::from_secs(60), stdout.read_to_string(&mut dom))
        .await
        .expect("chromium printed its DOM in time")
        .unwrap();
    let _ = browser.wait().await;
    page_server.abort();

    assert!(dom.contains("<title>done</title>"), "{dom}");
    // Ids are `<seq>.<epoch>`, the epoch the TOPOLOGY stream's.
    let epoch = dom
        .split_once(&format!("<li>snapshot {first}."))
        .and_then(|(_, rest)| rest.split_once(' '))
        .map(|(epoch, _)| epoch.to_owned())
        .unwrap_or_else(|| panic!("no snapshot with id {first}.<epoch>: {dom}"));
    assert!(
        dom.contains(&format!("<li>snapshot {first}.{epoch} active</li>")),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("<li>status {live}.{epoch} paused</li>")),
        "{dom}"
    );
    assert!(!dom.contains("<li>error"), "{dom}");
}
