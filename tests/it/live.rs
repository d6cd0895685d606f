//! The live topology stream: snapshot, hand-off, resume, limits, slow clients.

use std::time::Duration;

use orrery::natsd::NatsServer;
use orrery::token::Role;
use serde_json::json;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(10);

async fn live_app(nats: &NatsServer, tweak: impl FnOnce(&mut orrery::Settings)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&nats.url(), &dir.path().join("orrery.db"));
    tweak(&mut s);
    spawn_app_with(s, dir).await
}

async fn wait_for_topology_streams(js: &async_nats::jetstream::Context) {
    wait_until(WAIT, "TOPOLOGY stream", || async {
        js.get_stream("TOPOLOGY").await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn snapshot_shows_status_and_in_flight_then_live_events_follow() {
    let nats = NatsServer::start().unwrap();
    let app = live_app(&nats, |_| {}).await;
    let js = jetstream(&nats).await;
    wait_for_topology_streams(&js).await;

    publish_topology(
        &js,
        "lab-eu",
        "status",
        json!({"status": "active", "name": "EU lab"}),
    )
    .await;
    publish_topology(&js, "lab-eu", "mutation.enqueued",
        json!({"mutation_id": "m1", "op": "add_decky", "spec": {"decky": "web-3"}, "actor": "alice"})).await;
    publish_topology(
        &js,
        "lab-eu",
        "mutation.enqueued",
        json!({"mutation_id": "m2", "op": "rm"}),
    )
    .await;
    let applying = publish_topology(
        &js,
        "lab-eu",
        "mutation.applying",
        json!({"mutation_id": "m1"}),
    )
    .await;
    publish_topology(
        &js,
        "lab-eu",
        "mutation.applied",
        json!({"mutation_id": "m2"}),
    )
    .await;
    app.wait_caught_up().await;

    let mut sse = SseClient::new(open_stream(&app.http, &app.address, "lab-eu", "u", None).await);
    let snap = sse.next(WAIT).await.unwrap();
    assert_eq!(snap.event, "snapshot");
    let body = snap.json();
    assert_eq!(body["topology_id"], "lab-eu");
    assert_eq!(body["status"], "active");
    assert_eq!(body["name"], "EU lab");
    assert_eq!(body["seq"], snap.seq());
    assert!(snap.seq() >= applying);
    let in_flight = body["in_flight"].as_array().unwrap();
    assert_eq!(in_flight.len(), 1, "{body}");
    assert_eq!(in_flight[0]["mutation_id"], "m1");
    assert_eq!(in_flight[0]["state"], "applying");
    assert_eq!(in_flight[0]["op"], "add_decky");
    assert_eq!(in_flight[0]["spec"], json!({"decky": "web-3"}));
    assert_eq!(in_flight[0]["actor"], "alice");

    let seq = publish_topology(
        &js,
        "lab-eu",
        "mutation.failed",
        json!({"mutation_id": "m1", "error": "bridge br-lab not found"}),
    )
    .await;
    publish_topology(&js, "other", "status", json!({"status": "x"})).await;
    let ev = sse.next(WAIT).await.unwrap();
    assert_eq!(ev.event, "mutation.failed");
    assert_eq!(ev.seq(), seq);
    let data = ev.json();
    assert_eq!(data["topic"], "topology.lab-eu.mutation.failed");
    assert_eq!(data["type"], "mutation.failed");
    assert_eq!(data["seq"], seq);
    assert_eq!(data["payload"]["error"], "bridge br-lab not found");
    assert!(data["ts"].as_str().unwrap().ends_with('Z'));

    // The REST view agrees, once the other topology's event (which may have been committed
    // in a later batch than the one the stream just delivered) is projected too.
    app.wait_caught_up().await;
    let t = app
        .get_json("/api/v1/topologies/lab-eu", Role::Viewer)
        .await;
    assert_eq!(t["in_flight"], json!([]));
    let failed = app
        .get_json(
            "/api/v1/topologies/lab-eu/mutations?state=failed",
            Role::Viewer,
        )
        .await;
    assert_eq!(failed["items"][0]["error"], "bridge br-lab not found");
    let list = app.get_json("/api/v1/topologies", Role::Viewer).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
}

/// Deterministic pseudo-random numbers without a dependency.
fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_joining_during_2000_events_see_no_gap_and_no_duplicate() {
    const EVENTS: usize = 2000;
    const CLIENTS: u64 = 50;
    let nats = NatsServer::start().unwrap();
    // This test is about the hand-off, not slow clients: a queue above the largest batch
    // (4096) means no client is ever told to resync here.
    let app = live_app(&nats, |s| s.sse_client_queue = Some(8192)).await;
    let js = jetstream(&nats).await;
    wait_for_topology_streams(&js).await;
    publish_topology(&js, "load", "status", json!({"status": "active"})).await;
    app.wait_caught_up().await;

    // Publisher: events for "load", interleaved with another topology's.
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            let mut mine = Vec::with_capacity(EVENTS);
            for i in 0..EVENTS {
                let seq = publish_topology(
                    &js,
                    "load",
                    "mutation.enqueued",
                    json!({"mutation_id": format!("m{i}"), "op": "op"}),
                )
                .await;
                mine.push(seq);
                if i % 3 == 0 {
                    publish_topology(&js, "noise", "status", json!({"status": "s"})).await;
                }
            }
            mine
        })
    };

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let http = app.http.clone();
        let base = app.address.clone();
        clients.push(tokio::spawn(async move {
            let mut rnd = lcg(c);
            tokio::time::sleep(Duration::from_millis(rnd() % 1500)).await;
            let res = open_stream(&http, &base, "load", &format!("client-{c}"), None).await;
            let mut sse = SseClient::new(res);
            let snap = sse.next(WAIT).await.expect("snapshot");
            assert_eq!(snap.event, "snapshot");
            let mut ids = Vec::new();
            while let Some(ev) = sse.next(Duration::from_secs(5)).await {
                assert!(ev.event.starts_with("mutation."), "client {c}: {ev:?}");
                ids.push(ev.seq());
                if ev.json()["payload"]["mutation_id"] == format!("m{}", EVENTS - 1) {
                    break;
                }
            }
            (snap.seq(), ids)
        }));
    }
    let published = publisher.await.unwrap();
    for (c, client) in clients.into_iter().enumerate() {
        let (snapshot_seq, ids) = client.await.unwrap();
        let expected: Vec<u64> = published
            .iter()
            .copied()
            .filter(|s| *s > snapshot_seq)
            .collect();
        assert_eq!(ids, expected, "client {c} joined at seq {snapshot_seq}");
    }
}

