//! Parsing of time windows (`15m`, `1h`, `7d`, `1h30m`) and RFC 3339 instants.
//!
//! One parser serves every endpoint; each endpoint states its own bounds, so `since=8d` and
//! `window=25h` are rejected with the same kind of message.

use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Why a duration string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    /// Empty, a bad unit, a sign, or stray characters.
    #[error("expected a number followed by s, m, h or d (e.g. 30m)")]
    Syntax,
    /// Digits beyond what fits.
    #[error("the number is too large")]
    Overflow,
    /// Zero length.
    #[error("must be greater than zero")]
    Zero,
}

fn unit_secs(unit: u8) -> Option<u64> {
    match unit {
        b's' => Some(1),
        b'm' => Some(60),
        b'h' => Some(3_600),
        b'd' => Some(86_400),
        _ => None,
    }
}

/// Parses one or more `<digits><unit>` parts (`90s`, `1h30m`); units s, m, h, d.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return Err(DurationError::Syntax);
    }
    let mut total: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let mut n: u64 = 0;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(bytes[i] - b'0')))
                .ok_or(DurationError::Overflow)?;
            i += 1;
        }
        if i == start || i == bytes.len() {
            return Err(DurationError::Syntax);
        }
        let secs = unit_secs(bytes[i]).ok_or(DurationError::Syntax)?;
        total = n
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or(DurationError::Overflow)?;
        i += 1;
    }
    if total == 0 {
        return Err(DurationError::Zero);
    }
    Ok(Duration::from_secs(total))
}

/// Parses exactly one `<digits><unit>` part (`^\d+[smhd]$`), as the results badge accepts.
pub fn parse_single_unit(s: &str) -> Result<Duration, DurationError> {
    let digits = s.len().saturating_sub(1);
    if s.len() < 2 || !s.as_bytes()[..digits].iter().all(u8::is_ascii_digit) {
        return Err(DurationError::Syntax);
    }
    parse_duration(s)
}

/// Parses an RFC 3339 timestamp into Unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &Rfc3339).ok().map(to_unix_ms)
}

/// Unix milliseconds of an instant (without 128-bit division: this runs once per message).
pub fn to_unix_ms(t: OffsetDateTime) -> i64 {
    t.unix_timestamp() * 1_000 + i64::from(t.millisecond())
}

/// An RFC 3339 timestamp field, decoded straight to Unix milliseconds from the borrowed JSON
/// string, so event decoding allocates nothing for times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixMs(pub i64);

impl<'de> serde::Deserialize<'de> for UnixMs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = UnixMs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an RFC 3339 time such as 2026-11-22T10:00:00Z")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<UnixMs, E> {
                parse_rfc3339_ms(v)
                    .map(UnixMs)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_unix_ms(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).unwrap_or_default()
}

/// The current wall-clock time in Unix milliseconds (for query windows, never for rows).
pub fn now_ms() -> i64 {
    to_unix_ms(OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_single_and_compound_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_single_unit("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_single_unit("1h30m"), Err(DurationError::Syntax));
    }

    #[test]
    fn rejects_malformed_zero_and_overflow() {
        for bad in [
            "", "h", "1", "-1h", "+1h", "1w", "1 h", "1H", "1.5h", "h1", "１h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_duration("0h"), Err(DurationError::Zero));
        assert_eq!(
            parse_duration("99999999999999999999999h"),
            Err(DurationError::Overflow)
        );
        assert_eq!(
            parse_duration("9999999999999999d"),
            Err(DurationError::Overflow)
        );
    }

    #[test]
    fn unix_ms_fields_decode_from_json_strings_only() {
        let v: UnixMs = serde_json::from_str(r#""1970-01-01T00:00:01.5Z""#).unwrap();
        assert_eq!(v, UnixMs(1_500));
        let pre_epoch: UnixMs = serde_json::from_str(r#""1969-12-31T23:59:59.250Z""#).unwrap();
        assert_eq!(pre_epoch, UnixMs(-750));
        for bad in [r#""noon""#, "12", "null", r#""2026-13-01T00:00:00Z""#] {
            assert!(serde_json::from_str::<UnixMs>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_and_parses_instants() {
        let ms = parse_rfc3339_ms("2026-11-22T10:00:01.250+01:00").unwrap();
        assert_eq!(format_unix_ms(ms), "2026-11-22T09:00:01.250Z");
        assert!(parse_rfc3339_ms("yesterday").is_none());
    }
}
