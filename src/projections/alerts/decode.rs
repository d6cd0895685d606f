//! Decoding an alert event: validation, bounds, and redaction of every text field (the
//! raw content exists only here, in memory), and the recurrence key it is grouped by.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::bus::envelope;
use crate::bus::subjects;
use crate::projector::Message;
use crate::redact;
use crate::window::UnixMs;

/// Longest id-like field (provider_event_id, alertname, fingerprint…).
pub const MAX_FIELD_LEN: usize = 256;
/// Longest `source_url`.
pub const MAX_URL_LEN: usize = 2_048;
/// Most characters of (redacted) content kept; longer content is cut with a marker. The
/// hash and length always describe the whole original.
pub const MAX_CONTENT_STORED: usize = 16 * 1024;
/// Largest `labels`, `annotations` or `source_refs` object, as JSON.
pub const MAX_OBJECT_BYTES: usize = 16 * 1024;
/// The stages an alert event may carry.
pub const STAGES: [&str; 3] = ["firing", "resolved", "heartbeat"];

#[derive(Debug, Deserialize)]
struct AlertData {
    provider_event_id: String,
    stage: String,
    #[serde(default)]
    alertname: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    target_resource: Option<String>,
    #[serde(default)]
    fingerprint: Option<String>,
    #[serde(default)]
    labels: Option<Map<String, Value>>,
    #[serde(default)]
    annotations: Option<Map<String, Value>>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    source_url: Option<String>,
    #[serde(default)]
    provider_ts: Option<UnixMs>,
    #[serde(default)]
    source_refs: Option<Map<String, Value>>,
}

/// A validated, redacted alert event.
#[derive(Debug, Clone)]
pub struct AlertEvent {
    /// Stream sequence.
    pub seq: u64,
    /// Envelope id.
    pub event_id: String,
    /// Project (subject token).
    pub project_id: String,
    /// Provider (subject token): alertmanager, sentry, signoz…
    pub provider: String,
    /// firing, resolved or heartbeat.
    pub stage: String,
    /// The provider's id of the event; the duplicate key with `provider`.
    pub provider_event_id: String,
    /// Alert name.
    pub alertname: Option<String>,
    /// Severity as the provider names it.
    pub severity: Option<String>,
    /// Namespace of the target.
    pub namespace: Option<String>,
    /// The resource the alert is about.
    pub target_resource: Option<String>,
    /// Provider fingerprint, when any.
    pub fingerprint: Option<String>,
    /// Recurrence group; `None` for synthetic events.
    pub recurrence_key: Option<String>,
    /// Redacted labels, as JSON.
    pub labels: Option<String>,
    /// Redacted annotations, as JSON.
    pub annotations: Option<String>,
    /// Redacted (and possibly shortened) content.
    pub content_redacted: Option<String>,
    /// SHA-256 of the original content, hex.
    pub content_sha256: Option<String>,
    /// Bytes of the original content.
    pub content_length: Option<i64>,
    /// Whether redaction changed the content.
    pub has_redacted_content: bool,
    /// Redacted source URL.
    pub source_url: Option<String>,
    /// Redacted source references, as JSON.
    pub source_refs: Option<String>,
    /// References per kind (`{"sentry": 2}`), as JSON.
    pub source_ref_counts: String,
    /// References across every kind of `source_refs`.
    pub source_ref_total: i64,
    /// A heartbeat or a synthetic test event: never an incident.
    pub is_synthetic: bool,
    /// The provider's own time of the event.
    pub provider_ts: Option<i64>,
    /// JetStream publish time.
    pub received_at: i64,
}

fn bounded(name: &str, v: Option<String>, max: usize) -> Result<Option<String>, String> {
    match v {
        Some(s) if s.len() > max => Err(format!("data.{name} must be at most {max} bytes")),
        Some(s) if s.is_empty() => Ok(None),
        other => Ok(other),
    }
}

fn object_json(name: &str, v: Option<Map<String, Value>>) -> Result<Option<String>, String> {
    let Some(map) = v else { return Ok(None) };
    let mut value = Value::Object(map);
    redact::redact_json(&mut value);
    let s = value.to_string();
    if s.len() > MAX_OBJECT_BYTES {
        return Err(format!(
            "data.{name} must be at most {MAX_OBJECT_BYTES} bytes as JSON"
        ));
    }
    Ok(Some(s))
}

/// The recurrence group of an event: its fingerprint, else what the alert is about.
pub fn recurrence_key(
    provider: &str,
    fingerprint: Option<&str>,
    alertname: Option<&str>,
    namespace: Option<&str>,
    target: Option<&str>,
) -> String {
    match fingerprint {
        Some(f) => format!("fp:{f}"),
        None => format!(
            "k:{provider}|{}|{}|{}",
            alertname.unwrap_or(""),
            namespace.unwrap_or(""),
            target.unwrap_or("")
        ),
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("…[truncated]");
    }
    s
}

