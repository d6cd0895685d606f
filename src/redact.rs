//! Redaction of secrets in free text (alert content, labels, annotations, URLs).
//!
//! Alert bodies routinely carry what they should not: a curl line with a bearer token, a
//! DSN with its password, a stack trace that printed an AWS key. Everything Orrery stores or
//! returns from alerts goes through [`redact`] first. The rules err on the side of hiding:
//! a false positive costs a few characters of context, a false negative leaks a credential.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex, RegexSet};

/// What replaces a secret.
pub const MARKER: &str = "[REDACTED]";

/// Bumped whenever the rules change, and stored with every redacted row, so rows redacted
/// by older rules can be found.
pub const VERSION: i64 = 1;

/// How a rule rewrites a match.
enum Keep {
    /// The whole match becomes the marker.
    Nothing,
    /// Capture group 1 (a prefix such as `password=`) stays; the rest becomes the marker.
    Prefix,
    /// Capture groups 1 and 2 stay around the marker.
    Around,
}

struct Rule {
    pattern: String,
    re: Regex,
    keep: Keep,
}

fn rule(pattern: &str, keep: Keep) -> Rule {
    Rule {
        pattern: pattern.to_owned(),
        re: Regex::new(pattern).expect("redaction patterns are valid"),
        keep,
    }
}

/// Every rule in one automaton: one pass over the text tells which rules apply, so clean
/// text (nearly all of it) costs one scan instead of one per rule.
static ANY: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new(RULES.iter().map(|r| r.pattern.as_str())).expect("redaction patterns are valid")
});

/// Secret-bearing names in `name=value`, `name: value` and `"name": "value"` forms.
const SECRET_NAMES: &str = r"(?:password|passwd|pwd|passphrase|secret|client[_-]?secret|token|access[_-]?token|refresh[_-]?token|auth[_-]?token|api[_-]?key|apikey|access[_-]?key|secret[_-]?key|private[_-]?key|aws_secret_access_key|aws_session_token|credentials?|session[_-]?id|cookie)";

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    vec![
        // PEM private keys, whole block (also a truncated one with no END line).
        rule(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----|\z)",
            Keep::Nothing,
        ),
        // user:password@ in any URL-like scheme://.
        rule(
            r"(?i)([a-z][a-z0-9+.\-]*://[^\s:/@]*:)[^\s@/]+(@)",
            Keep::Around,
        ),
        // Authorization schemes.
        rule(r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]+=*", Keep::Prefix),
        rule(r"(?i)(\bbasic\s+)[A-Za-z0-9+/]{8,}=*", Keep::Prefix),
        // JWTs anywhere (header.payload.signature, base64url).
        rule(
            r"\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*",
            Keep::Nothing,
        ),
        // "name": "value" in JSON-ish text.
        rule(
            &format!(r#"(?i)("{SECRET_NAMES}"\s*:\s*")(?:[^"\\]|\\.)*""#),
            Keep::Prefix,
        ),
        // name=value, name: value (query strings, env dumps, headers, YAML).
        rule(
            &format!(r#"(?i)(\b[A-Za-z0-9_\-]*{SECRET_NAMES}\b["']?\s*[=:]\s*["']?)[^\s"'&,;]+"#),
            Keep::Prefix,
        ),
        // Well-known token shapes.
        rule(
            r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{16}\b",
            Keep::Nothing,
        ),
        rule(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b", Keep::Nothing),
        rule(r"\bgithub_pat_[A-Za-z0-9_]{30,}\b", Keep::Nothing),
        rule(r"\bglpat-[A-Za-z0-9_\-]{20,}\b", Keep::Nothing),
        rule(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}", Keep::Nothing),
        rule(r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}\b", Keep::Nothing),
        rule(r"\bAIza[0-9A-Za-z_\-]{35}\b", Keep::Nothing),
        rule(r"\bnpm_[A-Za-z0-9]{36}\b", Keep::Nothing),
        // Sentry DSN keys and similar key@host forms are covered by the URL rule.
    ]
});

/// Redacts `text`; `Cow::Borrowed` when nothing matched (the common case costs no copy).
pub fn redact(text: &str) -> Cow<'_, str> {
    let hits = ANY.matches(text);
    if !hits.matched_any() {
        return Cow::Borrowed(text);
    }
    let mut out: Cow<'_, str> = Cow::Borrowed(text);
    for (i, r) in RULES.iter().enumerate() {
        // A rule that missed the original can still match after an earlier replacement
        // only by matching the marker, which no rule does; skip it.
        if !hits.matched(i) || !r.re.is_match(&out) {
            continue;
        }
        let replaced = match r.keep {
            Keep::Nothing => r.re.replace_all(&out, MARKER).into_owned(),
            Keep::Prefix => {
                r.re.replace_all(&out, |c: &Captures<'_>| format!("{}{MARKER}", &c[1]))
                    .into_owned()
            }
            Keep::Around => {
                r.re.replace_all(&out, |c: &Captures<'_>| {
                    format!("{}{MARKER}{}", &c[1], &c[2])
                })
                .into_owned()
            }
        };
        out = Cow::Owned(replaced);
    }
    out
}

