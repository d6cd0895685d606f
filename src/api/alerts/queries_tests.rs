//! The SQL renderings of the dossier's hot answers against their typed declarations: for
//! generated rows covering every nullable column (null and not), every text a provider can
//! send (quotes, control characters, any script) and any JSON in the object columns, both
//! renderings must be equal JSON and match the OpenAPI document's schema.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use proptest::collection::{btree_map, btree_set, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::Value;
use sqlx::Row;

use super::super::answers::{AlertEvent, RecurrenceGroup, RecurrenceRow};
use super::super::plan::{GroupRuns, RunView};
use super::{page_group, page_query, EVENT_JSON};

/// Any text: any script, quotes, backslashes, control characters (NUL included).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{1,12}",
        "(?s).{0,12}",
        "[\"\\\\\\x00-\\x1f\u{7f}\u{2028}\u{fffd}]{0,4}",
    ]
}

/// Any JSON a provider can send inside labels, annotations or source references.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::from),
            btree_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object column as stored: serialized, or NULL.
fn object_column() -> impl Strategy<Value = Option<String>> {
    option::of(
        btree_map(text(), json(), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect()).to_string()),
    )
}

/// Unix ms from year 0000 to 9999 (RFC 3339's range, what a provider's time can parse to).
fn any_time() -> impl Strategy<Value = i64> {
    -62_167_219_200_000i64..=253_402_300_799_999
}

/// A row of `alert_events` with every column the schema allows.
#[derive(Debug, Clone)]
struct EventRow {
    event_id: String,
    project_id: String,
    provider: String,
    stage: &'static str,
    provider_event_id: String,
    names: [Option<String>; 6],
    labels: Option<String>,
    annotations: Option<String>,
    content_redacted: Option<String>,
    content_sha256: Option<String>,
    content_length: Option<i64>,
    flags: [bool; 3],
    redaction_version: i64,
    source_url: Option<String>,
    source_refs: Option<String>,
    source_ref_counts: Option<String>,
    source_ref_total: i64,
    provider_ts: Option<i64>,
    received_at: i64,
}

fn event_row() -> impl Strategy<Value = EventRow> {
    (
        (
            text(),
            text(),
            text(),
            prop_oneof![Just("firing"), Just("resolved"), Just("heartbeat")],
            text(),
        ),
        [
            option::of(text()),
            option::of(text()),
            option::of(text()),
            option::of(text()),
            option::of(text()),
            option::of(text()),
        ],
        (
            object_column(),
            object_column(),
            option::of(text()),
            option::of(text()),
            option::of(any::<i64>()),
        ),
        (
            any::<[bool; 3]>(),
            any::<i64>(),
            option::of(text()),
            object_column(),
            object_column(),
            any::<i64>(),
        ),
        (option::of(any_time()), 0i64..=4_102_444_800_000),
    )
        .prop_map(|(ids, names, content, refs, times)| EventRow {
            event_id: ids.0,
            project_id: ids.1,
            provider: ids.2,
            stage: ids.3,
            provider_event_id: ids.4,
            names,
            labels: content.0,
            annotations: content.1,
            content_redacted: content.2,
            content_sha256: content.3,
            content_length: content.4,
            flags: refs.0,
            redaction_version: refs.1,
            source_url: refs.2,
            source_refs: refs.3,
            source_ref_counts: refs.4,
            source_ref_total: refs.5,
            provider_ts: times.0,
            received_at: times.1,
        })
}

async fn insert(conn: &sqlx::SqlitePool, seq: i64, e: &EventRow) {
    sqlx::query(
        "INSERT INTO alert_events (seq, event_id, project_id, provider, stage, \
         provider_event_id, alertname, severity, namespace, target_resource, fingerprint, \
         recurrence_key, labels, annotations, content_redacted, content_sha256, content_length, \
         has_redacted_content, redaction_version, source_url, source_refs, source_ref_counts, \
         source_ref_total, is_duplicate, is_synthetic, provider_ts, received_at) \
         VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    )
    .bind(seq)
    .bind(&e.event_id)
    .bind(&e.project_id)
    .bind(&e.provider)
    .bind(e.stage)
    .bind(&e.provider_event_id)
    .bind(&e.names[0])
    .bind(&e.names[1])
    .bind(&e.names[2])
    .bind(&e.names[3])
    .bind(&e.names[4])
    .bind(&e.names[5])
    .bind(&e.labels)
    .bind(&e.annotations)
    .bind(&e.content_redacted)
    .bind(&e.content_sha256)
    .bind(e.content_length)
    .bind(e.flags[0])
    .bind(e.redaction_version)
    .bind(&e.source_url)
    .bind(&e.source_refs)
    .bind(&e.source_ref_counts)
    .bind(e.source_ref_total)
    .bind(e.flags[1])
    .bind(e.flags[2])
    .bind(e.provider_ts)
    .bind(e.received_at)
    .execute(conn)
    .await
    .unwrap();
}

/// One migrated database for every case (each case clears what it wrote), its runtime, and
/// the served document.
struct Fixture {
    /// Held by a case while it uses the database: the tests run on parallel threads.
    turn: std::sync::Mutex<()>,
    rt: tokio::runtime::Runtime,
    db: crate::db::Db,
    doc: Value,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = rt
            .block_on(crate::db::open(&dir.path().join("o.db"), 1))
            .unwrap();
        Fixture {
            turn: std::sync::Mutex::new(()),
            rt,
            db,
            doc: crate::api::openapi_document(),
            _dir: dir,
        }
    })
}

