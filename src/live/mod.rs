//! The live hub: per-topology fan-out of committed events to SSE clients.
//!
//! The projector publishes here only after a batch commits, in stream order. Each topology
//! keeps a ring of its most recent events and a broadcast channel under one lock, so a client
//! that subscribes and copies the ring does so atomically with respect to publishing: a
//! resume gets every missed event exactly once. The broadcast capacity is each client's
//! bounded queue; a client that falls further behind is told to resync and is dropped,
//! without the projector ever waiting for it.
//!
//! Each topology also keeps the [`View`] its snapshot last showed, so that a connect — a
//! reconnect storm after a deploy is ten thousand at once — reads no SQLite: it gets the
//! view plus the ring's events after it. A view is (re)loaded from the database only when
//! it is missing, when the ring no longer holds every event after it, or when more than
//! [`MAX_CATCH_UP`] events followed it; one connect loads while the others wait for it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::broadcast;

pub mod frame;

/// One committed topology event as clients receive it.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// JetStream sequence; the SSE `id`.
    pub seq: u64,
    /// Subject after `topology.<tid>.`, e.g. `mutation.applied`; the SSE `event`.
    pub name: String,
    /// The SSE `data` line, already serialized once for every client.
    pub data: Arc<str>,
    /// The whole SSE frame, rendered by the first client that sends it.
    frame: OnceLock<Bytes>,
}

impl LiveEvent {
    /// The event of stream sequence `seq` named `name`, with `data` serialized.
    pub fn new(seq: u64, name: String, data: Arc<str>) -> Self {
        Self {
            seq,
            name,
            data,
            frame: OnceLock::new(),
        }
    }

    /// Its SSE frame, with the id qualified by `epoch` (one epoch per process, so the first
    /// rendering serves every client).
    pub fn frame(&self, epoch: &str) -> Bytes {
        self.frame
            .get_or_init(|| frame::event(&self.name, Some(&event_id(self.seq, epoch)), &self.data))
            .clone()
    }
}

/// The SSE id of stream sequence `seq`: qualified by the stream's epoch.
pub fn event_id(seq: u64, epoch: &str) -> String {
    format!("{seq}.{epoch}")
}

/// What a resuming client gets.
pub enum Resume {
    /// Exactly the retained events after the given id, then the live receiver.
    Replay(Vec<Arc<LiveEvent>>, broadcast::Receiver<Arc<LiveEvent>>),
    /// The events after that id are no longer held: send a fresh snapshot marked `reset`.
    Gone(broadcast::Receiver<Arc<LiveEvent>>),
}

/// Most ring events sent after a view on connect; past this the view is reloaded.
pub const MAX_CATCH_UP: usize = 64;

/// A topology as a snapshot shows it, read from the database at stream sequence `seq`.
#[derive(Debug)]
pub struct View {
    /// The TOPOLOGY checkpoint the view reflects.
    pub seq: u64,
    /// The snapshot body: topology_id, name, status, in_flight and seq.
    pub body: serde_json::Value,
    /// `body` serialized once for every client.
    pub rendered: Arc<str>,
    /// The snapshot's SSE frame, rendered by the first client that sends it.
    frame: OnceLock<Bytes>,
}

impl View {
    /// A view of `body` at `seq` (the body's `seq` is set to it).
    pub fn new(seq: u64, mut body: serde_json::Value) -> Self {
        body["seq"] = seq.into();
        let rendered = body.to_string().into();
        Self {
            seq,
            body,
            rendered,
            frame: OnceLock::new(),
        }
    }

    /// The `snapshot` frame, its id qualified by `epoch`; marked `"reset": true` when a
    /// resume could not be served (rendered for that client alone).
    pub fn frame(&self, epoch: &str, reset: bool) -> Bytes {
        let id = event_id(self.seq, epoch);
        if reset {
            let mut body = self.body.clone();
            body["reset"] = serde_json::Value::Bool(true);
            return frame::event("snapshot", Some(&id), &body.to_string());
        }
        self.frame
            .get_or_init(|| frame::event("snapshot", Some(&id), &self.rendered))
            .clone()
    }
}

/// What a connecting client gets from the hub.
pub enum Join {
    /// The view, the retained events after it, and the live receiver, taken atomically.
    Ready {
        /// The snapshot.
        view: Arc<View>,
        /// Events after the view, oldest first.
        after: Vec<Arc<LiveEvent>>,
        /// Everything published from now on.
        rx: broadcast::Receiver<Arc<LiveEvent>>,
    },
    /// No usable view: hold this lock, load one from the database, [`Hub::install`] it and
    /// join again (connects that wait on the lock then find it ready).
    Load(Arc<tokio::sync::Mutex<()>>),
}

