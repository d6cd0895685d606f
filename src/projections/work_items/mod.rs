//! `workitem.<project_id>.<work_item_id>.<dry_run|handoff>` → `work_item_history`.
//!
//! The API publishes a dry-run or a handoff of an alert work item with everything it decided
//! (the plan, its checks, the drafted ticket) and answers once this projection has stored it,
//! so the history is the bus's and a rebuild gives it back unchanged. Anyone may publish on
//! the subject, so every text is redacted here as well, and the entry is bounded.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::SqliteConnection;

use crate::bus::envelope;
use crate::bus::streams::{self, StreamSpec};
use crate::bus::subjects;
use crate::projector::{Message, Projection, Table};
use crate::redact;
use crate::retention::Class;
use crate::window::{format_unix_ms, UnixMs};

pub mod entry;

pub use entry::{
    DraftTicket, PlanCheck, TicketOccurrences, TicketRun, WorkItemEntry, WorkItemPlan,
};

/// Largest message accepted on WORKITEMS.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// Longest recurrence key, actor, mode or classification.
pub const MAX_FIELD_LEN: usize = 1_024;
/// The kinds of entry, as the last subject token names them.
pub const KINDS: [&str; 2] = ["dry_run", "handoff"];
/// What a handoff proposes: a drafted ticket, or that a person takes the item over.
pub const HANDOFF_KINDS: [&str; 2] = ["ticket_proposal", "manual_takeover"];

/// The work item id of a group: `wi_` and 24 hex digits of SHA-256(project, NUL, key), the
/// same on every replica and after any rebuild.
pub fn work_item_id(project_id: &str, recurrence_key: &str) -> String {
    let digest = Sha256::new()
        .chain_update(project_id.as_bytes())
        .chain_update([0u8])
        .chain_update(recurrence_key.as_bytes())
        .finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("wi_{hex}")
}