/// Schema errors of `instance` against the document's component `name`.
fn schema_errors(doc: &Value, name: &str, instance: &Value) -> Vec<String> {
    let schema = serde_json::json!({
        "$ref": format!("#/components/schemas/{name}"),
        "components": doc["components"].clone(),
    });
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}

/// Both renderings of the stored event `seq`: SQLite's and the typed one.
async fn both_events(db: &crate::db::Db, seq: i64) -> (Value, Value) {
    let sql = format!("SELECT {EVENT_JSON} AS item, e.* FROM alert_events e WHERE e.seq = ?");
    let row = sqlx::query(&sql)
        .bind(seq)
        .fetch_one(&db.writer)
        .await
        .unwrap();
    let rendered: Value = serde_json::from_str(row.get::<&str, _>("item")).unwrap();
    let typed = serde_json::to_value(AlertEvent::from_row(&row).unwrap()).unwrap();
    (rendered, typed)
}

fn run_view() -> impl Strategy<Value = RunView> {
    (
        any::<i64>(),
        text(),
        text(),
        prop_oneof![
            Just("running"),
            Just("succeeded"),
            Just("failed"),
            Just("needs_approval")
        ],
        prop_oneof![Just("auto"), Just("manual"), Just("none")],
        any::<bool>(),
        option::of(text()),
    )
        .prop_map(
            |(seq, result_id, agent_id, state, repair, verified, incident)| RunView {
                seq,
                result_id,
                agent_id,
                run_state: state.to_owned(),
                repair: repair.to_owned(),
                verified,
                incident_id: incident,
            },
        )
}

fn group_runs() -> impl Strategy<Value = GroupRuns> {
    (
        0i64..1_000_000,
        any::<[u16; 4]>(),
        any::<[u16; 3]>(),
        0i64..1000,
        btree_set(text(), 0..60),
        option::of(run_view()),
        option::of(run_view()),
    )
        .prop_map(
            |(total, states, repairs, verified, incidents, latest, latest_repair)| GroupRuns {
                total,
                states: states.map(i64::from),
                repairs: repairs.map(i64::from),
                verified,
                incidents: incidents.into_iter().collect::<BTreeSet<_>>(),
                latest,
                latest_repair,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn an_event_renders_the_same_in_sql_and_typed_and_matches_the_document(rows in vec(event_row(), 1..6)) {
        let f = fixture();
        let _turn = f.turn.lock().unwrap_or_else(|e| e.into_inner());
        let cases = f.rt.block_on(async {
            sqlx::query("DELETE FROM alert_events").execute(&f.db.writer).await.unwrap();
            let mut out = Vec::new();
            for (i, e) in rows.iter().enumerate() {
                insert(&f.db.writer, i as i64 + 1, e).await;
                out.push(both_events(&f.db, i as i64 + 1).await);
            }
            out
        });
        for (rendered, typed) in cases {
            prop_assert_eq!(&rendered, &typed);
            let errors = schema_errors(&f.doc, "AlertEvent", &rendered);
            prop_assert!(errors.is_empty(), "{errors:?} in {rendered}");
        }
    }

    #[test]
    fn a_recurrence_group_renders_the_same_in_sql_and_typed_and_matches_the_document(
        e in event_row(),
        key in text(),
        occurrences in 1i64..1000,
        duplicates in 0i64..1000,
        first in 0i64..=4_102_444_800_000,
        runs in group_runs(),
    ) {
        let f = fixture();
        let _turn = f.turn.lock().unwrap_or_else(|e| e.into_inner());
        let (rendered, typed) = f.rt.block_on(async {
            sqlx::query("DELETE FROM alert_events").execute(&f.db.writer).await.unwrap();
            sqlx::query("DELETE FROM alert_recurrence").execute(&f.db.writer).await.unwrap();
            insert(&f.db.writer, 7, &e).await;
            sqlx::query(
                "INSERT INTO alert_recurrence (project_id, recurrence_key, provider, \
                 occurrence_total, duplicate_total, first_received_at, latest_received_at, \
                 latest_seq) VALUES (?, ?, ?, ?, ?, ?, ?, 7)",
            )
            .bind(&e.project_id)
            .bind(&key)
            .bind(&e.provider)
            .bind(occurrences)
            .bind(duplicates)
            .bind(first)
            .bind(e.received_at)
            .execute(&f.db.writer)
            .await
            .unwrap();
            let row = page_query().build().fetch_one(&f.db.writer).await.unwrap();
            let rendered: Value = serde_json::from_str(&page_group(&row, runs.clone()).item).unwrap();
            let recurrence = RecurrenceRow {
                project_id: e.project_id.clone(),
                recurrence_key: key.clone(),
                occurrence_total: occurrences,
                duplicate_total: duplicates,
                first_received_at: first,
                latest_received_at: e.received_at,
            };
            let latest = sqlx::query("SELECT * FROM alert_events WHERE seq = 7")
                .fetch_one(&f.db.writer)
                .await
                .unwrap();
            let latest = AlertEvent::from_row(&latest).unwrap();
            let typed = serde_json::to_value(RecurrenceGroup::new(&recurrence, latest, &runs)).unwrap();
            (rendered, typed)
        });
        prop_assert_eq!(&rendered, &typed);
        let errors = schema_errors(&f.doc, "RecurrenceGroup", &rendered);
        prop_assert!(errors.is_empty(), "{errors:?} in {rendered}");
    }
}
