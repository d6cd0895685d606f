//! What the NATS connection reports that an operator must see: how often it (re)connected,
//! and every permission the server refused.
//!
//! A server that denies a publish or a subscription says so at once (`-ERR 'Permissions
//! Violation for Publish to "…"'`), but only on the connection: the request that needed the
//! permission just waits for an answer that never comes and times out. So the connection's
//! events are watched here, and the denial — with its subject — reaches the log, `/ready`
//! and `/metrics` within the second, instead of "request timed out" for ever.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a denial stays among `/ready`'s reasons after it was last reported. Everything
/// that needs a permission retries within it (provisioning every 10 s at most, consumers in
/// about a second), so a denial that persists stays visible and one that was fixed clears.
pub const DENIAL_SHOWN_FOR: Duration = Duration::from_secs(20);

/// Distinct denied subjects remembered at once (the oldest is forgotten first).
const DENIALS_KEPT: usize = 16;

/// One permission the server refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// `publish` or `subscribe`.
    pub operation: &'static str,
    /// The subject the server named.
    pub subject: String,
    /// When it was last reported.
    pub last: Instant,
    /// How often it was reported.
    pub count: u64,
}

impl Denial {
    /// Whether this report is worth a log line: the first, then the 10th, 100th, … (a
    /// consumer retries every second; the count says the rest).
    pub fn worth_logging(&self) -> bool {
        let mut n = self.count;
        while n % 10 == 0 {
            n /= 10;
        }
        n == 1
    }

    /// The line `/ready` and the log show.
    pub fn reason(&self) -> String {
        format!(
            "bus: NATS denied {} to `{}` ({} time{}): grant this user that permission \
             (README: NATS permissions)",
            self.operation,
            self.subject,
            self.count,
            if self.count == 1 { "" } else { "s" }
        )
    }
}

/// Counters and recent denials of one NATS connection, shared with the API.
#[derive(Debug, Default)]
pub struct BusEvents {
    /// Connections established since start, the first one included.
    pub connects: AtomicU64,
    /// Permission violations the server reported since start.
    pub denied_total: AtomicU64,
    denials: Mutex<Vec<Denial>>,
    /// Woken at every denial, so a publish waiting for its ack learns at once.
    denied: tokio::sync::Notify,
    /// While NATS cannot be reached: why, as a fresh attempt to connect put it.
    unreachable: Mutex<Option<String>>,
}

impl BusEvents {
    /// Takes note of a server error: a permission violation is recorded and returned.
    pub fn server_error(&self, message: &str, now: Instant) -> Option<Denial> {
        let (operation, subject) = permission_violation(message)?;
        self.denied_total.fetch_add(1, Ordering::Relaxed);
        let mut denials = crate::sync::lock(&self.denials);
        let denial = match denials
            .iter_mut()
            .find(|d| d.operation == operation && d.subject == subject)
        {
            Some(d) => {
                d.count += 1;
                d.last = now;
                d.clone()
            }
            None => {
                if denials.len() == DENIALS_KEPT {
                    let oldest = (0..denials.len()).min_by_key(|&i| denials[i].last);
                    if let Some(i) = oldest {
                        denials.swap_remove(i);
                    }
                }
                let d = Denial {
                    operation,
                    subject,
                    last: now,
                    count: 1,
                };
                denials.push(d.clone());
                d
            }
        };
        drop(denials);
        self.denied.notify_waiters();
        Some(denial)
    }

    /// Records why NATS cannot be reached (`None` once it can); `true` when that changed.
    pub fn set_unreachable(&self, cause: Option<String>) -> bool {
        let mut current = crate::sync::lock(&self.unreachable);
        let changed = *current != cause;
        *current = cause;
        changed
    }

    /// Why NATS cannot be reached, as last diagnosed.
    pub fn unreachable(&self) -> Option<String> {
        crate::sync::lock(&self.unreachable).clone()
    }

