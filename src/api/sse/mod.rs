//! `GET /topologies/<tid>/events`: a snapshot on connect, then every committed event of the
//! topology, in order, gap-free and duplicate-free.
//!
//! Hand-off: the client subscribes to the hub atomically with taking the topology's view (the
//! snapshot and the checkpoint it reflects) and the retained events after it; live events at
//! or below what was sent are dropped. Events reach the hub only after their commit, so the
//! snapshot and the live events never disagree. Resumes (`Last-Event-ID`, `<seq>.<epoch>`)
//! replay the hub's retained events after that id, else read them back from the TOPOLOGY
//! stream, and send a fresh snapshot marked `reset` only when the stream no longer holds them.
//! Who may hold a stream (tickets, caps) is in [`limits`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{consumer, stream};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::Json;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::json;
use tokio::sync::broadcast;
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{bearer, AsViewer, Authorized, Params};
use crate::api::topologies::{in_flight, topology_head};
use crate::api::AppState;
use crate::bus::streams;
use crate::live::{epoch_token, event_id, frame, parse_event_id, Join, LiveEvent, Resume, View};
use crate::projections::topology;
use crate::projector::load_checkpoint;
use crate::projector::Message;
use crate::token::Claims;
use crate::window::to_unix_ms;
pub use limits::{StreamLimits, StreamSlot, Tickets, TICKET_TTL};

mod limits;

/// A reconnect delay for a stream ended by shutdown: RETRY_HINT plus jitter.
fn shutdown_retry() -> Duration {
    // A v4 UUID is 122 random bits from the OS: plenty for spreading reconnects.
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    RETRY_HINT + Duration::from_millis(random % SHUTDOWN_RETRY_SPREAD.as_millis() as u64)
}

/// The reconnect delay suggested to browsers.
const RETRY_HINT: Duration = Duration::from_secs(2);
/// At shutdown each stream's reconnect delay is RETRY_HINT plus a random share of this, so
/// the browsers of a stopping replica do not all land on the others in the same instant.
const SHUTDOWN_RETRY_SPREAD: Duration = Duration::from_secs(5);
/// Longest a stream stays open even for a token that never expires.
const MAX_STREAM_LIFE: Duration = Duration::from_secs(86_400 * 365);

/// `/api/v1/auth/sse-ticket`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ticket {
    /// Single-use credential for `?ticket=`.
    pub ticket: String,
    /// Seconds it stays valid.
    pub expires_in: u64,
}

/// `POST /api/v1/auth/sse-ticket`: a single-use ticket for `?ticket=` on an EventSource URL.
#[utoipa::path(post, path = "/auth/sse-ticket", operation_id = "post_auth_sse_ticket", tag = "auth", security(("bearer" = ["viewer"])), responses((status = 200, description = "OK", body = Ticket), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn ticket(
    Authorized(claims): AsViewer,
    State(state): State<AppState>,
) -> ApiResult<Json<Ticket>> {
    let ticket = state.tickets.issue(claims)?;
    Ok(Json(Ticket {
        ticket,
        expires_in: TICKET_TTL.as_secs(),
    }))
}

/// Bearer header, else `?ticket=`, else `?token=`; 401 when none is valid.
async fn authenticate(state: &AppState, headers: &HeaderMap, params: &Params) -> ApiResult<Claims> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        return bearer(&state.auth, value).await;
    }
    if let Some(ticket) = params.get("ticket")? {
        return state.tickets.redeem(ticket).ok_or(ApiError::Unauthorized(
            "the ticket is unknown, used or expired",
        ));
    }
    if let Some(token) = params.get("token")? {
        return Ok(state.auth.verify(token).await?);
    }
    Ok(state
        .auth
        .missing("missing credentials: an Authorization header, ?ticket= or ?token=")?)
}

/// The id a resuming client sent: `(seq, epoch)`, the epoch absent for a bare sequence.
fn last_event_id(headers: &HeaderMap, params: &Params) -> ApiResult<Option<(u64, Option<String>)>> {
    let raw = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().unwrap_or("x").to_owned()),
        None => params.get("last_event_id")?.map(str::to_owned),
    };
    match raw.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => parse_event_id(s)
            .map(|(seq, epoch)| Some((seq, epoch.map(str::to_owned))))
            .ok_or_else(|| {
                ApiError::invalid(
                    "last_event_id",
                    "an event id as the stream sent it: <seq>.<epoch>, or a bare <seq>",
                )
            }),
    }
}

