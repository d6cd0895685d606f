//! Subject tokens: the ids that travel inside NATS subjects.

/// Longest id accepted in a subject token.
pub const MAX_TOKEN_LEN: usize = 128;

/// `true` when `s` is a single NATS token of `[A-Za-z0-9_-]`, 1 to 128 bytes long.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TOKEN_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The accepted form of a token, for error messages.
pub const TOKEN_FORM: &str = "1 to 128 characters of A-Z, a-z, 0-9, '_' or '-'";

/// Splits `subject` into exactly `N` dot-separated tokens, the first equal to `prefix`, and
/// every other one a valid id token.
pub fn split<'a, const N: usize>(subject: &'a str, prefix: &str) -> Option<[&'a str; N]> {
    let mut out = [""; N];
    let mut parts = subject.split('.');
    for slot in out.iter_mut() {
        *slot = parts.next()?;
    }
    if parts.next().is_some() || out[0] != prefix || !out[1..].iter().all(|t| is_token(t)) {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(is_token("agent-0042"));
        assert!(is_token("lab_EU"));
        for bad in ["", "a.b", "a b", "*", ">", "é", "a/b", &"x".repeat(129)] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn splits_exactly() {
        assert_eq!(
            split::<3>("result.traffic.agent-1", "result"),
            Some(["result", "traffic", "agent-1"])
        );
        assert_eq!(split::<3>("result.traffic", "result"), None);
        assert_eq!(split::<3>("result.traffic.a.b", "result"), None);
        assert_eq!(split::<3>("results.traffic.a", "result"), None);
        assert_eq!(split::<3>("result..a", "result"), None);
    }
}
