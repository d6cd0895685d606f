//! The projector engine driven step by step, as `orrery rebuild` drives it: group commit.

use std::time::Duration;

use orrery::bus::streams::{self, Provisioning};
use orrery::natsd::NatsServer;
use orrery::projections::results::ResultsProjection;
use orrery::projector::{Outcome, Projector};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{jetstream, publish_result, wait_until};

async fn engine(
    nats: &NatsServer,
) -> (
    async_nats::jetstream::Context,
    Projector<ResultsProjection>,
    tempfile::TempDir,
) {
    let (js, projector, _db, dir) =
        engine_of(nats, ResultsProjection::default(), Duration::ZERO).await;
    (js, projector, dir)
}

/// Streams provisioned and a projector of `projection` over a fresh database, waiting
/// `batch_wait` for more once a batch's first message is in (the daemon's default is 0).
async fn engine_of<P: orrery::projector::Projection>(
    nats: &NatsServer,
    projection: P,
    batch_wait: Duration,
) -> (
    async_nats::jetstream::Context,
    Projector<P>,
    orrery::db::Db,
    tempfile::TempDir,
) {
    engine_sized(nats, projection, batch_wait, 4096).await
}

/// [`engine_of`] with batches of at most `batch_size` messages.
async fn engine_sized<P: orrery::projector::Projection>(
    nats: &NatsServer,
    projection: P,
    batch_wait: Duration,
    batch_size: usize,
) -> (
    async_nats::jetstream::Context,
    Projector<P>,
    orrery::db::Db,
    tempfile::TempDir,
) {
    let js = jetstream(nats).await;
    streams::provision(
        &js,
        Provisioning {
            replicas: 1,
            max_age: Duration::from_secs(3_600),
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = orrery::db::open(&dir.path().join("engine.db"), 1)
        .await
        .unwrap();
    let projector = Projector::new(
        projection,
        js.clone(),
        db.writer.clone(),
        batch_size,
        batch_wait,
    )
    .await
    .unwrap()
    .sharing_demand(db.demand.clone());
    (js, projector, db, dir)
}

/// Steps `projector` until its checkpoint reaches `last`; returns the messages of each
/// commit.
async fn project_to<P: orrery::projector::Projection>(
    projector: &mut Projector<P>,
    last: u64,
) -> Vec<usize> {
    let cancel = CancellationToken::new();
    let mut commits = Vec::new();
    for _ in 0..10_000 {
        if projector.checkpoint() >= last {
            break;
        }
        if let Outcome::Applied { messages, .. } =
            projector.project_next_batch(&cancel).await.unwrap()
        {
            commits.push(messages);
        }
    }
    commits
}

/// Steps `projector` until it has done something: the outcome of its first write.
async fn first_write<P: orrery::projector::Projection>(
    projector: &mut Projector<P>,
    cancel: &CancellationToken,
) -> Outcome {
    let mut outcome = projector.project_next_batch(cancel).await.unwrap();
    while outcome == Outcome::Idle {
        outcome = projector.project_next_batch(cancel).await.unwrap();
    }
    outcome
}

/// Another stream's commit asks for the writer now, while `projector` steps towards `last`:
/// the checkpoint that commit found once it had the writer.
async fn checkpoint_seen_by_a_waiting_commit<P: orrery::projector::Projection>(
    db: &orrery::db::Db,
    projector: &mut Projector<P>,
    last: u64,
    cancel: &CancellationToken,
) -> i64 {
    let waiter = {
        let (writer, demand) = (db.writer.clone(), db.demand.clone());
        tokio::spawn(async move {
            let mut tx = demand.begin(&writer).await.unwrap();
            let seen: i64 = sqlx::query_scalar("SELECT last_seq FROM checkpoints")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            seen
        })
    };
    while !waiter.is_finished() && projector.checkpoint() < last {
        projector.project_next_batch(cancel).await.unwrap();
    }
    waiter.await.unwrap()
}

async fn result(js: &async_nats::jetstream::Context, i: u64) {
    publish_result(
        js,
        "result.job.a1",
        json!({"result_id": format!("r{i}"), "success": true}),
    )
    .await;
}

#[tokio::test]
async fn a_lone_event_is_committed_in_the_step_that_collects_it() {
    let nats = NatsServer::start().unwrap();
    let (js, mut projector, _dir) = engine(&nats).await;
    let cancel = CancellationToken::new();
    result(&js, 1).await;
    // A batch of one is started although 4,095 more would fit: nothing waits to fill it.
    let mut outcome = projector.project_next_batch(&cancel).await.unwrap();
    while outcome == Outcome::Idle {
        outcome = projector.project_next_batch(&cancel).await.unwrap();
    }
    assert_eq!(outcome, Outcome::Started { messages: 1 });
    let committed = projector.project_next_batch(&cancel).await.unwrap();
    assert_eq!(
        committed,
        Outcome::Applied {
            messages: 1,
            dead_lettered: 0,
            checkpoint: 1
        }
    );
}

#[tokio::test]
async fn messages_that_arrive_while_a_batch_commits_form_the_next_batch() {
    let nats = NatsServer::start().unwrap();
    let (js, mut projector, _dir) = engine(&nats).await;
    let cancel = CancellationToken::new();
    result(&js, 0).await;
    let mut outcome = projector.project_next_batch(&cancel).await.unwrap();
    while outcome == Outcome::Idle {
        outcome = projector.project_next_batch(&cancel).await.unwrap();
    }
    assert_eq!(outcome, Outcome::Started { messages: 1 });
    // 200 more while the first batch commits (or right after): they are grouped, not
    // committed one by one.
    for i in 1..=200 {
        result(&js, i).await;
    }
    let mut commits = 0;
    let mut messages = 0;
    for _ in 0..1_000 {
        if projector.checkpoint() >= 201 {
            break;
        }
        if let Outcome::Applied { messages: n, .. } =
            projector.project_next_batch(&cancel).await.unwrap()
        {
            commits += 1;
            messages += n;
        }
    }
    assert_eq!((projector.checkpoint(), messages), (201, 201));
    assert!(commits <= 20, "201 messages took {commits} commits");
}

#[tokio::test]
async fn a_projector_behind_commits_eight_batches_together_and_the_rest_once_caught_up() {
    let nats = NatsServer::start().unwrap();
    let (js, mut projector, db, _dir) =
        engine_sized(&nats, ResultsProjection::default(), Duration::ZERO, 50).await;
    for i in 0..1_000 {
        result(&js, i).await;
    }
    let commits = project_to(&mut projector, 1_000).await;
    // Batches of at most 50, each but the last leaving more in the stream: a transaction takes
    // them until it holds eight batches' worth (400 messages), not one commit per batch.
    assert_eq!(commits.iter().sum::<usize>(), 1_000);
    let (last, full) = commits.split_last().unwrap();
    assert!(
        full.iter().all(|n| (400..450).contains(n)) && *last <= 449 && commits.len() <= 3,
        "{commits:?}"
    );
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM execution_results")
        .fetch_one(&db.readers)
        .await
        .unwrap();
    assert_eq!(n, 1_000);
    // Caught up, a lone event is committed in the step after the one that collects it.
    result(&js, 1_000).await;
    assert_eq!(project_to(&mut projector, 1_001).await, vec![1]);
}

/// What the stream holds past the last message read: what the durations warmer waits on.
#[tokio::test]
async fn the_projector_counts_what_the_stream_holds_past_what_it_has_read() {
    let nats = NatsServer::start().unwrap();
    let (js, mut projector, _db, _dir) =
        engine_sized(&nats, ResultsProjection::default(), Duration::ZERO, 50).await;
    for i in 0..300 {
        result(&js, i).await;
    }
    let counters = projector.progress().counters;
    let pending = || counters.pending.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(pending(), 0, "nothing read yet");
    let cancel = CancellationToken::new();
    // The first batch takes what the client holds when the first message arrives: up to 50,
    // fewer when the rest is still on its way. Whatever it read, the rest is counted.
    let Outcome::Started { messages } = first_write(&mut projector, &cancel).await else {
        panic!("the first step should start a batch");
    };
    assert!((1..=50).contains(&messages), "{messages}");
    assert_eq!(pending(), 300 - messages as u64);
    project_to(&mut projector, 300).await;
    assert_eq!(pending(), 0);
}

#[tokio::test]
async fn once_another_commit_has_waited_for_the_writer_a_large_batch_is_written_in_parts() {
    let nats = NatsServer::start().unwrap();
    let (js, mut projector, db, _dir) =
        engine_sized(&nats, ResultsProjection::default(), Duration::ZERO, 8192).await;
    // Another stream's commit waits for the writer while this test holds it, and is seen
    // waiting, as a projector sees one between its batches.
    let hold = db.demand.begin(&db.writer).await.unwrap();
    let waiter = {
        let (writer, demand) = (db.writer.clone(), db.demand.clone());
        tokio::spawn(async move { drop(demand.begin(&writer).await.unwrap()) })
    };
    wait_until(Duration::from_secs(10), "a waiting commit", || {
        let demand = db.demand.clone();
        async move { demand.wanted() }
    })
    .await;
    drop(hold);
    waiter.await.unwrap();

    // 5,000 results, three of them poison, spread over what become different parts.
    let poison = [10u64, 2_500, 4_990];
    for i in 0..5_000u64 {
        if poison.contains(&i) {
            js.publish("result.job.a1", "not json".into())
                .await
                .unwrap()
                .await
                .unwrap();
        } else {
            result(&js, i).await;
        }
    }
    let cancel = CancellationToken::new();
    let outcome = first_write(&mut projector, &cancel).await;
    assert!(
        matches!(outcome, Outcome::Started { messages } if messages <= 2048),
        "the first write should be a part of at most 2,048 messages: {outcome:?}"
    );
    // A commit that waits now gets the writer between two parts, not after the batch.
    let seen = checkpoint_seen_by_a_waiting_commit(&db, &mut projector, 5_000, &cancel).await;
    assert!(
        (1..5_000).contains(&seen),
        "the waiting commit saw checkpoint {seen}: it should have come between parts"
    );
    project_to(&mut projector, 5_000).await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM execution_results")
        .fetch_one(&db.readers)
        .await
        .unwrap();
    assert_eq!(n, 4_997);
    let dead: Vec<i64> = sqlx::query_scalar("SELECT seq FROM dead_letters ORDER BY seq")
        .fetch_all(&db.readers)
        .await
        .unwrap();
    assert_eq!(dead, poison.map(|i| i as i64 + 1));
}

#[tokio::test]
async fn a_projector_behind_commits_at_once_when_another_commit_waits_for_the_writer() {
    let nats = NatsServer::start().unwrap();
    let (js, mut projector, db, _dir) =
        engine_sized(&nats, ResultsProjection::default(), Duration::ZERO, 50).await;
    for i in 0..1_000 {
        result(&js, i).await;
    }
    let cancel = CancellationToken::new();
    // The first batch is written and its transaction left open for more.
    let outcome = first_write(&mut projector, &cancel).await;
    assert!(
        matches!(outcome, Outcome::Started { messages } if messages <= 50),
        "{outcome:?}"
    );
    // Another stream's commit asks for the writer: it gets it once a batch or two later,
    // not after the whole backlog.
    let seen = checkpoint_seen_by_a_waiting_commit(&db, &mut projector, 1_000, &cancel).await;
    assert!(
        (1..1_000).contains(&seen),
        "the waiting commit saw checkpoint {seen}: it should have come between batches"
    );
    project_to(&mut projector, 1_000).await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM execution_results")
        .fetch_one(&db.readers)
        .await
        .unwrap();
    assert_eq!(n, 1_000);
}

#[tokio::test]
async fn within_one_batch_the_first_event_of_a_result_id_wins() {
    let nats = NatsServer::start().unwrap();
    // A linger of a second: the six are published before the first step, so they form one
    // batch however the consumer delivers them.
    let (js, mut projector, db, _dir) =
        engine_of(&nats, ResultsProjection::default(), Duration::from_secs(1)).await;
    // Rows are written in the order of the time index (kind, success, finish time), not
    // stream order: the later versions of "m" failed and finished earlier, so they sort
    // before its first, and must still lose to it.
    for (id, code, finished) in [
        ("z", 0, "2026-12-01T10:00:05Z"),
        ("m", 0, "2026-12-01T10:00:03Z"),
        ("a", 0, "2026-12-01T10:00:04Z"),
        ("m", 2, "2026-12-01T10:00:02Z"),
        ("b", 0, "2026-12-01T10:00:06Z"),
        ("m", 3, "2026-12-01T10:00:01Z"),
    ] {
        publish_result(
            &js,
            "result.job.a1",
            json!({"result_id": id, "exit_code": code, "finished_at": finished}),
        )
        .await;
    }
    let cancel = CancellationToken::new();
    let mut batches = Vec::new();
    for _ in 0..100 {
        if projector.checkpoint() >= 6 {
            break;
        }
        if let Outcome::Applied { messages, .. } =
            projector.project_next_batch(&cancel).await.unwrap()
        {
            batches.push(messages);
        }
    }
    assert_eq!(batches, vec![6], "all six in one batch");
    let row: (i64, i64) =
        sqlx::query_as("SELECT exit_code, seq FROM execution_results WHERE result_id = 'm'")
            .fetch_one(&db.readers)
            .await
            .unwrap();
    assert_eq!(row, (0, 2));
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM execution_results")
        .fetch_one(&db.readers)
        .await
        .unwrap();
    assert_eq!(n, 4);
    // The per-minute counts count each result once, as a success.
    let counted: (i64, i64) = sqlx::query_as("SELECT SUM(n), SUM(n * success) FROM result_counts")
        .fetch_one(&db.readers)
        .await
        .unwrap();
    assert_eq!(counted, (4, 4));
}

#[tokio::test]
async fn a_batch_of_large_messages_stops_at_its_byte_bound() {
    let nats = NatsServer::start().unwrap();
    // A long linger and room for 4,096: only the 32 MiB bound can cut the batch short.
    let (js, mut projector, _db, _dir) =
        engine_of(&nats, ResultsProjection::default(), Duration::from_secs(3)).await;
    let padding = "x".repeat(900_000);
    for i in 0..40 {
        publish_result(
            &js,
            "result.job.a1",
            json!({"result_id": format!("big{i}"), "success": true, "padding": padding}),
        )
        .await;
    }
    let cancel = CancellationToken::new();
    let mut outcome = projector.project_next_batch(&cancel).await.unwrap();
    while outcome == Outcome::Idle {
        outcome = projector.project_next_batch(&cancel).await.unwrap();
    }
    let Outcome::Started { messages } = outcome else {
        panic!("expected a batch to start, got {outcome:?}");
    };
    // 37 of 0.9 MB stay under 32 MiB; the 38th crosses it and closes the batch.
    assert_eq!(messages, 38);
    for _ in 0..100 {
        if projector.checkpoint() >= 40 {
            break;
        }
        projector.project_next_batch(&cancel).await.unwrap();
    }
    assert_eq!(
        projector.checkpoint(),
        40,
        "the rest follow in the next batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoder_that_panics_costs_one_dead_letter_and_nothing_else() {
    let (rows, dead) = project_around("PANIC").await;
    assert_eq!(rows.len(), 2, "the messages around it are projected");
    assert_eq!(
        dead,
        vec![(2, "the decoder panicked on this message".to_owned())]
    );
}

/// Projects results r1, `middle` and r3 through [`Panicky`]; returns the result ids stored
/// and the dead letters (seq, reason).
async fn project_around(middle: &str) -> (Vec<String>, Vec<(i64, String)>) {
    project_around_in(middle, 4096).await
}

/// [`project_around`] in batches of at most `batch_size` messages.
async fn project_around_in(middle: &str, batch_size: usize) -> (Vec<String>, Vec<(i64, String)>) {
    let nats = NatsServer::start().unwrap();
    let (js, mut projector, db, _dir) = engine_sized(
        &nats,
        Panicky(ResultsProjection::default()),
        Duration::ZERO,
        batch_size,
    )
    .await;
    result(&js, 1).await;
    publish_result(
        &js,
        "result.job.a1",
        json!({"result_id": middle, "success": true}),
    )
    .await;
    result(&js, 3).await;
    let cancel = CancellationToken::new();
    let started = std::time::Instant::now();
    while projector.checkpoint() < 3 {
        projector.project_next_batch(&cancel).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(20), "stuck");
    }
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT result_id FROM execution_results ORDER BY result_id")
            .fetch_all(&db.writer)
            .await
            .unwrap();
    let dead: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, reason FROM dead_letters ORDER BY seq")
            .fetch_all(&db.writer)
            .await
            .unwrap();
    (rows, dead)
}

/// The results read model with two planted bugs: its decoder panics on a payload holding
/// `PANIC`, its `apply` on an event whose payload held `BOOM` — stand-ins for a bug meeting
/// the message that triggers it.
struct Panicky(ResultsProjection);

impl orrery::projector::Projection for Panicky {
    /// The inner event, and whether applying it panics.
    type Event = (
        bool,
        <ResultsProjection as orrery::projector::Projection>::Event,
    );

    fn stream(&self) -> orrery::bus::streams::StreamSpec {
        self.0.stream()
    }

    fn decode(&self, msg: &orrery::projector::Message<'_>) -> Result<Self::Event, String> {
        let holds = |word: &[u8]| msg.payload.windows(word.len()).any(|w| w == word);
        if holds(b"PANIC") {
            panic!("a decoder bug");
        }
        Ok((holds(b"BOOM"), self.0.decode(msg)?))
    }

    async fn apply(
        &self,
        conn: &mut sqlx::SqliteConnection,
        events: &[Self::Event],
    ) -> sqlx::Result<()> {
        for (boom, event) in events {
            assert!(!boom, "an apply bug");
            self.0.apply(conn, std::slice::from_ref(event)).await?;
        }
        Ok(())
    }

    fn tables(&self) -> &'static [orrery::projector::Table] {
        self.0.tables()
    }

    fn reset(
        &self,
        conn: &mut sqlx::SqliteConnection,
    ) -> impl std::future::Future<Output = sqlx::Result<()>> + Send {
        self.0.reset(conn)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_that_panics_costs_one_dead_letter_and_nothing_else() {
    let (rows, dead) = project_around("BOOM").await;
    assert_eq!(rows, vec!["r1".to_owned(), "r3".to_owned()]);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, 2);
    assert!(dead[0].1.contains("panicked"), "{dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_that_panics_in_a_later_batch_of_a_transaction_loses_none_before_it() {
    // Batches of one: r1 is written into a transaction left open (the stream holds more),
    // then the panic in the next batch rolls it back; r1 is written again before the bad
    // event is isolated.
    let (rows, dead) = project_around_in("BOOM", 1).await;
    assert_eq!(rows, vec!["r1".to_owned(), "r3".to_owned()]);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, 2);
    assert!(dead[0].1.contains("panicked"), "{dead:?}");
}