/// The TOPOLOGY stream's epoch: known once the bus has been reached, asked for otherwise.
async fn epoch(state: &AppState) -> ApiResult<Arc<str>> {
    if let Some(epoch) = state.hub.epoch() {
        return Ok(epoch);
    }
    let info = topology_stream(state).await?;
    Ok(state.hub.set_epoch(&epoch_token(info.created)))
}

/// The TOPOLOGY stream's first and last sequence, from the bus.
async fn stream_bounds(state: &AppState) -> ApiResult<(u64, u64)> {
    let s = topology_stream(state).await?.state;
    Ok((s.first_sequence, s.last_sequence))
}

/// What the bus says of the TOPOLOGY stream now (bounded by the bus timeout).
async fn topology_stream(state: &AppState) -> ApiResult<stream::Info> {
    let stream = tokio::time::timeout(
        state.bus_timeout,
        state.js.get_stream(streams::TOPOLOGY.name),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .ok_or_else(|| ApiError::Unavailable("the bus cannot be reached; retry shortly".into()))?;
    Ok(stream.cached_info().clone())
}

/// The TOPOLOGY checkpoint this replica has committed.
fn committed(state: &AppState) -> u64 {
    state
        .projections
        .iter()
        .find(|p| p.stream == streams::TOPOLOGY)
        .map_or(0, |p| *p.checkpoint.borrow())
}

/// Most events one resume reads back from the stream; past it a snapshot is cheaper.
const MAX_BUS_REPLAY: u64 = 10_000;

/// Reads the topology's events after `after` up to `upto` back from the TOPOLOGY stream, as
/// the projection rendered them (messages it dead-lettered are skipped, as they were live);
/// `None` when more than [`MAX_BUS_REPLAY`] match.
async fn read_back(
    state: &AppState,
    tid: &str,
    after: u64,
    upto: u64,
) -> anyhow::Result<Option<Vec<Arc<LiveEvent>>>> {
    let stream = state.js.get_stream_no_info(streams::TOPOLOGY.name).await?;
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("topology.{tid}.>"),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ..Default::default()
        })
        .await?;
    let mut pending = consumer.info().await?.num_pending;
    let mut events = Vec::new();
    if pending == 0 {
        return Ok(Some(events));
    }
    let mut messages = consumer.messages().await?;
    let mut read = 0u64;
    while pending > 0 {
        let Some(message) = messages.next().await else {
            anyhow::bail!("the stream ended while reading back");
        };
        let message = message?;
        let info = message.info().map_err(|e| anyhow::anyhow!(e))?;
        if info.stream_sequence > upto {
            break;
        }
        read += 1;
        if read > MAX_BUS_REPLAY {
            return Ok(None);
        }
        let msg = Message {
            seq: info.stream_sequence,
            subject: message.subject.as_str(),
            payload: &message.payload,
            published_ms: to_unix_ms(info.published),
        };
        if let Ok(event) = topology::decode(&msg) {
            events.push(Arc::new(event.live));
        }
        pending = info.pending;
    }
    Ok(Some(events))
}

/// Resumes after `last`: from the hub's ring when it still holds the missed events, else
/// read back from the stream (and kept in the ring for the next resume); a snapshot marked
/// `reset` when the stream no longer holds them, or never had `last`.
async fn resume(
    state: &AppState,
    tid: &str,
    last: u64,
    initial: &mut VecDeque<Bytes>,
    epoch: &str,
) -> ApiResult<(broadcast::Receiver<Arc<LiveEvent>>, u64)> {
    let rx = match state.hub.resume(tid, last) {
        Resume::Replay(missed, rx) => {
            if missed.is_empty() {
                if last > committed(state) && last > stream_bounds(state).await?.1 {
                    // Not an id of this stream: past the last message it holds.
                    return start(state, tid, true, initial, epoch).await;
                }
                if !state.hub.has_view(tid) {
                    // Nothing to replay: make sure the topology exists (and keep its view).
                    if let Join::Load(lock) = state.hub.join(tid) {
                        load_view(state, tid, lock).await?;
                    }
                }
            }
            let mut last_sent = last;
            for e in missed {
                last_sent = e.seq;
                initial.push_back(e.frame(epoch));
            }
            return Ok((rx, last_sent));
        }
        Resume::Gone(rx) => rx,
    };
    // Subscribed before the checkpoint is read: whatever commits after it arrives on `rx`.
    let checkpoint = committed(state);
    let (first, stream_last) = stream_bounds(state).await?;
    if last > stream_last || first > last + 1 {
        // Never an id of this stream, or retention dropped messages after it (some may
        // have been this topology's).
        return start(state, tid, true, initial, epoch).await;
    }
    // One read-back per topology at a time: the resumes queued behind it usually find the
    // ring filled.
    let lock = state.hub.load_lock(tid);
    let _reading = lock.lock().await;
    if let Resume::Replay(missed, rx) = state.hub.resume(tid, last) {
        let mut last_sent = last;
        for e in missed {
            last_sent = e.seq;
            initial.push_back(e.frame(epoch));
        }
        return Ok((rx, last_sent));
    }
    let read = tokio::time::timeout(state.bus_timeout, read_back(state, tid, last, checkpoint))
        .await
        .map_err(|_| ApiError::Unavailable("reading the stream back timed out; retry".into()))?
        .map_err(|e| ApiError::Unavailable(format!("reading the stream back failed: {e}")))?;
    let Some(events) = read else {
        return start(state, tid, true, initial, epoch).await;
    };
    if events.is_empty() && !state.hub.has_view(tid) {
        if let Join::Load(lock) = state.hub.join(tid) {
            drop(_reading);
            load_view(state, tid, lock).await?;
        }
    }
    for e in &events {
        initial.push_back(e.frame(epoch));
    }
    state.hub.backfill(tid, last, events);
    Ok((rx, checkpoint.max(last)))
}

