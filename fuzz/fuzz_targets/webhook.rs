//! Alertmanager webhook bodies: never a panic, and every alert of an accepted body is an
//! event the ALERTS decoder accepts (nothing the API took in is dead-lettered later).
#![no_main]

use libfuzzer_sys::fuzz_target;
use orrery::projections::alerts::AlertsProjection;
use orrery::projector::{Message, Projection};

fuzz_target!(|body: &[u8]| {
    let Ok(events) = orrery::api::alerts::intake::parse_webhook(body) else {
        return;
    };
    for (id, data) in events {
        let payload = orrery::bus::envelope::encode(
            &id,
            "alert",
            "alertmanager",
            "2026-11-30T10:00:00Z",
            &data,
        );
        let msg = Message {
            seq: 1,
            subject: "alert.alertmanager.shop",
            payload: &payload,
            published_ms: 0,
        };
        if let Err(reason) = AlertsProjection.decode(&msg) {
            panic!("accepted by the webhook, refused by the decoder: {reason}");
        }
    }
});
