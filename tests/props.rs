//! Property tests for every parser that reads input from outside (they never panic, they
//! refuse what the contract refuses, and what they accept round-trips), for SSE tickets, and
//! for the percentile selection behind `/results/durations`. Bounded (256 cases
//! per property by default, `PROPTEST_CASES` to change) so the suite stays fast; no bus and
//! no database needed.

use std::sync::Arc;
use std::time::Duration;

use orrery::api::extract::Params;
use orrery::api::sse::Tickets;
use orrery::config::Secret;
use orrery::live::{event_id, parse_event_id, Hub};
use orrery::projections::alerts::AlertsProjection;
use orrery::projections::heartbeats::HeartbeatsProjection;
use orrery::projections::results::durations::rank::{nearest_rank, rank_index, select_sorted};
use orrery::projections::results::ResultsProjection;
use orrery::projections::topology::TopologyProjection;
use orrery::projector::{Message, Projection};
use orrery::token::{mint, Authenticator, Claims, Role};
use orrery::window::{format_unix_ms, parse_duration, parse_rfc3339_ms, parse_single_unit};
use proptest::prelude::*;

const SECRET: &str = "property-test-secret-property-test-secret";

/// Bytes that look like JSON often, and like anything at all sometimes.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let json_ish = proptest::collection::vec(
        prop_oneof![
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just("\"data\":".to_owned()),
            Just("\"id\":\"x\",".to_owned()),
            Just("\"result_id\":".to_owned()),
            Just("\"mutation_id\":".to_owned()),
            Just("\"stage\":\"firing\",".to_owned()),
            Just("\"provider_event_id\":".to_owned()),
            Just("\"stats\":{\"cpu_percent\":".to_owned()),
            Just("\"containers\":[".to_owned()),
            Just("null".to_owned()),
            Just("1e999".to_owned()),
            Just("-9223372036854775809".to_owned()),
            Just("\"2026-11-22T10:00:00Z\"".to_owned()),
            "\"[^\"]{0,40}\"",
            "[0-9]{1,20}",
            Just(",".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat().into_bytes());
    prop_oneof![json_ish, proptest::collection::vec(any::<u8>(), 0..300)]
}

fn subject() -> impl Strategy<Value = String> {
    prop_oneof![
        "result\\.[a-z]{1,8}\\.[a-z0-9-]{1,12}",
        "heartbeat\\.[a-z0-9-]{1,12}",
        "alert\\.(sentry|signoz|alertmanager)\\.[a-z]{1,8}",
        "topology\\.[a-z0-9-]{1,8}\\.(status|mutation\\.(enqueued|applying|applied|failed))",
        "[a-z.>*]{0,40}",
        ".{0,60}",
    ]
}

fn message<'a>(subject: &'a str, payload: &'a [u8]) -> Message<'a> {
    Message {
        seq: 1,
        subject,
        payload,
        published_ms: 1_796_000_000_000,
    }
}

