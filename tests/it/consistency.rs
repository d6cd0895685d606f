//! Read-your-writes: `Orrery-Seq` on every write, `Orrery-Min-Seq` / `?min_seq=` on reads.

use std::time::Duration;

use orrery::natsd::NatsServer;
use orrery::token::Role;
use serde_json::{json, Value};

use crate::helpers::*;

fn seq_header(res: &reqwest::Response) -> (String, u64) {
    let value = res.headers()["orrery-seq"].to_str().unwrap().to_owned();
    let (stream, seq) = value.split_once(':').unwrap();
    (stream.to_owned(), seq.parse().unwrap())
}

#[tokio::test]
async fn every_write_names_its_stream_and_sequence() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

    let res = app
        .post(
            "/api/v1/topologies/t1/mutations",
            Some(Role::Operator),
            json!({"op": "add", "spec": {}}).to_string(),
        )
        .await;
    assert_eq!(res.status(), 202);
    let (stream, seq) = seq_header(&res);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (stream.as_str(), seq),
        ("TOPOLOGY", body["seq"].as_u64().unwrap())
    );

    let res = app
        .post(
            "/api/v1/alerts/provider-heartbeat",
            Some(Role::Operator),
            json!({"project_id": "p", "providers": ["sentry", "signoz"]}).to_string(),
        )
        .await;
    assert_eq!(res.status(), 202);
    let (stream, seq) = seq_header(&res);
    let body: Value = res.json().await.unwrap();
    let last = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["seq"].as_u64().unwrap())
        .max();
    assert_eq!((stream.as_str(), Some(seq)), ("ALERTS", last));

    let hook = std::fs::read_to_string("tests/fixtures/alertmanager-webhook-v4.json").unwrap();
    let res = app
        .post(
            "/api/v1/alerts/webhook/alertmanager?project_id=p",
            Some(Role::Operator),
            hook,
        )
        .await;
    assert_eq!(res.status(), 202);
    let (stream, seq) = seq_header(&res);
    let body: Value = res.json().await.unwrap();
    let last = body["seqs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .max();
    assert_eq!((stream.as_str(), Some(seq)), ("ALERTS", last));

    publish_result(
        &js,
        "result.deploy.a1",
        json!({"result_id": "d1", "workload_id": "shop", "reference": "shop@sha256:01", "exit_code": 0}),
    )
    .await;
    app.wait_caught_up().await;
    let res = app
        .post(
            "/api/v1/workloads/shop/rollback",
            Some(Role::Admin),
            json!({"deploy_id": "d1"}).to_string(),
        )
        .await;
    assert_eq!(res.status(), 202);
    let (stream, seq) = seq_header(&res);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (stream.as_str(), seq),
        ("COMMANDS", body["seq"].as_u64().unwrap())
    );
}

#[tokio::test]
async fn a_read_with_min_seq_waits_for_the_write_or_says_what_is_behind() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&nats.url(), &dir.path().join("orrery.db"));
    // The projection lingers a second and a half before it commits a lone event, so a read
    // right after the write would not see it.
    s.batch_wait_ms = Some(1_500);
    s.mutation_wait_ms = Some(4_000);
    let app = spawn_app_with(s, dir).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

    let res = app
        .post(
            "/api/v1/topologies/rw/mutations",
            Some(Role::Operator),
            json!({"op": "add", "spec": {"n": 1}}).to_string(),
        )
        .await;
    let seq = res.headers()["orrery-seq"].to_str().unwrap().to_owned();
    let read = app
        .http
        .get(format!("{}/api/v1/topologies/rw", app.address))
        .bearer_auth(token(Role::Viewer))
        .header("Orrery-Min-Seq", &seq)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let body: Value = read.json().await.unwrap();
    assert_eq!(body["in_flight"][0]["op"], "add", "{body}");

    // Far ahead of anything committed: 503 after the wait, naming the stream.
    let behind = app
        .http
        .get(format!("{}/api/v1/topologies", app.address))
        .bearer_auth(token(Role::Viewer))
        .header("Orrery-Min-Seq", "TOPOLOGY:1000000, ALERTS:0")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(behind.status(), 503);
    assert_eq!(behind.headers()["retry-after"], "1");
    let body: Value = behind.json().await.unwrap();
    assert_eq!(
        (body["error"].as_str(), body["stream"].as_str()),
        (Some("behind"), Some("TOPOLOGY"))
    );
    assert_eq!(body["wanted"], 1_000_000);

    // The live stream takes it as ?min_seq=, since EventSource sends no custom headers.
    let (_, n) = seq.split_once(':').unwrap();
    let res = app
        .http
        .get(format!(
            "{}/topologies/rw/events?min_seq=TOPOLOGY:{n}",
            app.address
        ))
        .bearer_auth(token(Role::Viewer))
        .send()
        .await
        .unwrap();
    let mut sse = SseClient::new(res);
    let snap = sse.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(snap.json()["in_flight"][0]["op"], "add");
}

#[tokio::test]
async fn malformed_or_unprojected_min_seqs_are_422() {
    let nats = NatsServer::start().unwrap();
    let app = spawn_app(&nats).await;
    let long = format!("TOPOLOGY:{}", "1".repeat(40));
    for bad in [
        "TOPOLOGY",
        "TOPOLOGY:x",
        "NOPE:1",
        "topology:1",
        "COMMANDS:1",
        long.as_str(),
        "TOPOLOGY:1;RESULTS:2",
    ] {
        let res = app
            .http
            .get(format!("{}/api/v1/topologies", app.address))
            .bearer_auth(token(Role::Viewer))
            .header("Orrery-Min-Seq", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{bad}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["parameter"], "Orrery-Min-Seq", "{bad}");
    }
    // An empty value asks for nothing, as the document's pattern says.
    for empty in ["", "  "] {
        let res = app
            .http
            .get(format!("{}/api/v1/topologies", app.address))
            .bearer_auth(token(Role::Viewer))
            .header("Orrery-Min-Seq", empty)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{empty:?}");
    }
    let res = app
        .http
        .get(format!(
            "{}/topologies/t/events?min_seq=RESULTS",
            app.address
        ))
        .bearer_auth(token(Role::Viewer))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["parameter"], "min_seq");
}
