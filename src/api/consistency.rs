//! Read-your-writes across replicas: every write answers `Orrery-Seq: <STREAM>:<seq>`, and
//! a request carrying `Orrery-Min-Seq: <STREAM>:<seq>[,…]` (or `?min_seq=`, for EventSource,
//! which cannot set headers) is answered only once this replica has committed that far —
//! waiting at most `--mutation-wait-ms`, then 503 naming the stream that is behind.

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::error::ApiError;
use crate::api::extract::Params;
use crate::api::AppState;
use crate::bus::streams::{self, StreamSpec};

/// The header a write answers with.
pub const ORRERY_SEQ: HeaderName = HeaderName::from_static("orrery-seq");
/// The header a read may carry.
pub const ORRERY_MIN_SEQ: HeaderName = HeaderName::from_static("orrery-min-seq");
/// Most `<STREAM>:<seq>` pairs one request may name.
const MAX_PAIRS: usize = 8;
/// What `Orrery-Min-Seq` and `?min_seq=` take, as the document states it (every parameter
/// that carries it gets it from here): empty, or up to eight `STREAM:seq` pairs of projected
/// streams with sequences within u64. Stricter than [`parse`] only in what no client sends
/// (tabs, a stream named twice past eight pairs); a test holds that what it admits parses.
pub const MIN_SEQ_PATTERN: &str = r"^ *$|^ *(TOPOLOGY|HEARTBEATS|ALERTS|RESULTS|WORKITEMS):([0-9]{1,19}|0[0-9]{19}|1[0-7][0-9]{18}|18[0-3][0-9]{17}|184[0-3][0-9]{16}|1844[0-5][0-9]{15}|18446[0-6][0-9]{14}|184467[0-3][0-9]{13}|1844674[0-3][0-9]{12}|184467440[0-6][0-9]{10}|1844674407[0-2][0-9]{9}|18446744073[0-6][0-9]{8}|1844674407370[0-8][0-9]{6}|18446744073709[0-4][0-9]{5}|184467440737095[0-4][0-9]{4}|18446744073709550[0-9]{3}|18446744073709551[0-5][0-9]{2}|1844674407370955160[0-9]{1}|1844674407370955161[0-5]) *(, *(TOPOLOGY|HEARTBEATS|ALERTS|RESULTS|WORKITEMS):([0-9]{1,19}|0[0-9]{19}|1[0-7][0-9]{18}|18[0-3][0-9]{17}|184[0-3][0-9]{16}|1844[0-5][0-9]{15}|18446[0-6][0-9]{14}|184467[0-3][0-9]{13}|1844674[0-3][0-9]{12}|184467440[0-6][0-9]{10}|1844674407[0-2][0-9]{9}|18446744073[0-6][0-9]{8}|1844674407370[0-8][0-9]{6}|18446744073709[0-4][0-9]{5}|184467440737095[0-4][0-9]{4}|18446744073709550[0-9]{3}|18446744073709551[0-5][0-9]{2}|1844674407370955160[0-9]{1}|1844674407370955161[0-5]) *){0,7}$";
const FORM: &str = "<STREAM>:<seq>[,<STREAM>:<seq>…] naming projected streams \
                    (TOPOLOGY, HEARTBEATS, ALERTS, RESULTS, WORKITEMS), at most 8";

/// Response headers of a write: `Orrery-Seq`.
pub type Written = [(HeaderName, HeaderValue); 1];

/// The `Orrery-Seq` header of a write that was stored at `seq` in `stream`.
pub fn written(stream: StreamSpec, seq: u64) -> Written {
    let value = HeaderValue::from_str(&format!("{}:{seq}", stream.name))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    [(ORRERY_SEQ, value)]
}

/// Parses `<STREAM>:<seq>[,<STREAM>:<seq>…]`; `None` when it is not of that form or names
/// an unknown stream. A stream named twice must reach the larger sequence.
pub fn parse(value: &str) -> Option<Vec<(StreamSpec, u64)>> {
    let mut wanted: Vec<(StreamSpec, u64)> = Vec::new();
    for pair in value.split(',') {
        let (name, seq) = pair.trim().split_once(':')?;
        let stream = streams::by_name(name)?;
        if seq.is_empty() || seq.len() > 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let seq: u64 = seq.parse().ok()?;
        if let Some((_, w)) = wanted.iter_mut().find(|(s, _)| *s == stream) {
            *w = (*w).max(seq);
        } else if wanted.len() < MAX_PAIRS {
            wanted.push((stream, seq));
        } else {
            return None;
        }
    }
    Some(wanted)
}