/// Redacts every string inside a JSON value (keys stay; values whose key names a secret are
/// replaced whole). Returns whether anything changed.
pub fn redact_json(value: &mut serde_json::Value) -> bool {
    static SECRET_KEY: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(&format!(r"(?i)^[A-Za-z0-9_\-]*{SECRET_NAMES}$")).expect("valid")
    });
    match value {
        serde_json::Value::String(s) => match redact(s) {
            Cow::Borrowed(_) => false,
            Cow::Owned(r) => {
                *s = r;
                true
            }
        },
        serde_json::Value::Array(items) => items.iter_mut().fold(false, |c, v| redact_json(v) | c),
        serde_json::Value::Object(map) => {
            let mut changed = false;
            for (k, v) in map.iter_mut() {
                if SECRET_KEY.is_match(k) && !v.is_null() {
                    *v = serde_json::Value::String(MARKER.to_owned());
                    changed = true;
                } else {
                    changed |= redact_json(v);
                }
            }
            changed
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real-looking secrets and the part of each that must disappear.
    pub(crate) const CORPUS: &[(&str, &str)] = &[
        (
            "curl -H 'Authorization: Bearer s3cr3tT0kenValue-abc.def' https://api",
            "s3cr3tT0kenValue-abc.def",
        ),
        (
            "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZw leaked",
            "eyJzdWIiOiJhbGljZSJ9",
        ),
        (
            "db down: postgres://orrery:hunter2pass@db.internal:5432/app",
            "hunter2pass",
        ),
        ("GET /login?user=bob&password=Tr0ub4dor&3 HTTP/1.1", "Tr0ub4dor"),
        ("export API_KEY=sk-proj-abcdef0123456789xyz", "sk-proj-abcdef0123456789xyz"),
        ("config secret: 'mysecretvalue42'", "mysecretvalue42"),
        ("{\"password\": \"p@ss \\\"quoted\\\" word\"}", "quoted"),
        ("aws key AKIAIOSFODNN7EXAMPLE in env", "AKIAIOSFODNN7EXAMPLE"),
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq\nq9Zz+keybody\n-----END RSA PRIVATE KEY-----",
            "MIIEowIBAAKCAQEA7bq",
        ),
        (
            "ghp_0123456789abcdefghijABCDEFGHIJ0123456789 pushed",
            "ghp_0123456789abcdefghijABCDEFGHIJ0123456789",
        ),
        (
            "slack xoxb-1234567890-0987654321-AbCdEfGhIjKlMn",
            "xoxb-1234567890-0987654321-AbCdEfGhIjKlMn",
        ),
        ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
        ("Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l", "YWxhZGRpbjpvcGVuc2VzYW1l"),
        (
            "SENTRY_DSN=https://public:secretpart99@sentry.example/1",
            "secretpart99",
        ),
        ("client_secret=Zm9vYmFyYmF6cXV4", "Zm9vYmFyYmF6cXV4"),
        ("X-Auth-Token: tok_9f8e7d6c5b4a", "tok_9f8e7d6c5b4a"),
        (
            "redis://:onlypassword@cache:6379/0",
            "onlypassword",
        ),
    ];

    #[test]
    fn every_secret_of_the_corpus_is_replaced() {
        for (text, secret) in CORPUS {
            let out = redact(text);
            assert!(!out.contains(secret), "{text:?} → {out:?}");
            assert!(out.contains(MARKER), "{text:?} → {out:?}");
        }
    }

    #[test]
    fn ordinary_text_is_left_alone_without_copying() {
        for text in [
            "ValueError: bad cart id\n  File checkout.py line 88",
            "Instance 10.0.0.7:9100 down for more than 5 minutes",
            "https://sentry.example/issues/8841",
            "disk /var at 93%",
        ] {
            assert!(matches!(redact(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn context_around_a_secret_survives() {
        let out = redact("login failed for https://bob:pw123456@host/x with code 401");
        assert_eq!(
            out,
            "login failed for https://bob:[REDACTED]@host/x with code 401"
        );
    }

    #[test]
    fn json_values_under_secret_keys_are_replaced_whole() {
        let mut v = serde_json::json!({
            "summary": "token=abc123456 in log",
            "db_password": "plain words",
            "nested": [{"api_key": 42}],
            "ok": "fine",
        });
        assert!(redact_json(&mut v));
        let s = v.to_string();
        assert!(!s.contains("abc123456") && !s.contains("plain words") && !s.contains("42"));
        assert!(s.contains("fine"));
    }
}
