//! `GET /topologies/<tid>/events`: a snapshot on connect, then every committed event of the
//! topology, in order, gap-free and duplicate-free.
//!
//! Hand-off: the client subscribes to the hub *before* the snapshot is read, the snapshot
//! states the checkpoint it reflects, and live events at or below it are dropped. Events reach
//! the hub only after their commit, so the snapshot and the live events never disagree.
//! Resumes (`Last-Event-ID`) replay the hub's retained events after that id, or send a fresh
//! snapshot marked `reset` when they are no longer held.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{bearer, AsViewer, Authorized, Params};
use crate::api::topologies::{in_flight, topology_json};
use crate::api::AppState;
use crate::bus::{streams, subjects};
use crate::live::{Join, LiveEvent, Resume, View};
use crate::projector::load_checkpoint;
use crate::token::Claims;

/// How long an SSE ticket stays valid.
pub const TICKET_TTL: Duration = Duration::from_secs(60);
/// Most tickets outstanding at once.
const MAX_TICKETS: usize = 100_000;
/// The reconnect delay suggested to browsers.
const RETRY_HINT: Duration = Duration::from_secs(2);

/// Single-use, short-lived credentials for EventSource URLs.
pub struct Tickets {
    issued: Mutex<HashMap<String, (Claims, Instant)>>,
    ttl: Duration,
}

impl Default for Tickets {
    fn default() -> Self {
        Self::with_ttl(TICKET_TTL)
    }
}

impl Tickets {
    /// Tickets valid for `ttl` (the API uses [`TICKET_TTL`]).
    pub fn with_ttl(ttl: Duration) -> Self {
        Self {
            issued: Mutex::default(),
            ttl,
        }
    }

    /// Issues a ticket standing for `claims`.
    pub fn issue(&self, claims: Claims) -> ApiResult<String> {
        let mut issued = self.issued.lock().expect("tickets lock");
        let now = Instant::now();
        let ttl = self.ttl;
        issued.retain(|_, (_, at)| now.duration_since(*at) < ttl);
        if issued.len() >= MAX_TICKETS {
            return Err(ApiError::Busy("too many outstanding tickets".into()));
        }
        let ticket = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        issued.insert(ticket.clone(), (claims, now));
        Ok(ticket)
    }

    /// Redeems a ticket once; `None` when unknown, used or expired.
    pub fn redeem(&self, ticket: &str) -> Option<Claims> {
        let (claims, at) = self.issued.lock().expect("tickets lock").remove(ticket)?;
        (at.elapsed() < self.ttl).then_some(claims)
    }
}

/// Caps on concurrent streams, per user and in all.
pub struct StreamLimits {
    per_user: usize,
    total: usize,
    open: Mutex<(usize, HashMap<String, usize>)>,
}

/// Holds one stream's place under the caps; released on drop.
pub struct StreamSlot {
    limits: Arc<StreamLimits>,
    user: String,
}

impl StreamLimits {
    /// Limits of `per_user` streams per `sub` and `total` in all.
    pub fn new(per_user: usize, total: usize) -> Self {
        Self {
            per_user,
            total,
            open: Mutex::new((0, HashMap::new())),
        }
    }

    /// Takes a place for `user`: 429 past the user's cap, 503 past the total.
    pub fn acquire(self: &Arc<Self>, user: &str) -> ApiResult<StreamSlot> {
        let mut open = self.open.lock().expect("limits lock");
        if open.0 >= self.total {
            return Err(ApiError::Busy(
                "the server holds as many streams as it is allowed".into(),
            ));
        }
        let mine = open.1.entry(user.to_owned()).or_insert(0);
        if *mine >= self.per_user {
            return Err(ApiError::TooMany(format!(
                "at most {} concurrent streams per user",
                self.per_user
            )));
        }
        *mine += 1;
        open.0 += 1;
        Ok(StreamSlot {
            limits: self.clone(),
            user: user.to_owned(),
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.lock().expect("limits lock").0
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().expect("limits lock");
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.user);
            }
        }
    }
}