#[tokio::test]
async fn last_event_id_resumes_with_exactly_the_missed_events_or_a_reset_snapshot() {
    let nats = NatsServer::start().unwrap();
    let app = live_app(&nats, |s| s.sse_replay_events = Some(20)).await;
    let js = jetstream(&nats).await;
    wait_for_topology_streams(&js).await;
    publish_topology(&js, "t1", "status", json!({"status": "active"})).await;
    app.wait_caught_up().await;

    let mut sse = SseClient::new(open_stream(&app.http, &app.address, "t1", "u", None).await);
    assert_eq!(sse.next(WAIT).await.unwrap().event, "snapshot");
    let mut seqs = Vec::new();
    for i in 0..10 {
        seqs.push(
            publish_topology(
                &js,
                "t1",
                "mutation.enqueued",
                json!({"mutation_id": format!("a{i}")}),
            )
            .await,
        );
    }
    let mut seen = 0;
    for _ in 0..4 {
        seen = sse.next(WAIT).await.unwrap().seq();
    }
    assert_eq!(seen, seqs[3]);
    drop(sse); // the connection drops while publishing goes on
    for i in 0..5 {
        seqs.push(
            publish_topology(
                &js,
                "t1",
                "mutation.applied",
                json!({"mutation_id": format!("a{i}")}),
            )
            .await,
        );
    }
    app.wait_caught_up().await;

    let mut again =
        SseClient::new(open_stream(&app.http, &app.address, "t1", "u", Some(seen)).await);
    let mut got = Vec::new();
    for _ in 0..seqs.len() - 4 {
        let ev = again.next(WAIT).await.unwrap();
        assert_ne!(ev.event, "snapshot");
        got.push(ev.seq());
    }
    assert_eq!(got, seqs[4..].to_vec());
    let live = publish_topology(&js, "t1", "status", json!({"status": "paused"})).await;
    assert_eq!(again.next(WAIT).await.unwrap().seq(), live);
    assert!(
        again.next(Duration::from_millis(300)).await.is_none(),
        "nothing more"
    );

    // Past the 20 retained events: read back from the stream, exactly.
    for i in 0..25 {
        seqs.push(
            publish_topology(
                &js,
                "t1",
                "mutation.enqueued",
                json!({"mutation_id": format!("b{i}")}),
            )
            .await,
        );
        if i % 5 == 0 {
            publish_topology(&js, "other", "status", json!({"status": "x"})).await;
        }
    }
    seqs.insert(15, live);
    app.wait_caught_up().await;
    let mut old = SseClient::new(open_stream(&app.http, &app.address, "t1", "u", Some(seen)).await);
    let mut got = Vec::new();
    for _ in 4..seqs.len() {
        let ev = old.next(WAIT).await.unwrap();
        assert_ne!(ev.event, "snapshot", "{ev:?}");
        got.push(ev.seq());
    }
    assert_eq!(got, seqs[4..].to_vec());
    let next = publish_topology(&js, "t1", "status", json!({"status": "live"})).await;
    assert_eq!(old.next(WAIT).await.unwrap().seq(), next);
    assert!(
        old.next(Duration::from_millis(300)).await.is_none(),
        "nothing more"
    );

    // Once retention has dropped messages after the id: a fresh snapshot marked reset.
    js.get_stream("TOPOLOGY")
        .await
        .unwrap()
        .purge()
        .sequence(seqs[10])
        .await
        .unwrap();
    let mut gone =
        SseClient::new(open_stream(&app.http, &app.address, "t1", "u", Some(seen)).await);
    let snap = gone.next(WAIT).await.unwrap();
    assert_eq!(snap.event, "snapshot");
    assert_eq!(snap.json()["reset"], true);
    assert_eq!(snap.json()["status"], "live");
}