/// Validates and redacts one alert message. The reason of a rejection is redacted too,
/// since parser messages may quote the input.
pub fn decode(msg: &Message<'_>) -> Result<AlertEvent, String> {
    decode_inner(msg).map_err(|reason| redact::redact(&reason).into_owned())
}

fn decode_inner(msg: &Message<'_>) -> Result<AlertEvent, String> {
    let [_, provider, project_id] =
        subjects::split::<3>(msg.subject, "alert").ok_or_else(|| {
            format!(
                "subject must be alert.<provider>.<project_id> with tokens of {}",
                subjects::TOKEN_FORM
            )
        })?;
    let env = envelope::decode::<AlertData>(msg.payload)?;
    let d = env.data;
    if d.provider_event_id.is_empty() || d.provider_event_id.len() > MAX_FIELD_LEN {
        return Err(format!(
            "data.provider_event_id must be 1 to {MAX_FIELD_LEN} bytes"
        ));
    }
    if !STAGES.contains(&d.stage.as_str()) {
        return Err(format!("data.stage must be one of {}", STAGES.join(", ")));
    }
    let alertname = bounded("alertname", d.alertname, MAX_FIELD_LEN)?;
    let severity = bounded("severity", d.severity, MAX_FIELD_LEN)?;
    let namespace = bounded("namespace", d.namespace, MAX_FIELD_LEN)?;
    let target_resource = bounded("target_resource", d.target_resource, MAX_FIELD_LEN)?;
    let fingerprint = bounded("fingerprint", d.fingerprint, MAX_FIELD_LEN)?;
    let source_url =
        bounded("source_url", d.source_url, MAX_URL_LEN)?.map(|u| redact::redact(&u).into_owned());
    let is_synthetic = d.stage == "heartbeat"
        || d.labels
            .as_ref()
            .and_then(|l| l.get("synthetic"))
            .is_some_and(|v| v == &Value::Bool(true) || v.as_str() == Some("true"));
    let counts: Map<String, Value> = d.source_refs.as_ref().map_or_else(Map::new, |refs| {
        refs.iter()
            .map(|(kind, v)| {
                let n = match v {
                    Value::Array(items) => items.len(),
                    Value::Null => 0,
                    _ => 1,
                };
                (kind.clone(), Value::from(n))
            })
            .collect()
    });
    let source_ref_total = counts.values().filter_map(Value::as_i64).sum();
    let source_ref_counts = Value::Object(counts).to_string();
    let labels = object_json("labels", d.labels)?;
    let annotations = object_json("annotations", d.annotations)?;
    let source_refs = object_json("source_refs", d.source_refs)?;
    let (content_redacted, content_sha256, content_length, has_redacted_content) = match d.content {
        None => (None, None, None, false),
        Some(raw) => {
            let sha = format!("{:x}", Sha256::digest(raw.as_bytes()));
            let len = raw.len() as i64;
            let (text, changed) = match redact::redact(&raw) {
                Cow::Borrowed(_) => (raw, false),
                Cow::Owned(r) => (r, true),
            };
            (
                Some(truncate(text, MAX_CONTENT_STORED)),
                Some(sha),
                Some(len),
                changed,
            )
        }
    };
    let recurrence_key = (!is_synthetic).then(|| {
        recurrence_key(
            provider,
            fingerprint.as_deref(),
            alertname.as_deref(),
            namespace.as_deref(),
            target_resource.as_deref(),
        )
    });
    Ok(AlertEvent {
        seq: msg.seq,
        event_id: env.id.into_owned(),
        project_id: project_id.to_owned(),
        provider: provider.to_owned(),
        stage: d.stage,
        provider_event_id: d.provider_event_id,
        alertname,
        severity,
        namespace,
        target_resource,
        fingerprint,
        recurrence_key,
        labels,
        annotations,
        content_redacted,
        content_sha256,
        content_length,
        has_redacted_content,
        source_url,
        source_refs,
        source_ref_counts,
        source_ref_total,
        is_synthetic,
        provider_ts: d.provider_ts.map(|t| t.0),
        received_at: msg.published_ms,
    })
}