struct Topic {
    ring: VecDeque<Arc<LiveEvent>>,
    /// The ring holds every event of the topology after this sequence: the checkpoint at
    /// start, then the last event evicted, or lower once older events were backfilled.
    held_from: u64,
    tx: broadcast::Sender<Arc<LiveEvent>>,
    view: Option<Arc<View>>,
    /// Held by the one connect that (re)loads the view.
    load: Arc<tokio::sync::Mutex<()>>,
}

/// Fan-out state for every topology seen since start.
pub struct Hub {
    topics: Mutex<HashMap<String, Topic>>,
    replay: usize,
    client_queue: usize,
    /// Events at or below this sequence were committed before the hub existed.
    start_seq: u64,
    /// Views installed, i.e. snapshots read from the database.
    view_loads: AtomicU64,
    /// The TOPOLOGY stream's epoch, once read from the bus.
    epoch: OnceLock<Arc<str>>,
}

impl Hub {
    /// A hub that holds `replay` events per topology for resumes and lets each client fall at
    /// most `client_queue` events behind; `start_seq` is the checkpoint at start.
    pub fn new(replay: usize, client_queue: usize, start_seq: u64) -> Self {
        Self {
            topics: Mutex::new(HashMap::new()),
            replay: replay.max(1),
            client_queue: client_queue.max(1),
            start_seq,
            view_loads: AtomicU64::new(0),
            epoch: OnceLock::new(),
        }
    }

    /// The TOPOLOGY stream's epoch, when known (see [`epoch_token`]).
    pub fn epoch(&self) -> Option<Arc<str>> {
        self.epoch.get().cloned()
    }

    /// Records the stream's epoch; the first one recorded stays (a recreated stream needs a
    /// restart, as its checkpoint does).
    pub fn set_epoch(&self, epoch: &str) -> Arc<str> {
        self.epoch.get_or_init(|| epoch.into()).clone()
    }

    /// How many views were read from the database since start (a metric: connects that
    /// found a current view in memory read nothing).
    pub fn view_loads(&self) -> u64 {
        self.view_loads.load(Ordering::Relaxed)
    }

    fn topic<'a>(&self, topics: &'a mut HashMap<String, Topic>, tid: &str) -> &'a mut Topic {
        topics.entry(tid.to_owned()).or_insert_with(|| Topic {
            ring: VecDeque::new(),
            held_from: self.start_seq,
            tx: broadcast::channel(self.client_queue).0,
            view: None,
            load: Arc::default(),
        })
    }

    /// Publishes committed events of one topology, in order.
    pub fn publish(&self, tid: &str, event: LiveEvent) {
        let event = Arc::new(event);
        let mut topics = crate::sync::lock(&self.topics);
        let topic = self.topic(&mut topics, tid);
        if topic.ring.len() == self.replay {
            if let Some(old) = topic.ring.pop_front() {
                topic.held_from = old.seq;
            }
        }
        topic.ring.push_back(event.clone());
        // No receivers is fine: nobody is watching this topology right now.
        let _ = topic.tx.send(event);
    }

    /// Subscribes to a topology's live events (before reading its snapshot).
    pub fn subscribe(&self, tid: &str) -> broadcast::Receiver<Arc<LiveEvent>> {
        let mut topics = crate::sync::lock(&self.topics);
        self.topic(&mut topics, tid).tx.subscribe()
    }

    /// Subscribes and takes the topology's view with the retained events after it,
    /// atomically; or says the view must be loaded first.
    pub fn join(&self, tid: &str) -> Join {
        let mut topics = crate::sync::lock(&self.topics);
        let topic = self.topic(&mut topics, tid);
        let Some(view) = topic.view.clone() else {
            return Join::Load(topic.load.clone());
        };
        if view.seq < topic.held_from {
            return Join::Load(topic.load.clone());
        }
        let after: Vec<Arc<LiveEvent>> = topic
            .ring
            .iter()
            .filter(|e| e.seq > view.seq)
            .cloned()
            .collect();
        if after.len() > MAX_CATCH_UP {
            return Join::Load(topic.load.clone());
        }
        Join::Ready {
            view,
            after,
            rx: topic.tx.subscribe(),
        }
    }

    /// The lock held by the one connect that loads the topology's view or reads its events
    /// back from the stream.
    pub fn load_lock(&self, tid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut topics = crate::sync::lock(&self.topics);
        self.topic(&mut topics, tid).load.clone()
    }

    /// Whether a view of the topology is held (it exists, then).
    pub fn has_view(&self, tid: &str) -> bool {
        let topics = crate::sync::lock(&self.topics);
        topics.get(tid).is_some_and(|t| t.view.is_some())
    }

    /// Keeps `view`, just read from the database, as the topology's snapshot unless a newer
    /// one is already held.
    pub fn install(&self, tid: &str, view: View) {
        self.view_loads.fetch_add(1, Ordering::Relaxed);
        let mut topics = crate::sync::lock(&self.topics);
        let topic = self.topic(&mut topics, tid);
        if topic.view.as_ref().is_none_or(|v| v.seq < view.seq) {
            topic.view = Some(Arc::new(view));
        }
    }

    /// Subscribes and collects the retained events after `last_id`, atomically.
    pub fn resume(&self, tid: &str, last_id: u64) -> Resume {
        let mut topics = crate::sync::lock(&self.topics);
        let topic = self.topic(&mut topics, tid);
        let rx = topic.tx.subscribe();
        if last_id < topic.held_from {
            return Resume::Gone(rx);
        }
        let missed = topic
            .ring
            .iter()
            .filter(|e| e.seq > last_id)
            .cloned()
            .collect();
        Resume::Replay(missed, rx)
    }

    /// Puts older events of a topology, read back from the stream, in front of its ring:
    /// `events` must be every event of the topology after `from` up to at least where the
    /// ring starts, in order. Afterwards resumes from `from` on are served from memory (as
    /// far as the ring's size allows).
    pub fn backfill(&self, tid: &str, from: u64, events: Vec<Arc<LiveEvent>>) {
        let mut topics = crate::sync::lock(&self.topics);
        let topic = self.topic(&mut topics, tid);
        if from >= topic.held_from {
            return;
        }
        let held_from = topic.held_from;
        for e in events.into_iter().rev().filter(|e| e.seq <= held_from) {
            topic.ring.push_front(e);
        }
        topic.held_from = from;
        while topic.ring.len() > self.replay {
            if let Some(old) = topic.ring.pop_front() {
                topic.held_from = old.seq;
            }
        }
    }
}