/// `POST /api/v1/auth/sse-ticket`: a single-use ticket for `?ticket=` on an EventSource URL.
pub async fn ticket(
    Authorized(claims): AsViewer,
    State(state): State<AppState>,
) -> ApiResult<Json<Value>> {
    let ticket = state.tickets.issue(claims)?;
    Ok(Json(
        json!({"ticket": ticket, "expires_in": TICKET_TTL.as_secs()}),
    ))
}

/// Bearer header, else `?ticket=`, else `?token=`; 401 when none is valid.
fn authenticate(state: &AppState, headers: &HeaderMap, params: &Params) -> ApiResult<Claims> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        return bearer(&state.auth, value);
    }
    if let Some(ticket) = params.get("ticket")? {
        return state.tickets.redeem(ticket).ok_or(ApiError::Unauthorized(
            "the ticket is unknown, used or expired",
        ));
    }
    if let Some(token) = params.get("token")? {
        return Ok(state.auth.verify(token)?);
    }
    Ok(state
        .auth
        .missing("missing credentials: an Authorization header, ?ticket= or ?token=")?)
}

fn last_event_id(headers: &HeaderMap, params: &Params) -> ApiResult<Option<u64>> {
    let raw = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().unwrap_or("x").to_owned()),
        None => params.get("last_event_id")?.map(str::to_owned),
    };
    match raw {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::invalid("last_event_id", "a stream sequence number (digits)")),
    }
}