/// Reads a topology's view — its snapshot and the checkpoint it reflects — in one read
/// transaction; `None` when the topology does not exist.
async fn read_view(state: &AppState, tid: &str) -> ApiResult<Option<View>> {
    let mut tx = state.db.readers.begin().await?;
    let seq = load_checkpoint(&mut *tx, streams::TOPOLOGY.name).await?;
    let Some(topology) = topology_head(&mut tx, tid).await? else {
        return Ok(None);
    };
    let in_flight = in_flight(&mut tx, tid).await?;
    tx.commit().await?;
    let body = json!({
        "topology_id": tid,
        "name": topology.name,
        "status": topology.status,
        "in_flight": in_flight,
    });
    Ok(Some(View::new(seq, body)))
}

/// Makes sure the hub holds a current view of the topology, reading it from the database
/// unless the connect that held `lock` before us just did; 404 when it does not exist.
async fn load_view(
    state: &AppState,
    tid: &str,
    lock: Arc<tokio::sync::Mutex<()>>,
) -> ApiResult<()> {
    let _loading = lock.lock().await;
    if let Join::Ready { .. } = state.hub.join(tid) {
        return Ok(());
    }
    let view = read_view(state, tid)
        .await?
        .ok_or_else(|| ApiError::NotFound("topology".into()))?;
    state.hub.install(tid, view);
    Ok(())
}

/// Starts a stream afresh: the snapshot (marked `reset` when a resume could not be served),
/// then the events after it. Reads SQLite only when the hub's view must be (re)loaded.
async fn start(
    state: &AppState,
    tid: &str,
    reset: bool,
    initial: &mut VecDeque<Bytes>,
    epoch: &str,
) -> ApiResult<(broadcast::Receiver<Arc<LiveEvent>>, u64)> {
    for _ in 0..3 {
        match state.hub.join(tid) {
            Join::Ready { view, after, rx } => {
                initial.push_back(view.frame(epoch, reset));
                let mut last_sent = view.seq;
                for e in after {
                    last_sent = e.seq;
                    initial.push_back(e.frame(epoch));
                }
                return Ok((rx, last_sent));
            }
            Join::Load(lock) => load_view(state, tid, lock).await?,
        }
    }
    // Events outrun loading on this topology: read the snapshot for this client alone,
    // subscribed first so that nothing falls between the two.
    let rx = state.hub.subscribe(tid);
    let view = read_view(state, tid)
        .await?
        .ok_or_else(|| ApiError::NotFound("topology".into()))?;
    initial.push_back(view.frame(epoch, reset));
    let seq = view.seq;
    state.hub.install(tid, view);
    Ok((rx, seq))
}

/// Live-stream counters for `/metrics`: one relaxed add per frame.
#[derive(Debug, Default)]
pub struct SseCounters {
    /// Live event frames written (snapshots and replays not included).
    pub deliveries: std::sync::atomic::AtomicU64,
    /// Streams told to resync and closed.
    pub resyncs: std::sync::atomic::AtomicU64,
}

/// State of one open stream.
struct Conn {
    /// Frames to send before anything live: the snapshot or the replayed events.
    initial: VecDeque<Bytes>,
    epoch: Arc<str>,
    rx: broadcast::Receiver<Arc<LiveEvent>>,
    last_sent: u64,
    /// When the token expires.
    expires_at: tokio::time::Instant,
    keepalive: Duration,
    /// The stream's one timer: the next keepalive or the expiry, whichever comes first (no
    /// timer is touched per event).
    timer: Pin<Box<Sleep>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    done: bool,
    counters: Arc<SseCounters>,
    _slot: StreamSlot,
}