/// Redacts a message that could not be decoded before it is kept as a dead letter.
pub fn redact_payload(payload: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(mut v) => {
            redact::redact_json(&mut v);
            v.to_string().into_bytes()
        }
        Err(_) => redact::redact(&String::from_utf8_lossy(payload))
            .into_owned()
            .into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg<'a>(subject: &'a str, payload: &'a [u8]) -> Message<'a> {
        Message {
            seq: 9,
            subject,
            payload,
            published_ms: 5_000,
        }
    }

    #[test]
    fn decodes_the_fixture_shape_and_redacts_content() {
        let p = br#"{"id":"e1","data":{"provider_event_id":"sentry-1","stage":"firing","alertname":"Boom","fingerprint":"fp1","content":"crash; password=hunter2x","labels":{"token":"abc"},"source_refs":{"sentry":["1","2"],"alert":["x"]},"provider_ts":"2026-11-22T09:59:58Z"}}"#;
        let e = decode(&msg("alert.sentry.shop", p)).unwrap();
        assert_eq!(
            (e.provider.as_str(), e.project_id.as_str()),
            ("sentry", "shop")
        );
        assert_eq!(
            e.content_redacted.as_deref(),
            Some("crash; password=[REDACTED]")
        );
        assert!(e.has_redacted_content);
        assert_eq!(e.content_length, Some(24));
        assert_eq!(
            e.content_sha256.as_deref(),
            Some(format!("{:x}", Sha256::digest(b"crash; password=hunter2x")).as_str())
        );
        assert!(!e.labels.unwrap().contains("abc"));
        assert_eq!(e.source_ref_total, 3);
        assert_eq!(e.recurrence_key.as_deref(), Some("fp:fp1"));
        assert_eq!(e.received_at, 5_000);
        assert!(!e.is_synthetic);
    }

    #[test]
    fn heartbeats_and_synthetic_events_have_no_recurrence_group() {
        let hb = br#"{"id":"e","data":{"provider_event_id":"h","stage":"heartbeat"}}"#;
        assert!(decode(&msg("alert.signoz.p", hb))
            .unwrap()
            .recurrence_key
            .is_none());
        let synthetic = br#"{"id":"e","data":{"provider_event_id":"h","stage":"firing","labels":{"synthetic":"true"}}}"#;
        let e = decode(&msg("alert.signoz.p", synthetic)).unwrap();
        assert!(e.is_synthetic && e.recurrence_key.is_none());
    }

    #[test]
    fn without_fingerprint_the_group_is_what_the_alert_is_about() {
        let p = br#"{"id":"e","data":{"provider_event_id":"1","stage":"firing","alertname":"A","namespace":"n","target_resource":"t"}}"#;
        assert_eq!(
            decode(&msg("alert.signoz.p", p))
                .unwrap()
                .recurrence_key
                .as_deref(),
            Some("k:signoz|A|n|t")
        );
    }

    #[test]
    fn rejects_hostile_input_and_never_quotes_a_secret() {
        let huge = format!(
            r#"{{"id":"e","data":{{"provider_event_id":"{}","stage":"firing"}}}}"#,
            "x".repeat(300)
        );
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("alert.sentry.p", b"not json".to_vec()),
            ("alert.sentry", br#"{"id":"e","data":{"provider_event_id":"1","stage":"firing"}}"#.to_vec()),
            ("alert.sentry.p", br#"{"id":"e","data":{"stage":"firing"}}"#.to_vec()),
            ("alert.sentry.p", br#"{"id":"e","data":{"provider_event_id":"1","stage":"open"}}"#.to_vec()),
            ("alert.sentry.p", br#"{"id":"e","data":{"provider_event_id":"1","stage":"firing","labels":[1]}}"#.to_vec()),
            ("alert.sentry.p", huge.into_bytes()),
            // serde quotes an unexpected string value in its message: it must come out redacted.
            ("alert.sentry.p", br#"{"id":"e","data":{"provider_event_id":"1","stage":"firing","provider_ts":"password=leaky123"}}"#.to_vec()),
        ];
        for (subject, payload) in cases {
            let err = decode(&msg(subject, &payload)).unwrap_err();
            assert!(!err.is_empty());
            assert!(!err.contains("leaky123"), "{err}");
        }
    }

    #[test]
    fn dead_letter_payloads_are_redacted_json_or_text() {
        let json = redact_payload(br#"{"data":{"content":"Bearer abcdefgh12345","stage":5}}"#);
        assert!(!String::from_utf8(json).unwrap().contains("abcdefgh12345"));
        let text = redact_payload(b"garbage password=opensesame99 \xff");
        assert!(!String::from_utf8(text).unwrap().contains("opensesame99"));
    }

    #[test]
    fn long_content_is_cut_but_measured_whole() {
        let body = "é".repeat(MAX_CONTENT_STORED);
        let p = format!(
            r#"{{"id":"e","data":{{"provider_event_id":"1","stage":"firing","content":"{body}"}}}}"#
        );
        let e = decode(&msg("alert.sentry.p", p.as_bytes())).unwrap();
        assert_eq!(e.content_length, Some(body.len() as i64));
        assert!(e.content_redacted.unwrap().ends_with("…[truncated]"));
    }
}
