//! A 3-node JetStream cluster with R3 streams: a replica carries on through node loss.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::HeaderMap;
use orrery::natsd::Cluster;
use serde_json::{json, Value};

use crate::helpers::*;

/// Publishes one failed result with a fixed id, retrying (same `Nats-Msg-Id`) while the
/// cluster elects a new leader, as publishers must.
async fn publish_retrying(js: &jetstream::Context, i: u64) {
    let id = format!("cluster-r{i}");
    let body = json!({"id": id, "data": {"result_id": id, "success": false}}).to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        let sent = async {
            js.publish_with_headers("result.job.a1", headers, body.clone().into())
                .await?
                .await
                .map(|_| ())
                .map_err(async_nats::Error::from)
        };
        match tokio::time::timeout(Duration::from_secs(5), sent).await {
            Ok(Ok(())) => return,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            _ => panic!("publishing {id} failed for a minute"),
        }
    }
}

/// Publishes a topology event with a fixed id, retrying (same `Nats-Msg-Id`) while the
/// cluster settles; returns its sequence.
async fn publish_topology_retrying(
    js: &jetstream::Context,
    tid: &str,
    suffix: &str,
    data: Value,
) -> u64 {
    let id = uuid::Uuid::new_v4().to_string();
    let body = json!({"id": id, "data": data}).to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        let sent = async {
            let ack = js
                .publish_with_headers(
                    format!("topology.{tid}.{suffix}"),
                    headers,
                    body.clone().into(),
                )
                .await?
                .await?;
            Ok::<_, async_nats::Error>(ack.sequence)
        };
        match tokio::time::timeout(Duration::from_secs(5), sent).await {
            Ok(Ok(seq)) => return seq,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            _ => panic!("publishing topology.{tid}.{suffix} failed for a minute"),
        }
    }
}

/// An Orrery replica against every node of the cluster, with R3 streams and its own
/// database.
async fn replica(cluster: &Cluster, name: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&cluster.urls(), &dir.path().join(format!("{name}.db")));
    s.stream_replicas = Some(3);
    spawn_app_with(s, dir).await
}