/// Alertmanager webhook bodies: mostly well-formed, with statuses, labels, times and ids
/// from the edges of what Alertmanager sends.
fn webhook() -> impl Strategy<Value = Vec<u8>> {
    let labels = proptest::collection::btree_map("[a-z_]{1,12}", ".{0,24}", 0..6);
    let alert = (
        prop_oneof![
            Just("firing".to_owned()),
            Just("resolved".to_owned()),
            "[a-z]{0,8}"
        ],
        labels.clone(),
        labels,
        prop_oneof![
            Just("2026-11-30T10:00:00Z".to_owned()),
            Just("2026-11-30T10:00:00.123456789+09:00".to_owned()),
            ".{0,30}"
        ],
        proptest::option::of("[a-f0-9]{16}"),
        proptest::option::of("https://am\\.example/[a-z]{0,10}"),
    )
        .prop_map(|(status, mut labels, annotations, starts, fp, url)| {
            labels.insert("alertname".into(), "Disk".into());
            serde_json::json!({"status": status, "labels": labels, "annotations": annotations,
                               "startsAt": starts, "fingerprint": fp, "generatorURL": url})
        });
    (
        prop_oneof![Just("4".to_owned()), Just("3".to_owned()), "[0-9]{0,2}"],
        proptest::collection::vec(alert, 0..5),
    )
        .prop_map(|(version, alerts)| {
            serde_json::to_vec(&serde_json::json!({"version": version, "alerts": alerts})).unwrap()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Webhooks: never a panic; every alert of an accepted body becomes an event that the
    /// ALERTS decoder accepts, so nothing the API took in is dead-lettered later.
    #[test]
    fn accepted_webhook_alerts_are_events_the_decoder_accepts(body in webhook(), junk in payload()) {
        let _ = orrery::api::alerts::intake::parse_webhook(&junk);
        if let Ok(events) = orrery::api::alerts::intake::parse_webhook(&body) {
            prop_assert!(!events.is_empty() && events.len() <= 1000);
            for (id, data) in events {
                let body = orrery::bus::envelope::encode(&id, "alert", "alertmanager",
                    "2026-11-30T10:00:00Z", &data);
                let decoded = AlertsProjection::default().decode(&message("alert.alertmanager.shop", &body));
                prop_assert!(decoded.is_ok(), "{:?} for {}", decoded.err(), data);
            }
        }
    }

    /// Every stream's decoder takes any subject and any bytes without panicking; what it
    /// refuses it refuses with a reason (a dead letter's text).
    #[test]
    fn decoders_never_panic_and_always_give_a_reason(subject in subject(), payload in payload()) {
        let msg = message(&subject, &payload);
        let hub = Arc::new(Hub::new(8, 8, 0));
        if let Err(reason) = ResultsProjection::default().decode(&msg) {
            prop_assert!(!reason.is_empty());
        }
        if let Err(reason) = HeartbeatsProjection.decode(&msg) {
            prop_assert!(!reason.is_empty());
        }
        if let Err(reason) = AlertsProjection::default().decode(&msg) {
            prop_assert!(!reason.is_empty());
        }
        if let Err(reason) = TopologyProjection::new(hub).decode(&msg) {
            prop_assert!(!reason.is_empty());
        }
    }

    /// A well-formed result is accepted whatever its ids, and a result without an id never.
    #[test]
    fn results_accept_the_contract_and_refuse_a_missing_id(
        kind in "[a-z]{1,10}", agent in "[a-z0-9-]{1,20}", id in "[ -~]{1,64}", code in any::<i32>(),
    ) {
        let subject = format!("result.{kind}.{agent}");
        let ok = serde_json::to_vec(&serde_json::json!(
            {"id": "e", "data": {"result_id": id, "exit_code": code}})).unwrap();
        prop_assert!(ResultsProjection::default().decode(&message(&subject, &ok)).is_ok());
        let missing = serde_json::to_vec(&serde_json::json!(
            {"id": "e", "data": {"exit_code": code}})).unwrap();
        prop_assert!(ResultsProjection::default().decode(&message(&subject, &missing)).is_err());
    }

    /// Durations: never a panic; any sum of parts parses to its seconds; zero is refused.
    #[test]
    fn durations_round_trip(d in 0u64..400, h in 0u64..10_000, m in 0u64..100_000, s in 0u64..1_000_000,
                            junk in ".{0,30}") {
        let _ = parse_duration(&junk);
        let _ = parse_single_unit(&junk);
        let text = format!("{d}d{h}h{m}m{s}s");
        let total = d * 86_400 + h * 3_600 + m * 60 + s;
        match parse_duration(&text) {
            Ok(got) => prop_assert_eq!(got, Duration::from_secs(total)),
            Err(_) => prop_assert_eq!(total, 0),
        }
        prop_assert_eq!(parse_single_unit(&format!("{s}s")).ok(), (s > 0).then(|| Duration::from_secs(s)));
    }

    /// Times: whatever Orrery writes it reads back to the millisecond.
    #[test]
    fn times_round_trip(ms in 0i64..253_402_300_799_000, junk in ".{0,40}") {
        let _ = parse_rfc3339_ms(&junk);
        prop_assert_eq!(parse_rfc3339_ms(&format_unix_ms(ms)), Some(ms));
    }

    /// Event ids: ours round-trip; anything else is refused, never a panic.
    #[test]
    fn event_ids_round_trip(seq in any::<u64>(), epoch in "[0-9a-z]{1,32}", junk in ".{0,80}") {
        let id = event_id(seq, &epoch);
        prop_assert_eq!(parse_event_id(&id), Some((seq, Some(epoch.as_str()))));
        let bare = seq.to_string();
        prop_assert_eq!(parse_event_id(&bare), Some((seq, None)));
        if let Some((_, Some(e))) = parse_event_id(&junk) {
            prop_assert!(e.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
        }
    }

    /// Orrery-Min-Seq: well-formed lists round-trip (a stream named twice wants the larger).
    #[test]
    fn min_seq_lists_round_trip(pairs in proptest::collection::vec(
        (prop_oneof![Just("RESULTS"), Just("TOPOLOGY"), Just("ALERTS"), Just("HEARTBEATS")], any::<u64>()), 1..4),
        junk in ".{0,60}") {
        let _ = orrery::api::consistency::parse(&junk);
        let text: Vec<String> = pairs.iter().map(|(s, n)| format!("{s}:{n}")).collect();
        let parsed = orrery::api::consistency::parse(&text.join(",")).expect("a well-formed list");
        for (stream, n) in &pairs {
            let want = pairs.iter().filter(|(s, _)| s == stream).map(|(_, n)| *n).max().unwrap();
            let got = parsed.iter().find(|(s, _)| s.name == *stream).map(|(_, n)| *n);
            prop_assert_eq!(got, Some(want), "{}", n);
        }
    }

    /// Query strings: any string decodes, and every typed read answers Ok or a 422 naming
    /// the parameter, never a panic.
    #[test]
    fn query_strings_never_panic(query in ".{0,200}") {
        let params = Params::parse(Some(&query));
        for name in ["limit", "since", "stale", "kind", "cursor", "project_id", "window"] {
            let _ = params.get(name);
            let _ = params.token(name);
            let _ = params.bool(name);
            let _ = params.int(name, 1, 500, 50);
        }
        let _ = params.window_start();
    }

    /// Tokens: any string is refused or accepted without a panic; a minted token verifies
    /// to its claims, and changing any one character of it makes it invalid.
    #[test]
    fn tokens_verify_only_as_minted(junk in ".{0,300}", sub in "[a-z]{1,20}", flip in any::<prop::sample::Index>()) {
        let secret = Secret::new(SECRET);
        let auth = Authenticator::new(Some(&secret), None);
        // With no OpenID provider configured, verification never waits on anything.
        let verify = |t: &str| futures::executor::block_on(auth.verify(t));
        let _ = verify(&junk);
        let _ = auth.verify_login(&junk);
        let token = mint(&secret, &sub, Role::Operator, 600).unwrap();
        let claims = verify(&token).unwrap();
        prop_assert_eq!((claims.sub.as_str(), claims.role), (sub.as_str(), Role::Operator));
        let mut bytes = token.into_bytes();
        let i = flip.index(bytes.len());
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        // A changed base64 padding bit can decode to the same bytes; any other change fails.
        if let Ok(c) = verify(&tampered) {
            prop_assert_eq!(c.sub, sub);
        }
    }

    /// SSE tickets: each redeems exactly once, to the claims it was issued for; no other
    /// string (a near miss included) ever redeems, and none panics.
    #[test]
    fn tickets_redeem_once_and_only_as_issued(subs in proptest::collection::vec("[a-z]{1,12}", 1..20),
                                              junk in ".{0,100}", flip in any::<prop::sample::Index>()) {
        let tickets = Tickets::default();
        let issued: Vec<(String, String)> = subs
            .iter()
            .map(|sub| (tickets.issue(Claims::new(sub, Role::Viewer, u64::MAX)).unwrap(), sub.clone()))
            .collect();
        prop_assert!(tickets.redeem(&junk).is_none());
        let (first, _) = &issued[0];
        let mut near = first.clone().into_bytes();
        let i = flip.index(near.len());
        near[i] = if near[i] == b'0' { b'1' } else { b'0' };
        prop_assert!(tickets.redeem(std::str::from_utf8(&near).unwrap()).is_none());
        for (ticket, sub) in &issued {
            let claims = tickets.redeem(ticket);
            prop_assert_eq!(claims.map(|c| c.sub), Some(sub.clone()));
            prop_assert!(tickets.redeem(ticket).is_none(), "a second redemption");
        }
    }

    /// Percentiles across sorted blocks are the values one sort of everything gives, at
    /// every rank, with ties, empty blocks and extreme values.
    #[test]
    fn ranks_across_sorted_blocks_match_one_sort(
        mut blocks in proptest::collection::vec(proptest::collection::vec(-5i64..60, 0..50), 0..10),
        wide in proptest::collection::vec(any::<i64>(), 0..10),
    ) {
        blocks.push(wide);
        for b in &mut blocks {
            b.sort_unstable();
        }
        let mut all = blocks.concat();
        all.sort_unstable();
        let slices: Vec<&[i64]> = blocks.iter().map(Vec::as_slice).collect();
        for r in 0..=all.len() {
            prop_assert_eq!(select_sorted(&slices, r), all.get(r).copied(), "rank {}", r);
        }
        if !all.is_empty() {
            for p in [0.5, 0.95, 0.99] {
                let r = rank_index(all.len(), p);
                prop_assert_eq!(select_sorted(&slices, r), Some(nearest_rank(&all, p)));
            }
        }
    }

    /// Redaction: never a panic, and a password in a URL or a key=value never survives.
    #[test]
    fn secrets_never_survive_redaction(secret in "[A-Za-z0-9]{12,32}", text in ".{0,200}") {
        let _ = orrery::redact::redact(&text);
        for shape in [format!("password={secret}"), format!("https://u:{secret}@h.example/x"),
                      format!("Authorization: Bearer {secret}")] {
            let out = orrery::redact::redact(&shape);
            prop_assert!(!out.contains(&secret), "{} kept {}", shape, secret);
        }
    }
}
