//! The CloudEvents-compatible JSON envelope every message carries.
//!
//! Decoding borrows from the message payload where it can (`Cow`), so the hot path allocates
//! only for strings that contain escapes.

use std::borrow::Cow;

use serde::Deserialize;

use crate::window::UnixMs;

/// Longest envelope id accepted.
pub const MAX_ID_LEN: usize = 256;

/// A decoded envelope around event-specific `data`.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a, D> {
    /// Event id; also the `Nats-Msg-Id` the publisher sent.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// Event time, when the publisher set one.
    #[serde(default)]
    pub time: Option<UnixMs>,
    /// The event body.
    pub data: D,
}

/// The envelope fields a projection needs, validated.
#[derive(Debug)]
pub struct Decoded<'a, D> {
    /// Event id.
    pub id: Cow<'a, str>,
    /// Event time in Unix ms, when present.
    pub time_ms: Option<i64>,
    /// The event body.
    pub data: D,
}

/// Decodes and validates an envelope whose `data` borrows from `payload`.
pub fn decode<'a, D: Deserialize<'a>>(payload: &'a [u8]) -> Result<Decoded<'a, D>, String> {
    let env: Envelope<'a, D> =
        serde_json::from_slice(payload).map_err(|e| format!("invalid envelope: {e}"))?;
    finish(env)
}

fn finish<D>(env: Envelope<'_, D>) -> Result<Decoded<'_, D>, String> {
    if env.id.is_empty() || env.id.len() > MAX_ID_LEN {
        return Err(format!("envelope id must be 1 to {MAX_ID_LEN} characters"));
    }
    Ok(Decoded {
        id: env.id,
        time_ms: env.time.map(|t| t.0),
        data: env.data,
    })
}

/// Builds an envelope body for events Orrery itself publishes.
pub fn encode(
    id: &str,
    kind: &str,
    source: &str,
    time: &str,
    data: &impl serde::Serialize,
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "type": kind,
        "source": source,
        "time": time,
        "data": data,
    }))
    .expect("JSON values always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct D<'a> {
        #[serde(borrow)]
        x: Cow<'a, str>,
    }

    #[test]
    fn decodes_and_ignores_unknown_fields() {
        let p = br#"{"specversion":"1.0","id":"e1","type":"t","time":"2026-11-22T10:00:00Z","extra":1,"data":{"x":"a\"b"}}"#;
        let d: Decoded<D> = decode(p).unwrap();
        assert_eq!(d.id, "e1");
        assert_eq!(d.data.x, "a\"b");
        assert_eq!(d.time_ms, Some(1_795_341_600_000));
    }

    #[test]
    fn rejects_bad_envelopes_with_reasons() {
        let cases: [&[u8]; 6] = [
            b"{ not json",
            b"[1,2]",
            br#"{"data":{"x":"a"}}"#,
            br#"{"id":"","data":{"x":"a"}}"#,
            br#"{"id":"e","time":"noon","data":{"x":"a"}}"#,
            b"\xff\xfe\x00",
        ];
        for c in cases {
            let err = decode::<D>(c).unwrap_err();
            assert!(!err.is_empty());
        }
        assert!(decode::<D>(br#"{"data":{"x":"a"}}"#)
            .unwrap_err()
            .contains("missing field `id`"));
    }
}