/// `wi_` and 24 lowercase hex digits.
pub fn is_work_item_id(s: &str) -> bool {
    s.strip_prefix("wi_").is_some_and(|h| {
        h.len() == 24
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The `data` of a WORKITEMS event, as the API publishes it (generic over the time so the
/// API writes text and this projection reads it straight to Unix ms).
#[derive(Debug, Serialize, Deserialize)]
pub struct EntryData<T> {
    /// The group's key.
    pub recurrence_key: String,
    /// Who recorded it.
    pub actor: String,
    /// The mode of its plan.
    pub mode: String,
    /// The classification then.
    pub classification: String,
    /// Occurrences then.
    pub occurrences: i64,
    /// The latest occurrence then.
    pub latest_occurrence_at: T,
    /// The plan then.
    pub plan: WorkItemPlan,
    /// Whether every check passed and there was a step to take.
    pub passed: bool,
    /// Handoffs: ticket_proposal or manual_takeover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff_kind: Option<String>,
    /// Handoffs: the dry-run it rests on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run_entry_id: Option<String>,
    /// Handoffs: the drafted ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<DraftTicket>,
}

/// `value` with every text redacted (and any member named like a secret masked), still of
/// its type: redaction changes texts, never the shape.
fn redacted<T: Serialize + DeserializeOwned>(value: &T) -> Result<T, String> {
    let mut json = serde_json::to_value(value).map_err(|e| e.to_string())?;
    redact::redact_json(&mut json);
    serde_json::from_value(json).map_err(|e| format!("redacting changed its shape: {e}"))
}

/// A validated, redacted history entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// WORKITEMS sequence.
    pub seq: u64,
    /// Envelope id.
    pub entry_id: String,
    /// The work item.
    pub work_item_id: String,
    /// Its project.
    pub project_id: String,
    /// `dry_run` or `handoff`.
    pub kind: &'static str,
    /// The mode the plan was made in.
    pub mode: String,
    /// For a handoff: `ticket_proposal` or `manual_takeover`.
    pub handoff_kind: Option<String>,
    /// Whether every pre-flight check passed.
    pub passed: bool,
    /// Occurrences of the group when the entry was made.
    pub occurrences: i64,
    /// Its latest occurrence then, Unix ms.
    pub latest_occurrence_at: i64,
    /// When the entry was made (envelope time, else publish time), Unix ms.
    pub recorded_at: i64,
    /// The entry as the API answers it, JSON.
    pub entry: String,
}

fn bounded(name: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > MAX_FIELD_LEN {
        return Err(format!("data.{name} must be 1 to {MAX_FIELD_LEN} bytes"));
    }
    Ok(())
}

/// Validates and redacts one message; the reason of a rejection is redacted too.
pub fn decode(msg: &Message<'_>) -> Result<Entry, String> {
    decode_inner(msg).map_err(|reason| redact::redact(&reason).into_owned())
}

fn decode_inner(msg: &Message<'_>) -> Result<Entry, String> {
    let form = || {
        format!(
            "subject must be workitem.<project_id>.<work_item_id>.<dry_run|handoff> with tokens of {}",
            subjects::TOKEN_FORM
        )
    };
    let [_, project_id, work_item, kind] =
        subjects::split::<4>(msg.subject, "workitem").ok_or_else(form)?;
    let kind = KINDS.into_iter().find(|k| *k == kind).ok_or_else(form)?;
    if msg.payload.len() > MAX_ENTRY_BYTES {
        return Err(format!("the entry must be at most {MAX_ENTRY_BYTES} bytes"));
    }
    let env = envelope::decode::<EntryData<UnixMs>>(msg.payload)?;
    let d = env.data;
    for (name, v) in [
        ("recurrence_key", &d.recurrence_key),
        ("actor", &d.actor),
        ("mode", &d.mode),
        ("classification", &d.classification),
    ] {
        bounded(name, v)?;
    }
    if work_item_id(project_id, &d.recurrence_key) != work_item {
        return Err("the work item id in the subject is not that of data.recurrence_key".into());
    }
    let handoff_kind = match (kind, d.handoff_kind) {
        ("handoff", Some(h)) if HANDOFF_KINDS.contains(&h.as_str()) => Some(h),
        ("handoff", _) => {
            return Err(format!(
                "data.handoff_kind must be one of {}",
                HANDOFF_KINDS.join(", ")
            ))
        }
        (_, Some(_)) => return Err("data.handoff_kind belongs to a handoff only".into()),
        (_, None) => None,
    };
    if kind == "handoff" && d.ticket.is_none() {
        return Err("a handoff must carry data.ticket".into());
    }
    if let Some(id) = &d.dry_run_entry_id {
        bounded("dry_run_entry_id", id)?;
    }
    let recorded_at = env.time_ms.unwrap_or(msg.published_ms);
    let text = |s: &str| redact::redact(s).into_owned();
    let entry = WorkItemEntry {
        entry_id: text(&env.id),
        seq: msg.seq,
        kind: kind.to_owned(),
        work_item_id: work_item.to_owned(),
        project_id: project_id.to_owned(),
        recurrence_key: text(&d.recurrence_key),
        recorded_at: format_unix_ms(recorded_at),
        actor: text(&d.actor),
        mode: text(&d.mode),
        classification: text(&d.classification),
        occurrences: d.occurrences,
        latest_occurrence_at: format_unix_ms(d.latest_occurrence_at.0),
        passed: d.passed,
        plan: redacted(&d.plan)?,
        handoff_kind: handoff_kind.clone(),
        dry_run_entry_id: handoff_kind
            .is_some()
            .then(|| d.dry_run_entry_id.as_deref().map(text)),
        ticket: d.ticket.as_ref().map(redacted).transpose()?,
    };
    let entry = serde_json::to_string(&entry).map_err(|e| e.to_string())?;
    Ok(Entry {
        seq: msg.seq,
        entry_id: env.id.into_owned(),
        work_item_id: work_item.to_owned(),
        project_id: project_id.to_owned(),
        kind,
        mode: d.mode,
        handoff_kind,
        passed: d.passed,
        occurrences: d.occurrences,
        latest_occurrence_at: d.latest_occurrence_at.0,
        recorded_at,
        entry,
    })
}

/// The WORKITEMS read model.
pub struct WorkItemsProjection;

impl Projection for WorkItemsProjection {
    type Event = Entry;

    fn stream(&self) -> StreamSpec {
        streams::WORKITEMS
    }

    fn decode(&self, msg: &Message<'_>) -> Result<Entry, String> {
        decode(msg)
    }

    fn dead_letter_payload<'a>(&self, payload: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        std::borrow::Cow::Owned(super::alerts::redact_payload(payload))
    }

    async fn apply(&self, conn: &mut SqliteConnection, events: &[Entry]) -> sqlx::Result<()> {
        // Entries are few (one per operator request): a statement each is cheap enough.
        for e in events {
            sqlx::query(
                "INSERT INTO work_item_history (seq, entry_id, work_item_id, project_id, kind, \
                 mode, handoff_kind, passed, occurrences, latest_occurrence_at, recorded_at, \
                 entry) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(e.seq as i64)
            .bind(&e.entry_id)
            .bind(&e.work_item_id)
            .bind(&e.project_id)
            .bind(e.kind)
            .bind(&e.mode)
            .bind(&e.handoff_kind)
            .bind(e.passed)
            .bind(e.occurrences)
            .bind(e.latest_occurrence_at)
            .bind(e.recorded_at)
            .bind(&e.entry)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    fn tables(&self) -> &'static [Table] {
        const TABLES: &[Table] = &[Table::kept(
            "work_item_history",
            "seq",
            Class::WorkItems,
            "recorded_at >= ?1",
            "DELETE FROM work_item_history WHERE seq IN \
             (SELECT seq FROM work_item_history WHERE recorded_at < ?1 LIMIT ?2)",
        )];
        TABLES
    }

    async fn reset(&self, conn: &mut SqliteConnection) -> sqlx::Result<()> {
        super::delete_all(conn, &["work_item_history"]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn msg<'a>(subject: &'a str, payload: &'a [u8]) -> Message<'a> {
        Message {
            seq: 7,
            subject,
            payload,
            published_ms: 1_000,
        }
    }

    fn body(data: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"id": "e-1", "time": "2026-11-30T10:00:00Z", "data": data}))
            .unwrap()
    }

    fn data() -> Value {
        json!({
            "recurrence_key": "fp:disk",
            "actor": "ops",
            "mode": "auto",
            "classification": "automation_gap",
            "occurrences": 3,
            "latest_occurrence_at": "2026-11-30T09:00:00Z",
            "plan": {"mode": "auto", "resolved_mode": "automation", "action": "x", "reason": "y",
                     "checks": [{"name": "a", "ok": true, "detail": "password=hunter2"}],
                     "ready": true},
            "passed": true,
        })
    }

    #[test]
    fn decodes_a_dry_run_and_redacts_its_texts() {
        let id = work_item_id("shop", "fp:disk");
        let subject = format!("workitem.shop.{id}.dry_run");
        let e = decode(&msg(&subject, &body(data()))).unwrap();
        assert_eq!((e.kind, e.passed, e.occurrences), ("dry_run", true, 3));
        assert_eq!(e.recorded_at, 1_796_032_800_000);
        assert!(!e.entry.contains("hunter2"), "{}", e.entry);
        assert!(e.entry.contains(redact::MARKER));
    }

    #[test]
    fn refuses_what_does_not_belong_with_reasons() {
        let id = work_item_id("shop", "fp:disk");
        let good = format!("workitem.shop.{id}.dry_run");
        let handoff = format!("workitem.shop.{id}.handoff");
        let other = format!("workitem.other.{id}.dry_run");
        let mut with_kind = data();
        with_kind["handoff_kind"] = json!("ticket_proposal");
        let mut long = data();
        long["actor"] = json!("a".repeat(MAX_FIELD_LEN + 1));
        // Plans and tickets are the documented shapes, or the entry is not stored (a
        // history answer must match its schema, whoever published the entry).
        let mut bare_plan = data();
        bare_plan["plan"] = json!({"action": "x"});
        let mut odd_plan = data();
        odd_plan["plan"]["extra"] = json!(1);
        let mut bare_ticket = with_kind.clone();
        bare_ticket["ticket"] = json!({"title": "t"});
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (&good, body(bare_plan), "missing field `mode`"),
            (&good, body(odd_plan), "unknown field `extra`"),
            (&handoff, body(bare_ticket), "missing field `summary`"),
            ("workitem.shop.wi_1.dry_run", body(data()), "work item id"),
            (&other, body(data()), "work item id"),
            ("workitem.shop.x.close", body(data()), "subject must be"),
            (&good, body(with_kind), "handoff only"),
            (&handoff, body(data()), "handoff_kind"),
            (&good, body(long), "data.actor"),
            (&good, b"{".to_vec(), "invalid envelope"),
            (&good, vec![b' '; MAX_ENTRY_BYTES + 1], "at most"),
        ];
        for (subject, payload, why) in cases {
            let err = decode(&msg(subject, &payload)).unwrap_err();
            assert!(err.contains(why), "{subject}: {err}");
        }
    }

    #[test]
    fn work_item_ids_are_stable_and_separate_project_from_key() {
        assert_eq!(work_item_id("shop", "fp:1"), work_item_id("shop", "fp:1"));
        assert_ne!(work_item_id("shop", "fp:1"), work_item_id("shopf", "p:1"));
        assert!(is_work_item_id(&work_item_id("a", "b")));
        for bad in [
            "",
            "wi_",
            "wi_0123456789abcdef0123456",
            "wi_0123456789ABCDEF01234567",
        ] {
            assert!(!is_work_item_id(bad), "{bad}");
        }
    }
}
