//! The forms a setting's value may take, checked the same way for every setting: a number
//! within bounds, a list of names, a browser origin.

use anyhow::bail;

/// `value` (or `default` when absent) when it lies in `lo..=hi`; otherwise the one-line error
/// naming `--flag` and what it accepts. Nothing is silently raised to a minimum.
pub(super) fn bounded<T: PartialOrd + std::fmt::Display + Copy>(
    flag: &str,
    value: Option<T>,
    default: T,
    lo: T,
    hi: T,
) -> anyhow::Result<T> {
    match value.unwrap_or(default) {
        v if v >= lo && v <= hi => Ok(v),
        v => bail!("--{flag} {v}: accepts {lo} to {hi}"),
    }
}

/// A comma-separated list of JetStream stream or bucket names (letters, digits, `_`, `-`).
pub(super) fn names(flag: &str, s: Option<&str>) -> anyhow::Result<Vec<String>> {
    let all = list(s);
    if let Some(bad) = all.iter().find(|n| !crate::bus::subjects::is_token(n)) {
        bail!(
            "--{flag} `{}`: accepts names separated by commas, each {}",
            bad.escape_debug(),
            crate::bus::subjects::TOKEN_FORM
        );
    }
    Ok(all)
}

/// Thirty days, the upper bound of the staleness and retention settings.
pub(super) const MONTH_SECS: u64 = 30 * 86_400;

/// Whether `s` is a browser origin as the `Origin` header carries it: `http` or `https`,
/// `://`, a host, an optional port, and nothing after.
pub(super) fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal keeps its colons inside brackets.
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (rest, None),
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[') {
        v6.strip_suffix(']')
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    matches!(scheme, "http" | "https")
        && host_ok
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
}

/// Splits a comma-separated list, dropping blanks.
pub(super) fn list(s: Option<&str>) -> Vec<String> {
    s.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect()
}