#[tokio::test]
async fn a_resume_after_a_restart_is_served_from_the_stream() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("orrery.db");
    let js = jetstream(&nats).await;
    let app = spawn_app_with(settings(&nats.url(), &db), tempfile::tempdir().unwrap()).await;
    wait_for_topology_streams(&js).await;
    publish_topology(&js, "t1", "status", json!({"status": "active"})).await;
    app.wait_caught_up().await;
    let mut sse = SseClient::new(open_stream(&app.http, &app.address, "t1", "u", None).await);
    let snap = sse.next(WAIT).await.unwrap();
    let first =
        publish_topology(&js, "t1", "mutation.enqueued", json!({"mutation_id": "m0"})).await;
    let ev = sse.next(WAIT).await.unwrap();
    assert_eq!(ev.seq(), first);
    let (last_id, epoch) = (ev.id.clone().unwrap(), ev.epoch().to_owned());
    assert_eq!(snap.epoch(), epoch);
    drop(sse);
    // Missed while the daemon still ran (so the restarted hub never holds them), and while
    // it was down.
    let mut missed = Vec::new();
    let miss = |js: async_nats::jetstream::Context, i: usize| async move {
        let seq = publish_topology(
            &js,
            "t1",
            "mutation.enqueued",
            json!({"mutation_id": format!("m{i}")}),
        )
        .await;
        publish_topology(&js, "t2", "status", json!({"status": "noise"})).await;
        seq
    };
    for i in 1..=3 {
        missed.push(miss(js.clone(), i).await);
    }
    app.wait_caught_up().await;
    app.stop().await;
    for i in 4..=6 {
        missed.push(miss(js.clone(), i).await);
    }
    let app = spawn_app_with(settings(&nats.url(), &db), tempfile::tempdir().unwrap()).await;
    app.wait_caught_up().await;
    let mut again =
        SseClient::new(open_stream_after(&app.http, &app.address, "t1", "u", Some(&last_id)).await);
    for seq in &missed {
        let ev = again.next(WAIT).await.unwrap();
        assert_eq!(
            (ev.event.as_str(), ev.seq()),
            ("mutation.enqueued", *seq),
            "{ev:?}"
        );
        assert_eq!(
            ev.epoch(),
            epoch,
            "the epoch is the stream's, the same after a restart"
        );
    }
    let live = publish_topology(&js, "t1", "status", json!({"status": "paused"})).await;
    assert_eq!(again.next(WAIT).await.unwrap().seq(), live);
    assert!(
        again.next(Duration::from_millis(300)).await.is_none(),
        "no duplicate"
    );
}