/// The epoch of a stream created at `created`: its creation time in nanoseconds, base 36 —
/// the same on every replica, different for a stream deleted and created again (which
/// starts its sequence numbers over).
pub fn epoch_token(created: time::OffsetDateTime) -> String {
    let mut n = created.unix_timestamp_nanos().unsigned_abs();
    let mut digits = Vec::new();
    loop {
        digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.reverse();
    String::from_utf8_lossy(&digits).into_owned()
}

/// A `Last-Event-ID` as a client sends it back: `<seq>.<epoch>`, or a bare `<seq>` meaning
/// the current epoch. `None` for anything else (it was never an id of ours).
pub fn parse_event_id(id: &str) -> Option<(u64, Option<&str>)> {
    let (seq, epoch) = match id.split_once('.') {
        Some((seq, epoch)) => (seq, Some(epoch)),
        None => (id, None),
    };
    let seq_ok = !seq.is_empty() && seq.len() <= 20 && seq.bytes().all(|b| b.is_ascii_digit());
    let epoch_ok = epoch.is_none_or(|e| {
        !e.is_empty()
            && e.len() <= 32
            && e.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    });
    if !(seq_ok && epoch_ok) {
        return None;
    }
    Some((seq.parse().ok()?, epoch))
}

/// Serializes a live event's data once: `{"topic","type","ts","seq","payload"}`.
pub fn event_data(topic: &str, kind: &str, ts: &str, seq: u64, payload: &RawValue) -> Arc<str> {
    #[derive(serde::Serialize)]
    struct Data<'a> {
        topic: &'a str,
        #[serde(rename = "type")]
        kind: &'a str,
        ts: &'a str,
        seq: u64,
        payload: &'a RawValue,
    }
    serde_json::to_string(&Data {
        topic,
        kind,
        ts,
        seq,
        payload,
    })
    .expect("serializable")
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> LiveEvent {
        LiveEvent::new(seq, "status".into(), Arc::from("{}"))
    }

    #[test]
    fn resume_replays_exactly_the_missed_events_then_live() {
        let hub = Hub::new(4, 16, 0);
        for s in [1, 3, 5] {
            hub.publish("t", ev(s));
        }
        let Resume::Replay(missed, mut rx) = hub.resume("t", 1) else {
            panic!("expected replay");
        };
        assert_eq!(missed.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 5]);
        hub.publish("t", ev(7));
        assert_eq!(rx.try_recv().unwrap().seq, 7);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn resume_past_the_ring_or_before_start_is_gone() {
        let hub = Hub::new(2, 16, 10);
        for s in [11, 12, 13] {
            hub.publish("t", ev(s));
        }
        assert!(matches!(hub.resume("t", 10), Resume::Gone(_)));
        assert!(matches!(hub.resume("t", 11), Resume::Replay(..)));
        assert!(matches!(hub.resume("t", 5), Resume::Gone(_)));
        // A topology with no events since start, resumed from at or after start, is fine.
        assert!(matches!(hub.resume("other", 12), Resume::Replay(..)));
    }

    #[test]
    fn a_join_gets_the_view_and_the_events_after_it_or_asks_for_a_load() {
        let hub = Hub::new(4, 16, 0);
        assert!(matches!(hub.join("t"), Join::Load(_)), "no view yet");
        hub.publish("t", ev(2));
        hub.install("t", View::new(2, serde_json::json!({"status": "a"})));
        hub.publish("t", ev(3));
        let Join::Ready {
            view,
            after,
            mut rx,
        } = hub.join("t")
        else {
            panic!("expected a ready view");
        };
        assert_eq!((view.seq, view.body["seq"].as_u64()), (2, Some(2)));
        assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
        hub.publish("t", ev(4));
        assert_eq!(rx.try_recv().unwrap().seq, 4);
        // An older view never replaces a newer one.
        hub.install("t", View::new(1, serde_json::json!({})));
        let Join::Ready { view, .. } = hub.join("t") else {
            panic!("expected a ready view");
        };
        assert_eq!(view.seq, 2);
        // Once the ring has dropped events after the view, it must be reloaded.
        for s in 5..=9 {
            hub.publish("t", ev(s));
        }
        assert!(matches!(hub.join("t"), Join::Load(_)));
    }

    #[test]
    fn too_many_events_after_a_view_ask_for_a_reload() {
        let hub = Hub::new(MAX_CATCH_UP * 2, 16, 0);
        hub.install("t", View::new(1, serde_json::json!({})));
        for s in 2..=(MAX_CATCH_UP as u64 + 1) {
            hub.publish("t", ev(s));
        }
        assert!(matches!(hub.join("t"), Join::Ready { .. }));
        hub.publish("t", ev(MAX_CATCH_UP as u64 + 2));
        assert!(matches!(hub.join("t"), Join::Load(_)));
    }

    #[test]
    fn backfilled_events_are_served_to_later_resumes() {
        let hub = Hub::new(4, 16, 10);
        hub.publish("t", ev(12));
        assert!(matches!(hub.resume("t", 5), Resume::Gone(_)));
        // The stream had 6 and 9 for this topology before the hub started, 12 since.
        hub.backfill(
            "t",
            5,
            vec![Arc::new(ev(6)), Arc::new(ev(9)), Arc::new(ev(12))],
        );
        let Resume::Replay(missed, _) = hub.resume("t", 5) else {
            panic!("expected replay");
        };
        assert_eq!(missed.iter().map(|e| e.seq).collect::<Vec<_>>(), [6, 9, 12]);
        let Resume::Replay(missed, _) = hub.resume("t", 9) else {
            panic!("expected replay");
        };
        assert_eq!(missed.iter().map(|e| e.seq).collect::<Vec<_>>(), [12]);
        // Backfill never lets the ring grow past its size: the oldest go again.
        hub.backfill("t", 1, (2..=5).map(|s| Arc::new(ev(s))).collect());
        assert!(matches!(hub.resume("t", 1), Resume::Gone(_)));
        let Resume::Replay(missed, _) = hub.resume("t", 4) else {
            panic!("expected replay");
        };
        assert_eq!(
            missed.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [5, 6, 9, 12]
        );
    }

    #[test]
    fn event_ids_carry_the_epoch_and_hostile_ones_are_refused() {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(1_764_000_000_123_456_789).unwrap();
        let epoch = epoch_token(t);
        assert!(epoch.bytes().all(|b| b.is_ascii_alphanumeric()) && !epoch.contains('.'));
        assert_ne!(epoch, epoch_token(t + time::Duration::nanoseconds(1)));
        let id = format!("42.{epoch}");
        assert_eq!(parse_event_id(&id), Some((42, Some(epoch.as_str()))));
        assert_eq!(parse_event_id("42"), Some((42, None)));
        assert_eq!(
            parse_event_id("18446744073709551615"),
            Some((u64::MAX, None))
        );
        for bad in [
            "",
            ".",
            "42.",
            ".abc",
            "abc",
            "-1",
            "4 2",
            "42.ABC",
            "42.a.b",
            "1e9",
            "18446744073709551616",
            "999999999999999999999",
            "42.é",
        ] {
            assert_eq!(parse_event_id(bad), None, "{bad:?}");
        }
        assert_eq!(parse_event_id(&"9".repeat(10_000)), None);
        assert_eq!(parse_event_id(&format!("1.{}", "a".repeat(33))), None);
    }

    #[test]
    fn a_slow_receiver_lags_without_blocking_publish() {
        let hub = Hub::new(8, 2, 0);
        let mut rx = hub.subscribe("t");
        for s in 1..=5 {
            hub.publish("t", ev(s));
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }
}