    /// Resolves at the next denial (of any subject) reported after this call.
    pub fn next_denial(&self) -> tokio::sync::futures::Notified<'_> {
        self.denied.notified()
    }

    /// Whether the server denied publishing to `subject` at or after `since`.
    pub fn publish_denied_since(&self, subject: &str, since: Instant) -> bool {
        crate::sync::lock(&self.denials)
            .iter()
            .any(|d| d.operation == "publish" && d.subject == subject && d.last >= since)
    }

    /// The denials reported within [`DENIAL_SHOWN_FOR`] of `now`, by subject.
    pub fn recent_denials(&self, now: Instant) -> Vec<Denial> {
        let mut recent: Vec<Denial> = crate::sync::lock(&self.denials)
            .iter()
            .filter(|d| now.saturating_duration_since(d.last) < DENIAL_SHOWN_FOR)
            .cloned()
            .collect();
        recent.sort_by(|a, b| a.subject.cmp(&b.subject));
        recent
    }
}

/// Reads nats-server's `Permissions Violation for Publish to "subj"` (or `for Subscription
/// to "subj"`, with or without a queue) into the operation and the subject; `None` for any
/// other server error.
pub fn permission_violation(message: &str) -> Option<(&'static str, String)> {
    const PREFIX: &str = "permissions violation for ";
    let head = message.get(..PREFIX.len())?;
    if !head.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let rest = &message[PREFIX.len()..];
    let operation = if rest.get(..8)?.eq_ignore_ascii_case("publish ") {
        "publish"
    } else if rest.get(..13)?.eq_ignore_ascii_case("subscription ") {
        "subscribe"
    } else {
        return None;
    };
    // The subject is the quoted name after " to " (a publish with a reply names the reply
    // subject first: `Publish with Reply of "r" to "s"`).
    let after = rest.rfind(" to \"").map(|i| &rest[i + 5..])?;
    let subject = after.split('"').next()?;
    (!subject.is_empty()).then(|| (operation, subject.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_permission_violations_are_read_and_nothing_else_is() {
        for (message, want) in [
            (
                r#"Permissions Violation for Publish to "$JS.API.STREAM.CREATE.RESULTS""#,
                Some(("publish", "$JS.API.STREAM.CREATE.RESULTS")),
            ),
            (
                r#"Permissions Violation for Subscription to "_INBOX.>""#,
                Some(("subscribe", "_INBOX.>")),
            ),
            (
                r#"Permissions Violation for Subscription to "a.b" using queue "q""#,
                Some(("subscribe", "a.b")),
            ),
            (
                r#"Permissions Violation for Publish with Reply of "r.1" to "command.deploy.x""#,
                Some(("publish", "command.deploy.x")),
            ),
            (
                r#"permissions violation for publish to "lower""#,
                Some(("publish", "lower")),
            ),
            (r#"Permissions Violation for Publish to """#, None),
            (
                r#"Permissions Violation for Publish to "unterminated"#,
                Some(("publish", "unterminated")),
            ),
            ("Permissions Violation for", None),
            ("Permissions Violation for Publish", None),
            ("Authorization Violation", None),
            ("Maximum Payload Violation", None),
            ("", None),
            ("Permissions Violation for Dancing to \"x\"", None),
            ("Permissions Violation for Publish to ünïcödé", None),
        ] {
            assert_eq!(
                permission_violation(message),
                want.map(|(o, s)| (o, s.to_owned())),
                "{message}"
            );
        }
    }

    #[test]
    fn denials_are_counted_per_subject_bounded_and_forgotten_once_old() {
        let events = BusEvents::default();
        let t0 = Instant::now();
        assert!(events.server_error("Authorization Violation", t0).is_none());
        let msg = r#"Permissions Violation for Publish to "$JS.API.STREAM.CREATE.X""#;
        events.server_error(msg, t0);
        let d = events
            .server_error(msg, t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!((d.count, d.operation), (2, "publish"));
        assert!(
            d.reason().contains("`$JS.API.STREAM.CREATE.X` (2 times)"),
            "{}",
            d.reason()
        );
        for i in 0..40 {
            let m = format!(r#"Permissions Violation for Subscription to "s.{i}""#);
            events.server_error(&m, t0 + Duration::from_secs(11 + i));
        }
        assert_eq!(events.denied_total.load(Ordering::Relaxed), 42);
        let now = t0 + Duration::from_secs(50);
        let recent = events.recent_denials(now);
        assert_eq!(recent.len(), DENIALS_KEPT, "{recent:?}");
        // The newest are kept; DENIAL_SHOWN_FOR after its last report a denial is not shown.
        assert!(recent.iter().any(|d| d.subject == "s.39"));
        assert!(events
            .recent_denials(t0 + Duration::from_secs(50) + DENIAL_SHOWN_FOR)
            .is_empty());
    }
}