#[tokio::test]
async fn hostile_or_foreign_last_event_ids_get_a_clear_answer() {
    let nats = NatsServer::start().unwrap();
    let app = live_app(&nats, |_| {}).await;
    let js = jetstream(&nats).await;
    wait_for_topology_streams(&js).await;
    let seq = publish_topology(&js, "t1", "status", json!({"status": "active"})).await;
    app.wait_caught_up().await;
    let open = |id: String| {
        let (http, base) = (app.http.clone(), app.address.clone());
        async move { open_stream_after(&http, &base, "t1", "u", Some(&id)).await }
    };
    // Never an id of ours: 422 naming the parameter.
    let long = "9".repeat(5_000);
    for bad in [
        "abc",
        "-1",
        "1.2.3",
        "1.ABC",
        "12 3",
        &long,
        "18446744073709551616",
    ] {
        let res = open(bad.to_owned()).await;
        assert_eq!(res.status(), 422, "{bad:.40}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["parameter"], "last_event_id", "{bad:.40}");
    }
    // Another epoch (a deleted and recreated stream), or past the stream's end: a snapshot
    // marked reset, never events of the wrong stream.
    for foreign in [
        format!("{seq}.zzzzzz"),
        "99999999999".to_owned(),
        u64::MAX.to_string(),
    ] {
        let mut sse = SseClient::new(open(foreign.clone()).await);
        let snap = sse.next(WAIT).await.unwrap();
        assert_eq!(snap.event, "snapshot", "{foreign}");
        assert_eq!(snap.json()["reset"], true, "{foreign}");
        assert_eq!(snap.seq(), seq, "{foreign}");
    }
    // Far in the past (sequence 0): everything of the topology since.
    let mut sse = SseClient::new(open("0".to_owned()).await);
    let ev = sse.next(WAIT).await.unwrap();
    assert_eq!((ev.event.as_str(), ev.seq()), ("status", seq));
}

#[tokio::test]
async fn auth_comes_first_then_existence_and_tickets_are_single_use() {
    let nats = NatsServer::start().unwrap();
    let app = live_app(&nats, |s| s.sse_max_streams_per_user = Some(2)).await;
    let js = jetstream(&nats).await;
    wait_for_topology_streams(&js).await;
    publish_topology(&js, "known", "status", json!({"status": "active"})).await;
    app.wait_caught_up().await;

    let url = |tid: &str, q: &str| format!("{}/topologies/{tid}/events{q}", app.address);
    for (what, u) in [
        ("unknown topology", url("nope", "")),
        ("bad id", url("a%20b", "")),
        ("bad ticket", url("known", "?ticket=forged")),
        ("bad token", url("known", "?token=not.a.jwt")),
    ] {
        let res = app.http.get(&u).send().await.unwrap();
        assert_eq!(res.status(), 401, "{what}");
    }
    let res = open_stream(&app.http, &app.address, "nope", "u", None).await;
    assert_eq!(res.status(), 404);
    let res = app
        .http
        .get(url("known", "?last_event_id=abc"))
        .bearer_auth(token(Role::Viewer))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);

    // A ticket works once; ?token= works for compatibility.
    let t = app.sse_ticket(&token(Role::Viewer)).await;
    assert_eq!(t["expires_in"], 60);
    let ticket = t["ticket"].as_str().unwrap();
    let first = app
        .http
        .get(url("known", &format!("?ticket={ticket}")))
        .send()
        .await
        .unwrap();
    let mut first = SseClient::new(first);
    assert_eq!(first.next(WAIT).await.unwrap().event, "snapshot");
    let reuse = app
        .http
        .get(url("known", &format!("?ticket={ticket}")))
        .send()
        .await
        .unwrap();
    assert_eq!(reuse.status(), 401);
    let by_token = app
        .http
        .get(url("known", &format!("?token={}", token(Role::Viewer))))
        .send()
        .await
        .unwrap();
    assert_eq!(by_token.status(), 200);

    // The ticket's user ("tester") now holds 2 streams: the cap answers 429.
    let third = open_stream(&app.http, &app.address, "known", "tester", None).await;
    assert_eq!(third.status(), 429);
    drop(first);
    wait_until(WAIT, "the slot to free", || async {
        open_stream(&app.http, &app.address, "known", "tester", None)
            .await
            .status()
            == 200
    })
    .await;
}