/// Waits, at most `--mutation-wait-ms`, until this replica has committed `stream` up to
/// `seq`; 503 `behind` (with `Retry-After`) when it has not.
pub async fn reach(state: &AppState, stream: StreamSpec, seq: u64) -> Result<(), ApiError> {
    let progress = state
        .projections
        .iter()
        .find(|p| p.stream == stream)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("{} is not projected", stream.name)))?;
    let mut checkpoint = progress.checkpoint.clone();
    let reached = tokio::time::timeout(state.mutation_wait, checkpoint.wait_for(|c| *c >= seq))
        .await
        .is_ok_and(|r| r.is_ok());
    if reached {
        Ok(())
    } else {
        Err(ApiError::Behind {
            stream: stream.name,
            checkpoint: *progress.checkpoint.borrow(),
            wanted: seq,
        })
    }
}

/// Middleware: holds a request that names a minimum sequence until this replica has
/// committed it (bounded by `--mutation-wait-ms`).
pub async fn wait_for_min_seq(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    // An empty value asks for nothing, like no value: what a client sends for an unset
    // sequence it templates in (the document's pattern says so too).
    let header = request
        .headers()
        .get(&ORRERY_MIN_SEQ)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .unwrap_or_else(|_| "\u{0}".into())
        })
        .filter(|v| !v.trim().is_empty());
    let query = match header {
        Some(_) => None,
        None => match Params::parse(request.uri().query()).get("min_seq") {
            Ok(v) => v.filter(|v| !v.trim().is_empty()).map(str::to_owned),
            Err(e) => return e.into_response(),
        },
    };
    let (name, raw) = match (header, query) {
        (Some(h), _) => ("Orrery-Min-Seq", h),
        (None, Some(q)) => ("min_seq", q),
        (None, None) => return next.run(request).await,
    };
    let Some(wanted) = parse(&raw) else {
        return ApiError::invalid(name, FORM).into_response();
    };
    let deadline = tokio::time::Instant::now() + state.mutation_wait;
    for (stream, seq) in wanted {
        let Some(progress) = state.projections.iter().find(|p| p.stream == stream) else {
            return ApiError::invalid(name, FORM).into_response();
        };
        let mut checkpoint = progress.checkpoint.clone();
        let reached = tokio::time::timeout_at(deadline, checkpoint.wait_for(|c| *c >= seq))
            .await
            .is_ok_and(|r| r.is_ok());
        if !reached {
            return ApiError::Behind {
                stream: stream.name,
                checkpoint: *progress.checkpoint.borrow(),
                wanted: seq,
            }
            .into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_seq_takes_projected_streams_and_refuses_the_rest() {
        assert_eq!(
            parse("TOPOLOGY:7, ALERTS:3,TOPOLOGY:9"),
            Some(vec![(streams::TOPOLOGY, 9), (streams::ALERTS, 3)])
        );
        assert_eq!(parse("RESULTS:0"), Some(vec![(streams::RESULTS, 0)]));
        let long = format!("TOPOLOGY:{}", "9".repeat(21));
        for bad in [
            "",
            "TOPOLOGY",
            "TOPOLOGY:",
            ":5",
            "topology:5",
            "NOPE:1",
            "TOPOLOGY:-1",
            "TOPOLOGY:1x",
            "TOPOLOGY:18446744073709551616",
            &long,
            "TOPOLOGY:1,",
            "TOPOLOGY:1;ALERTS:2",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Whatever the document's pattern admits, the parser takes (an empty value is
        /// handled before parsing: it asks for nothing).
        #[test]
        fn what_the_documented_min_seq_pattern_admits_is_accepted(
            pairs in proptest::collection::vec(
                (
                    "(TOPOLOGY|HEARTBEATS|ALERTS|RESULTS|WORKITEMS|COMMANDS|topology|X)",
                    "[0-9]{1,21}|1844674407370955161[0-9]|18446744073709551[0-9]{3}",
                    " {0,2}",
                    " {0,2}",
                ),
                1..10,
            ),
        ) {
            let pattern = min_seq_pattern();
            let value = pairs
                .iter()
                .map(|(s, n, a, b)| format!("{a}{s}:{n}{b}"))
                .collect::<Vec<_>>()
                .join(",");
            if pattern.is_match(&value) {
                proptest::prop_assert!(parse(&value).is_some(), "{value}");
            }
        }
    }

    /// The `Orrery-Min-Seq` pattern the document gives a read.
    fn min_seq_pattern() -> regex::Regex {
        let doc = crate::api::openapi_document();
        let params = doc["paths"]["/api/v1/topologies"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let p = params
            .iter()
            .find(|p| p["name"] == "Orrery-Min-Seq")
            .unwrap();
        regex::Regex::new(p["schema"]["pattern"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn the_documented_min_seq_pattern_takes_the_largest_sequence_and_no_larger() {
        let pattern = min_seq_pattern();
        for ok in [
            "",
            "  ",
            "TOPOLOGY:18446744073709551615",
            "RESULTS:0, ALERTS:7",
        ] {
            assert!(pattern.is_match(ok), "{ok:?}");
        }
        for bad in [
            "TOPOLOGY:18446744073709551616",
            "TOPOLOGY:99999999999999999999",
        ] {
            assert!(!pattern.is_match(bad), "{bad}");
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