/// Waits until the replicas have provisioned every stream on the cluster.
async fn streams_ready(js: &jetstream::Context) {
    wait_until(
        Duration::from_secs(60),
        "R3 streams on the cluster",
        || async {
            for spec in orrery::bus::streams::ALL {
                if js.get_stream(spec.name).await.is_err() {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

/// A JetStream client that knows every node of the cluster.
async fn connect(cluster: &Cluster) -> jetstream::Context {
    let addrs: Vec<async_nats::ServerAddr> = cluster
        .nodes
        .iter()
        .map(|n| n.url().parse().unwrap())
        .collect();
    jetstream::new(
        async_nats::ConnectOptions::new()
            .connect(addrs)
            .await
            .unwrap(),
    )
}

/// The failed results a replica counts (every event these tests publish is one).
async fn projected(app: &TestApp) -> i64 {
    app.count("since=1h&success=false").await
}

/// Publishes results `range` (retrying) and waits until `app` has projected exactly up to
/// its end: nothing lost, nothing doubled.
async fn publish_and_project(js: &jetstream::Context, app: &TestApp, range: std::ops::Range<u64>) {
    for i in range.clone() {
        publish_retrying(js, i).await;
    }
    let want = range.end as i64;
    wait_until(Duration::from_secs(90), "the events projected", || async {
        projected(app).await >= want
    })
    .await;
    app.wait_caught_up().await;
    assert_eq!(projected(app).await, want);
}

/// The first node (index) whose `/jsz` has a detail of `stream` for which `hosts` holds,
/// given the node's name.
async fn find_node(
    cluster: &Cluster,
    stream: &str,
    hosts: impl Fn(&Value, &str) -> bool,
) -> Option<usize> {
    let http = reqwest::Client::new();
    for (i, port) in cluster.monitor_ports.iter().enumerate() {
        let url = format!("http://127.0.0.1:{port}/jsz?accounts=true&streams=true&consumers=true");
        let Ok(res) = http.get(url).send().await else {
            continue;
        };
        let Ok(v) = res.json::<Value>().await else {
            continue;
        };
        let name = format!("n{i}");
        let found = v["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| {
                a["stream_detail"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["name"] == stream && hosts(s, &name))
            });
        if found {
            return Some(i);
        }
    }
    None
}

/// The node hosting a consumer of `stream` (the projector's: the only one there).
async fn consumer_host(cluster: &Cluster, stream: &str) -> Option<usize> {
    find_node(cluster, stream, |s, name| {
        s["consumer_detail"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["cluster"]["leader"] == name))
    })
    .await
}

/// The node leading `stream`.
async fn stream_leader(cluster: &Cluster, stream: &str) -> Option<usize> {
    find_node(cluster, stream, |s, name| s["cluster"]["leader"] == name).await
}

/// Polls `find` until it names a node (20 s at most).
async fn until_found<F, Fut>(mut find: F) -> usize
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<usize>>,
{
    let started = Instant::now();
    loop {
        if let Some(node) = find().await {
            return node;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no node reported it"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_carries_on_when_the_node_hosting_its_consumer_dies() {
    let mut cluster = Cluster::start().unwrap();
    let app = replica(&cluster, "orrery").await;
    let js = connect(&cluster).await;
    streams_ready(&js).await;

    publish_and_project(&js, &app, 0..100).await;
    let host = until_found(|| consumer_host(&cluster, "RESULTS")).await;
    cluster.nodes[host].kill();

    // The replica carries on through the other nodes: nothing lost, nothing doubled.
    publish_and_project(&js, &app, 100..200).await;
    // Bring the node back: the replica still agrees with the stream.
    cluster.nodes[host].restart().unwrap();
    publish_retrying(&js, 200).await;
    wait_until(Duration::from_secs(60), "the 201st projected", || async {
        projected(&app).await == 201
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_resumed_on_another_replica_gets_exactly_the_missed_events() {
    let cluster = Cluster::start().unwrap();
    let a = replica(&cluster, "a").await;
    let b = replica(&cluster, "b").await;
    let js = connect(&cluster).await;
    streams_ready(&js).await;
    publish_topology_retrying(&js, "web", "status", json!({"status": "up"})).await;
    a.wait_caught_up().await;

    // On replica A: the snapshot and one live event; then the browser goes away.
    let mut sse = SseClient::new(open_stream(&a.http, &a.address, "web", "u", None).await);
    assert_eq!(
        sse.next(Duration::from_secs(10)).await.unwrap().event,
        "snapshot"
    );
    let seen = publish_topology_retrying(
        &js,
        "web",
        "mutation.enqueued",
        json!({"mutation_id": "m0"}),
    )
    .await;
    let ev = sse.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(ev.seq(), seen);
    let last_id = ev.id.clone().unwrap();
    drop(sse);
    let mut missed = Vec::new();
    for i in 1..=5 {
        missed.push(
            publish_topology_retrying(
                &js,
                "web",
                "mutation.enqueued",
                json!({"mutation_id": format!("m{i}")}),
            )
            .await,
        );
    }
    b.wait_caught_up().await;

    // The load balancer sends the reconnect to replica B.
    let mut resumed =
        SseClient::new(open_stream_after(&b.http, &b.address, "web", "u", Some(&last_id)).await);
    for seq in &missed {
        let ev = resumed.next(Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            (ev.event.as_str(), ev.seq()),
            ("mutation.enqueued", *seq),
            "{ev:?}"
        );
        assert_eq!(
            ev.epoch(),
            last_id.split_once('.').unwrap().1,
            "one epoch on every replica"
        );
    }
    let live = publish_topology_retrying(&js, "web", "status", json!({"status": "paused"})).await;
    assert_eq!(
        resumed.next(Duration::from_secs(10)).await.unwrap().seq(),
        live
    );
    assert!(
        resumed.next(Duration::from_millis(300)).await.is_none(),
        "no duplicate"
    );

    // The two replicas, at the same checkpoints, agree byte for byte.
    a.wait_caught_up().await;
    b.wait_caught_up().await;
    let digest = |app: &TestApp| {
        let (http, base) = (app.http.clone(), app.address.clone());
        async move {
            http.get(format!("{base}/api/v1/admin/digest"))
                .bearer_auth(token(orrery::token::Role::Admin))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let (da, db) = (digest(&a).await, digest(&b).await);
    assert!(da.contains(&format!(r#""checkpoint":{live}"#)), "{da}");
    assert_eq!(da, db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_api_ride_out_a_stream_leader_election() {
    let mut cluster = Cluster::start().unwrap();
    let app = replica(&cluster, "orrery").await;
    let js = connect(&cluster).await;
    streams_ready(&js).await;
    let enqueue = |key: &'static str| {
        let (http, base) = (app.http.clone(), app.address.clone());
        async move {
            http.post(format!("{base}/api/v1/topologies/t1/mutations"))
                .bearer_auth(token(orrery::token::Role::Operator))
                .header("Idempotency-Key", key)
                .json(&json!({"op": "add", "spec": {}}))
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(enqueue("before").await.status(), 202);
    let leader = until_found(|| stream_leader(&cluster, "TOPOLOGY")).await;
    cluster.nodes[leader].kill();
    // Right after the leader dies: the API retries with the same id until a new leader
    // takes the write, and it lands once.
    let res = enqueue("during").await;
    assert_eq!(res.status(), 202, "{:?}", res.text().await);
    app.wait_caught_up().await;
    let v = app
        .get_json(
            "/api/v1/topologies/t1/mutations",
            orrery::token::Role::Viewer,
        )
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 2, "{v}");
    let (_, messages) = stream_state(&js, "TOPOLOGY").await;
    assert_eq!(messages, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_wait_out_a_whole_cluster_restart_and_resume_exactly() {
    let mut cluster = Cluster::start().unwrap();
    let app = replica(&cluster, "orrery").await;
    let js = connect(&cluster).await;
    streams_ready(&js).await;
    publish_and_project(&js, &app, 0..50).await;

    for node in &mut cluster.nodes {
        node.kill();
    }
    // While the bus is gone, /ready says so; the API still answers from SQLite.
    wait_until(
        Duration::from_secs(30),
        "/ready to name the bus",
        || async {
            let res = app.get("/ready", None).await;
            let status = res.status();
            let body: Value = res.json().await.unwrap();
            status == 503
                && body["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r.as_str().unwrap().contains("bus"))
        },
    )
    .await;
    assert_eq!(projected(&app).await, 50);

    for node in &mut cluster.nodes {
        node.restart().unwrap();
    }
    publish_and_project(&js, &app, 50..100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_with_equal_digests_after_the_stream_leader_dies_mid_publish() {
    let mut cluster = Cluster::start().unwrap();
    let a = replica(&cluster, "a").await;
    let b = replica(&cluster, "b").await;
    let js = connect(&cluster).await;
    streams_ready(&js).await;
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                publish_retrying(&js, i).await;
            }
        })
    };
    wait_until(Duration::from_secs(60), "publishing under way", || async {
        stream_state(&js, "RESULTS").await.1 >= 100
    })
    .await;
    let leader = until_found(|| stream_leader(&cluster, "RESULTS")).await;
    cluster.nodes[leader].kill();
    publisher.await.unwrap();
    cluster.nodes[leader].restart().unwrap();
    for app in [&a, &b] {
        wait_until(Duration::from_secs(90), "all 300 projected", || async {
            projected(app).await >= 300
        })
        .await;
        app.wait_caught_up().await;
        assert_eq!(projected(app).await, 300);
    }
    let (da, db) = (
        a.get_json("/api/v1/admin/digest", orrery::token::Role::Admin)
            .await,
        b.get_json("/api/v1/admin/digest", orrery::token::Role::Admin)
            .await,
    );
    assert_eq!(da, db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_carries_on_when_the_node_it_is_connected_to_dies() {
    let mut cluster = Cluster::start().unwrap();
    let app = replica(&cluster, "orrery").await;
    let js = connect(&cluster).await;
    streams_ready(&js).await;
    publish_and_project(&js, &app, 0..50).await;
    // The node holding the daemon's client connection (it names itself "orrery").
    let http = reqwest::Client::new();
    let connected = until_found(|| async {
        for (i, port) in cluster.monitor_ports.iter().enumerate() {
            let url = format!("http://127.0.0.1:{port}/connz");
            let Ok(res) = http.get(url).send().await else {
                continue;
            };
            let Ok(v) = res.json::<Value>().await else {
                continue;
            };
            let ours = v["connections"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "orrery"));
            if ours {
                return Some(i);
            }
        }
        None
    })
    .await;
    cluster.nodes[connected].kill();
    publish_and_project(&js, &app, 50..100).await;
}