#[tokio::test]
async fn the_stream_closes_when_the_token_expires() {
    let nats = NatsServer::start().unwrap();
    let app = live_app(&nats, |_| {}).await;
    let js = jetstream(&nats).await;
    wait_for_topology_streams(&js).await;
    publish_topology(&js, "t", "status", json!({"status": "active"})).await;
    app.wait_caught_up().await;
    let short =
        orrery::token::mint(&orrery::config::Secret::new(SECRET), "u", Role::Viewer, 2).unwrap();
    let res = app
        .http
        .get(format!("{}/topologies/t/events", app.address))
        .bearer_auth(short)
        .send()
        .await
        .unwrap();
    let mut sse = SseClient::new(res);
    assert_eq!(sse.next(WAIT).await.unwrap().event, "snapshot");
    let ev = sse.next(WAIT).await.unwrap();
    assert_eq!(ev.event, "expired");
    assert!(sse.next(WAIT).await.is_none(), "stream ends after expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_told_to_resync_and_nobody_else_waits_for_it() {
    const EVENTS: usize = 200;
    let nats = NatsServer::start().unwrap();
    // A commit hands its whole batch to the hub at once, so the client queue must exceed one
    // batch's burst for "slow" to mean slow: batches of 16 against a queue of 64.
    let app = live_app(&nats, |s| {
        s.sse_client_queue = Some(64);
        s.batch_size = Some(16);
    })
    .await;
    let js = jetstream(&nats).await;
    wait_for_topology_streams(&js).await;
    publish_topology(&js, "t", "status", json!({"status": "active"})).await;
    app.wait_caught_up().await;

    let mut slow = SseClient::new(open_stream(&app.http, &app.address, "t", "slow", None).await);
    assert_eq!(slow.next(WAIT).await.unwrap().event, "snapshot");
    let mut fast = SseClient::new(open_stream(&app.http, &app.address, "t", "fast", None).await);
    assert_eq!(fast.next(WAIT).await.unwrap().event, "snapshot");

    // 200 KB per event, 40 MB in all: more than loopback socket buffers plus the 64-event
    // queue can hold for a client that never reads, while one that reads keeps up easily.
    let filler = "x".repeat(200 * 1024);
    // The reading client reports its progress; the publisher stays at most 8 events ahead of
    // it, so it can never fall 64 behind, while the client that never reads must overflow.
    let (seen_tx, mut seen_rx) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while let Some(ev) = fast.next(Duration::from_secs(10)).await {
            assert_eq!(ev.event, "mutation.enqueued");
            n += 1;
            seen_tx.send_replace(n);
            if n == EVENTS {
                break;
            }
        }
        n
    });
    for i in 0..EVENTS {
        seen_rx
            .wait_for(|seen| *seen + 8 >= i)
            .await
            .expect("the reader is alive");
        publish_topology(
            &js,
            "t",
            "mutation.enqueued",
            json!({"mutation_id": format!("m{i}"), "spec": {"blob": filler}}),
        )
        .await;
    }
    assert_eq!(
        reader.await.unwrap(),
        EVENTS,
        "the fast client got everything"
    );
    app.wait_caught_up().await; // the projector was never held back

    let mut last = None;
    while let Some(ev) = slow.next(Duration::from_secs(10)).await {
        last = Some(ev);
    }
    let last = last.expect("the slow client got something");
    assert_eq!(last.event, "resync", "{:?}", last.event);
}