fn live_stream(conn: Conn) -> impl Stream<Item = Result<Bytes, Infallible>> {
    futures::stream::unfold(conn, |mut c| async move {
        if c.done {
            return None;
        }
        if let Some(frame) = c.initial.pop_front() {
            return Some((Ok(frame), c));
        }
        loop {
            let frame = tokio::select! {
                biased;
                _ = c.shutdown.as_mut() => {
                    c.done = true;
                    frame::retry_comment(shutdown_retry().as_millis(), "server shutting down")
                }
                _ = c.timer.as_mut() => {
                    let now = tokio::time::Instant::now();
                    if now >= c.expires_at {
                        c.done = true;
                        frame::event("expired", None, r#"{"error":"token_expired"}"#)
                    } else {
                        c.timer.as_mut().reset((now + c.keepalive).min(c.expires_at));
                        frame::KEEPALIVE
                    }
                }
                next = c.rx.recv() => match next {
                    Ok(e) if e.seq <= c.last_sent => continue,
                    Ok(e) => {
                        c.last_sent = e.seq;
                        c.counters.deliveries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        e.frame(&c.epoch)
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow: ask the client to resume from what it has, and let go.
                        c.done = true;
                        c.counters.resyncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let id = event_id(c.last_sent, &c.epoch);
                        frame::event("resync", Some(&id), &format!(r#"{{"last_event_id":"{id}"}}"#))
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        c.done = true;
                        frame::event("error", None, r#"{"error":"live feed closed"}"#)
                    }
                },
            };
            return Some((Ok(frame), c));
        }
    })
}

/// `GET /topologies/<tid>/events` (and under `/api/v1`).
#[utoipa::path(get, path = "/topologies/{tid}/events", operation_id = "get_topologies_tid_events", tag = "topologies", security(("bearer" = ["viewer"])), params(("tid" = String, Path, description = "topology id", pattern = "^[A-Za-z0-9_-]{1,128}$"), ("ticket" = Option<String>, Query, description = "single-use credential from /auth/sse-ticket (EventSource cannot send headers)"), ("token" = Option<String>, Query, description = "an API token, when no header or ticket"), ("last_event_id" = Option<String>, Query, description = "resume after this id (<seq>.<epoch>) on a first connect; the Last-Event-ID header wins"), ("min_seq" = Option<String>, Query, description = "STREAM:seq[,…]: start once this replica has projected that far"), ("Last-Event-ID" = Option<String>, Header, description = "resume after this id"), ("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "Server-Sent Events: `snapshot` {topology_id, name, status, in_flight, seq} (reset: true after a gap), then `status` and `mutation.<state>` frames {topic, type, ts, seq, payload} with id <seq>.<epoch>; `resync` {last_event_id} when too slow; `expired`; `error`", content_type = "text/event-stream", body = String), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 404, description = "not found", body = crate::api::error::ErrorBody), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 429, description = "too many streams for this user", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    Path(tid): Path<String>,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let claims = authenticate(&state, &headers, &params).await?;
    let resume_from = last_event_id(&headers, &params)?;
    crate::api::topologies::visible(&claims, &tid)?;
    let slot = state.limits.acquire(&claims.sub)?;

    let mut initial = VecDeque::new();
    initial.push_back(frame::retry_comment(RETRY_HINT.as_millis(), "connected"));
    let epoch = epoch(&state).await?;
    let (rx, last_sent) = match resume_from {
        None => start(&state, &tid, false, &mut initial, &epoch).await?,
        // An id of another epoch: the stream it counted was deleted since.
        Some((_, Some(theirs))) if *theirs != *epoch => {
            start(&state, &tid, true, &mut initial, &epoch).await?
        }
        Some((last, _)) => resume(&state, &tid, last, &mut initial, &epoch).await?,
    };

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let left = Duration::from_secs(claims.exp.saturating_sub(now)).min(MAX_STREAM_LIFE);
    let expires_at = tokio::time::Instant::now() + left;
    let keepalive = state.sse.keepalive;
    let conn = Conn {
        initial,
        epoch,
        rx,
        last_sent,
        expires_at,
        keepalive,
        timer: Box::pin(tokio::time::sleep_until(
            (tokio::time::Instant::now() + keepalive).min(expires_at),
        )),
        shutdown: Box::pin(state.shutdown.clone().cancelled_owned()),
        counters: Arc::clone(&state.sse_counters),
        done: false,
        _slot: slot,
    };
    let mut response = Response::new(Body::from_stream(live_stream(conn)));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
