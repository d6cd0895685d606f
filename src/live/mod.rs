//! The live hub: per-topology fan-out of committed events to SSE clients.
//!
//! The projector publishes here only after a batch commits, in stream order. Each topology
//! keeps a ring of its most recent events and a broadcast channel under one lock, so a client
//! that subscribes and copies the ring does so atomically with respect to publishing: a
//! resume gets every missed event exactly once. The broadcast capacity is each client's
//! bounded queue; a client that falls further behind is told to resync and is dropped,
//! without the projector ever waiting for it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use tokio::sync::broadcast;

/// One committed topology event as clients receive it.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// JetStream sequence; the SSE `id`.
    pub seq: u64,
    /// Subject after `topology.<tid>.`, e.g. `mutation.applied`; the SSE `event`.
    pub name: String,
    /// The SSE `data` line, already serialized once for every client.
    pub data: Arc<str>,
}

/// What a resuming client gets.
pub enum Resume {
    /// Exactly the retained events after the given id, then the live receiver.
    Replay(Vec<Arc<LiveEvent>>, broadcast::Receiver<Arc<LiveEvent>>),
    /// The events after that id are no longer held: send a fresh snapshot marked `reset`.
    Gone(broadcast::Receiver<Arc<LiveEvent>>),
}

struct Topic {
    ring: VecDeque<Arc<LiveEvent>>,
    /// Highest sequence dropped from the ring (0 when nothing was).
    evicted_upto: u64,
    tx: broadcast::Sender<Arc<LiveEvent>>,
}

/// Fan-out state for every topology seen since start.
pub struct Hub {
    topics: Mutex<HashMap<String, Topic>>,
    replay: usize,
    client_queue: usize,
    /// Events at or below this sequence were committed before the hub existed.
    start_seq: u64,
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
        }
    }

    fn topic<'a>(&self, topics: &'a mut HashMap<String, Topic>, tid: &str) -> &'a mut Topic {
        if !topics.contains_key(tid) {
            let (tx, _) = broadcast::channel(self.client_queue);
            topics.insert(
                tid.to_owned(),
                Topic {
                    ring: VecDeque::new(),
                    evicted_upto: 0,
                    tx,
                },
            );
        }
        topics.get_mut(tid).expect("just inserted")
    }

    /// Publishes committed events of one topology, in order.
    pub fn publish(&self, tid: &str, event: LiveEvent) {
        let event = Arc::new(event);
        let mut topics = self.topics.lock().expect("hub lock");
        let topic = self.topic(&mut topics, tid);
        if topic.ring.len() == self.replay {
            if let Some(old) = topic.ring.pop_front() {
                topic.evicted_upto = old.seq;
            }
        }
        topic.ring.push_back(event.clone());
        // No receivers is fine: nobody is watching this topology right now.
        let _ = topic.tx.send(event);
    }

    /// Subscribes to a topology's live events (before reading its snapshot).
    pub fn subscribe(&self, tid: &str) -> broadcast::Receiver<Arc<LiveEvent>> {
        let mut topics = self.topics.lock().expect("hub lock");
        self.topic(&mut topics, tid).tx.subscribe()
    }

    /// Subscribes and collects the retained events after `last_id`, atomically.
    pub fn resume(&self, tid: &str, last_id: u64) -> Resume {
        let mut topics = self.topics.lock().expect("hub lock");
        let start_seq = self.start_seq;
        let topic = self.topic(&mut topics, tid);
        let rx = topic.tx.subscribe();
        if last_id < start_seq || last_id < topic.evicted_upto {
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
        LiveEvent {
            seq,
            name: "status".into(),
            data: Arc::from("{}"),
        }
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