#[tokio::test]
async fn enqueue_publishes_once_per_idempotency_key_and_rejects_bad_requests() {
    let nats = NatsServer::start().unwrap();
    let app = live_app(&nats, |_| {}).await;
    let js = jetstream(&nats).await;
    wait_for_topology_streams(&js).await;
    let post = |tid: &str, q: &str, role: Role| {
        app.http
            .post(format!(
                "{}/api/v1/topologies/{tid}/mutations{q}",
                app.address
            ))
            .bearer_auth(token(role))
    };
    let body = json!({"op": "add_decky", "spec": {"decky": "web-9"}});

    let res = post("lab", "?wait=true", Role::Operator)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let first: serde_json::Value = res.json().await.unwrap();
    assert_eq!(first["projected"], true);
    let id = first["mutation_id"].as_str().unwrap().to_owned();
    // Read-your-writes: the projection already shows it.
    let m = app
        .get_json(
            "/api/v1/topologies/lab/mutations?state=enqueued",
            Role::Viewer,
        )
        .await;
    assert_eq!(m["items"][0]["mutation_id"], id);
    assert_eq!(m["items"][0]["actor"], "tester");
    assert_eq!(m["items"][0]["spec"], json!({"decky": "web-9"}));

    // The same Idempotency-Key twice: one mutation, one message.
    let keyed = || {
        post("lab", "", Role::Operator)
            .header("Idempotency-Key", "retry-1")
            .json(&body)
    };
    let a: serde_json::Value = keyed().send().await.unwrap().json().await.unwrap();
    let b: serde_json::Value = keyed().send().await.unwrap().json().await.unwrap();
    assert_eq!(a["mutation_id"], b["mutation_id"]);
    assert_eq!(a["seq"], b["seq"]);
    assert_eq!(b["duplicate"], true);

    let before = js
        .get_stream("TOPOLOGY")
        .await
        .unwrap()
        .cached_info()
        .state
        .messages;
    let big = json!({"op": "x", "spec": {"blob": "y".repeat(70 * 1024)}});
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        ("viewer", post("lab", "", Role::Viewer).json(&body), 403),
        ("bad tid", post("a.b", "", Role::Operator).json(&body), 422),
        ("not json", post("lab", "", Role::Operator).body("{op"), 400),
        ("array", post("lab", "", Role::Operator).body("[1]"), 400),
        (
            "spec not object",
            post("lab", "", Role::Operator).json(&json!({"op": "x", "spec": [1]})),
            400,
        ),
        (
            "unknown field",
            post("lab", "", Role::Operator).json(&json!({"op": "x", "spec": {}, "evil": 1})),
            400,
        ),
        (
            "bad op",
            post("lab", "", Role::Operator).json(&json!({"op": "a b", "spec": {}})),
            400,
        ),
        ("oversized", post("lab", "", Role::Operator).json(&big), 413),
        (
            "bad wait",
            post("lab", "?wait=maybe", Role::Operator).json(&body),
            422,
        ),
        (
            "long key",
            post("lab", "", Role::Operator)
                .header("Idempotency-Key", "k".repeat(200))
                .json(&body),
            400,
        ),
    ];
    for (what, req, want) in cases {
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), want, "{what}");
        let err: serde_json::Value = res.json().await.unwrap();
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {err}"
        );
    }
    let after = js
        .get_stream("TOPOLOGY")
        .await
        .unwrap()
        .cached_info()
        .state
        .messages;
    assert_eq!(before, after, "nothing was published by rejected requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_clients_connecting_at_once_get_snapshots_from_memory_then_live_events() {
    const CLIENTS: usize = 2_000;
    const TOPOLOGIES: usize = 10;
    let nats = NatsServer::start().unwrap();
    let app = live_app(&nats, |s| {
        s.sse_max_streams_per_user = Some(CLIENTS);
        s.sse_max_connections = Some(CLIENTS + 10);
    })
    .await;
    let js = jetstream(&nats).await;
    wait_for_topology_streams(&js).await;
    let mut status_seq = Vec::new();
    for t in 0..TOPOLOGIES {
        status_seq.push(
            publish_topology(
                &js,
                &format!("storm-{t}"),
                "status",
                json!({"status": "up"}),
            )
            .await,
        );
    }
    app.wait_caught_up().await;

    // Everyone at once, as after a deploy; each client waits for its snapshot and then for
    // the one live event of its topology.
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let snapshots = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let mut clients = Vec::with_capacity(CLIENTS);
    for c in 0..CLIENTS {
        let (http, base, go, snapshots) = (
            reqwest::Client::new(),
            app.address.clone(),
            go.clone(),
            snapshots.clone(),
        );
        clients.push(tokio::spawn(async move {
            let tid = format!("storm-{}", c % TOPOLOGIES);
            go.wait().await;
            let res = open_stream(&http, &base, &tid, "storm", None).await;
            assert_eq!(res.status(), 200, "client {c}");
            let mut sse = SseClient::new(res);
            let snap = sse.next(Duration::from_secs(30)).await.expect("snapshot");
            assert_eq!(snap.event, "snapshot", "client {c}");
            assert_eq!(snap.json()["status"], "up", "client {c}");
            snapshots.add_permits(1);
            let live = sse.next(Duration::from_secs(30)).await.expect("live event");
            (c % TOPOLOGIES, snap.seq(), live.seq(), live.event)
        }));
    }
    go.wait().await;
    let all = snapshots.acquire_many(CLIENTS as u32);
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("every client got its snapshot")
        .unwrap()
        .forget();
    let mut live_seq = Vec::new();
    for t in 0..TOPOLOGIES {
        live_seq.push(
            publish_topology(
                &js,
                &format!("storm-{t}"),
                "status",
                json!({"status": "down"}),
            )
            .await,
        );
    }
    for client in clients {
        let (t, snapshot_seq, seq, event) = client.await.unwrap();
        assert!(snapshot_seq >= status_seq[t]);
        assert_eq!((event.as_str(), seq), ("status", live_seq[t]));
    }
    // Each topology's snapshot was read from SQLite once (give or take a load racing the
    // first events); the other connects were served from memory.
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    let loads: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("orrery_sse_snapshot_loads_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        loads <= 2 * TOPOLOGIES as u64,
        "{loads} snapshot loads for {CLIENTS} connects"
    );
}