/// Reads a topology's view — its snapshot and the checkpoint it reflects — in one read
/// transaction; `None` when the topology does not exist.
async fn read_view(state: &AppState, tid: &str) -> ApiResult<Option<View>> {
    let mut tx = state.db.readers.begin().await?;
    let seq = load_checkpoint(&mut *tx, streams::TOPOLOGY.name).await?;
    let Some(topology) = topology_json(&mut tx, tid).await? else {
        return Ok(None);
    };
    let in_flight = in_flight(&mut tx, tid).await?;
    tx.commit().await?;
    let body = json!({
        "topology_id": tid,
        "name": topology["name"],
        "status": topology["status"],
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
    initial: &mut VecDeque<Event>,
) -> ApiResult<(broadcast::Receiver<Arc<LiveEvent>>, u64)> {
    for _ in 0..3 {
        match state.hub.join(tid) {
            Join::Ready { view, after, rx } => {
                initial.push_back(snapshot_event(&view, reset));
                let mut last_sent = view.seq;
                for e in after {
                    last_sent = e.seq;
                    initial.push_back(sse_event(&e));
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
    initial.push_back(snapshot_event(&view, reset));
    let seq = view.seq;
    state.hub.install(tid, view);
    Ok((rx, seq))
}

fn sse_event(e: &LiveEvent) -> Event {
    Event::default()
        .event(&e.name)
        .id(e.seq.to_string())
        .data(&*e.data)
}

/// State of one open stream.
struct Conn {
    initial: VecDeque<Event>,
    rx: broadcast::Receiver<Arc<LiveEvent>>,
    last_sent: u64,
    expires: std::pin::Pin<Box<tokio::time::Sleep>>,
    shutdown: CancellationToken,
    done: bool,
    _slot: StreamSlot,
}

fn live_stream(conn: Conn) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(conn, |mut c| async move {
        if c.done {
            return None;
        }
        if let Some(ev) = c.initial.pop_front() {
            return Some((Ok(ev), c));
        }
        loop {
            let ev = tokio::select! {
                biased;
                _ = c.shutdown.cancelled() => {
                    c.done = true;
                    Event::default().retry(RETRY_HINT).comment("server shutting down")
                }
                _ = &mut c.expires => {
                    c.done = true;
                    Event::default().event("expired").data(r#"{"error":"token_expired"}"#)
                }
                next = c.rx.recv() => match next {
                    Ok(e) if e.seq <= c.last_sent => continue,
                    Ok(e) => {
                        c.last_sent = e.seq;
                        sse_event(&e)
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow: ask the client to resume from what it has, and let go.
                        c.done = true;
                        Event::default()
                            .event("resync")
                            .id(c.last_sent.to_string())
                            .data(format!(r#"{{"last_event_id":{}}}"#, c.last_sent))
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        c.done = true;
                        Event::default().event("error").data(r#"{"error":"live feed closed"}"#)
                    }
                },
            };
            return Some((Ok(ev), c));
        }
    })
}

/// `GET /topologies/<tid>/events` (and under `/api/v1`).
pub async fn events(
    State(state): State<AppState>,
    Path(tid): Path<String>,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let claims = authenticate(&state, &headers, &params)?;
    let resume_from = last_event_id(&headers, &params)?;
    if !subjects::is_token(&tid) {
        return Err(ApiError::NotFound("topology".into()));
    }
    let slot = state.limits.acquire(&claims.sub)?;

    let mut initial = VecDeque::new();
    initial.push_back(Event::default().retry(RETRY_HINT).comment("connected"));
    let (rx, last_sent) = match resume_from {
        Some(last) => match state.hub.resume(&tid, last) {
            Resume::Replay(missed, rx) => {
                if missed.is_empty() && !state.hub.has_view(&tid) {
                    // Nothing to replay: make sure the topology exists (and keep its view).
                    let lock = match state.hub.join(&tid) {
                        Join::Load(lock) => Some(lock),
                        Join::Ready { .. } => None,
                    };
                    if let Some(lock) = lock {
                        load_view(&state, &tid, lock).await?;
                    }
                }
                let mut last_sent = last;
                for e in missed {
                    last_sent = e.seq;
                    initial.push_back(sse_event(&e));
                }
                (rx, last_sent)
            }
            Resume::Gone(_) => start(&state, &tid, true, &mut initial).await?,
        },
        None => start(&state, &tid, false, &mut initial).await?,
    };

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let left = Duration::from_secs(claims.exp.saturating_sub(now));
    let conn = Conn {
        initial,
        rx,
        last_sent,
        expires: Box::pin(tokio::time::sleep(
            left.min(Duration::from_secs(86_400 * 365)),
        )),
        shutdown: state.shutdown.clone(),
        done: false,
        _slot: slot,
    };
    let sse =
        Sse::new(live_stream(conn)).keep_alive(KeepAlive::new().interval(state.sse.keepalive));
    let mut response = sse.into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn snapshot_event(view: &View, reset: bool) -> Event {
    let event = Event::default().event("snapshot").id(view.seq.to_string());
    if reset {
        let mut body = view.body.clone();
        body["reset"] = Value::Bool(true);
        event.data(body.to_string())
    } else {
        event.data(&*view.rendered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Role;

    fn claims(sub: &str) -> Claims {
        Claims {
            sub: sub.into(),
            role: Role::Viewer,
            exp: u64::MAX,
        }
    }

    #[test]
    fn tickets_are_single_use_and_expire() {
        let tickets = Tickets::with_ttl(Duration::from_millis(50));
        let t = tickets.issue(claims("a")).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(tickets.redeem(&t).unwrap().sub, "a");
        assert!(tickets.redeem(&t).is_none(), "second use");
        let old = tickets.issue(claims("b")).unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert!(tickets.redeem(&old).is_none(), "expired");
        assert!(tickets.redeem("made-up").is_none());
    }

    #[test]
    fn stream_limits_count_per_user_and_in_all() {
        let limits = Arc::new(StreamLimits::new(2, 3));
        let a1 = limits.acquire("a").unwrap();
        let _a2 = limits.acquire("a").unwrap();
        assert!(matches!(limits.acquire("a"), Err(ApiError::TooMany(_))));
        let _b1 = limits.acquire("b").unwrap();
        assert!(matches!(limits.acquire("c"), Err(ApiError::Busy(_))));
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _a3 = limits.acquire("a").unwrap();
    }
}
