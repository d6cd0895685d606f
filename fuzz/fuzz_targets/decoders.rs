//! Every stream's decoder on any subject and payload: never a panic, and a refusal always
//! has a reason. Input: the subject, a newline, the payload.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use orrery::live::Hub;
use orrery::projections::alerts::AlertsProjection;
use orrery::projections::heartbeats::HeartbeatsProjection;
use orrery::projections::results::ResultsProjection;
use orrery::projections::topology::TopologyProjection;
use orrery::projections::work_items::WorkItemsProjection;
use orrery::projector::{Message, Projection};

fuzz_target!(|data: &[u8]| {
    let (subject, payload) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let Ok(subject) = std::str::from_utf8(subject) else {
        return;
    };
    let msg = Message {
        seq: 1,
        subject,
        payload,
        published_ms: 1_700_000_000_000,
    };
    let topology = TopologyProjection::new(Arc::new(Hub::new(8, 8, 0)));
    let reasons = [
        ResultsProjection::default().decode(&msg).err(),
        HeartbeatsProjection.decode(&msg).err(),
        AlertsProjection.decode(&msg).err(),
        topology.decode(&msg).err(),
        WorkItemsProjection.decode(&msg).err(),
    ];
    for reason in reasons.into_iter().flatten() {
        assert!(!reason.is_empty(), "a refusal without a reason");
    }
});
