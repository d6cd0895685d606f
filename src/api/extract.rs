//! Turning a request into typed values: the caller ([`Authorized`]), the query string
//! ([`Params`]) and a JSON body ([`json_body`]). Every mistake becomes the [`ApiError`] a
//! client should see.
//!
//! Handlers ask for a role by taking [`AsViewer`], [`AsOperator`] or [`AsAdmin`] as their
//! first extractor, so authentication runs before any parameter is looked at and a caller
//! without a token learns nothing about what exists.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderMap, HeaderValue};
use serde::Deserialize;

use crate::api::error::{ApiError, ApiResult};
use crate::api::AppState;
use crate::bus::subjects;
use crate::token::{Authenticator, Claims, Role};
use crate::window::{now_ms, parse_duration};

/// An authenticated caller holding at least role `MIN` (0 viewer, 1 operator, 2 admin).
#[derive(Debug, Clone)]
pub struct Authorized<const MIN: u8>(pub Claims);

/// Any authenticated caller.
pub type AsViewer = Authorized<0>;
/// An operator or an admin.
pub type AsOperator = Authorized<1>;
/// An admin only.
pub type AsAdmin = Authorized<2>;

const fn role_of(min: u8) -> Role {
    match min {
        0 => Role::Viewer,
        1 => Role::Operator,
        _ => Role::Admin,
    }
}

impl<const MIN: u8> FromRequestParts<AppState> for Authorized<MIN> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let claims = match parts.headers.get(header::AUTHORIZATION) {
            Some(value) => bearer(&state.auth, value).await?,
            None => state
                .auth
                .missing("missing `Authorization: Bearer <token>` header")?,
        };
        let needed = role_of(MIN);
        if claims.role < needed {
            return Err(ApiError::Forbidden(needed));
        }
        // What only admins may do (dead letters, the digest, rollbacks) spans every project
        // and topology, so no scoped token reaches it, whatever its role.
        if needed == Role::Admin && claims.scoped() {
            return Err(ApiError::ForbiddenWhy(
                "this route spans the whole fleet: it needs an admin token without a project or topology scope",
            ));
        }
        Ok(Self(claims))
    }
}

/// Claims from the value of an `Authorization` header.
pub async fn bearer(auth: &Authenticator, value: &HeaderValue) -> ApiResult<Claims> {
    Ok(auth.verify_bearer(value.to_str().ok()).await?)
}

/// The `window` forms, exactly: one unit within 24 h, or hours (0–23), minutes and seconds
/// (0–59) in that order, not all zero. Every match is more than 0 and at most 24 h; the
/// routes document this same pattern (a test holds them equal).
pub const WINDOW_PATTERN: &str = r"^(0*([1-9][0-9]{0,3}|[1-7][0-9]{4}|8[0-5][0-9]{3}|86[0-3][0-9]{2}|86400)s|0*([1-9][0-9]{0,2}|1[0-3][0-9]{2}|14[0-3][0-9]|1440)m|0*([1-9]|1[0-9]|2[0-4])h|0*1d|0*([1-9]|1[0-9]|2[0-3])h0*[1-5]?[0-9]m|0*(1?[0-9]|2[0-3])h0*([1-9]|[1-5][0-9])m|0*([1-9]|1[0-9]|2[0-3])h0*[1-5]?[0-9]s|0*(1?[0-9]|2[0-3])h0*([1-9]|[1-5][0-9])s|0*([1-9]|[1-5][0-9])m0*[1-5]?[0-9]s|0*[1-5]?[0-9]m0*([1-9]|[1-5][0-9])s|0*([1-9]|1[0-9]|2[0-3])h0*[1-5]?[0-9]m0*[1-5]?[0-9]s|0*(1?[0-9]|2[0-3])h0*([1-9]|[1-5][0-9])m0*[1-5]?[0-9]s|0*(1?[0-9]|2[0-3])h0*[1-5]?[0-9]m0*([1-9]|[1-5][0-9])s)$";

/// Decoded query parameters; unknown ones are ignored, repeated known ones rejected. As an
/// extractor it never fails: each accessor names the parameter it finds wrong.
pub struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::parse(parts.uri.query()))
    }
}

impl Params {
    /// Decodes a raw query string (`None` when the URL had none).
    pub fn parse(query: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The value of `name`, if given once; 422 if given more than once.
    pub fn get(&self, name: &'static str) -> Result<Option<&str>, ApiError> {
        let mut values = self.0.iter().filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(ApiError::invalid(name, "the parameter once"));
        }
        Ok(first)
    }

    /// A single NATS subject token (an id), `None` when absent; 422 for anything else.
    pub fn token(&self, name: &'static str) -> Result<Option<&str>, ApiError> {
        let value = self.get(name)?;
        if value.is_some_and(|v| !subjects::is_token(v)) {
            return Err(ApiError::invalid(name, subjects::TOKEN_FORM));
        }
        Ok(value)
    }

    /// An integer in `min..=max`, `default` when absent.
    pub fn int(
        &self,
        name: &'static str,
        min: i64,
        max: i64,
        default: i64,
    ) -> Result<i64, ApiError> {
        match self.get(name)? {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| ApiError::invalid(name, format!("an integer from {min} to {max}"))),
        }
    }

    /// The start (Unix ms) of the `window` of a stats history: a duration back from now,
    /// default 2 h, at most 24 h.
    pub fn window_start(&self) -> ApiResult<i64> {
        const FORM: &str = "one unit (s, m, h or d) such as 30m or 2h, or hours, minutes and \
                            seconds in that order such as 1h30m; greater than 0 and at most 24h";
        // A constant pattern, compiled once; a unit test compiles it too.
        static FORMS: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(WINDOW_PATTERN).expect("WINDOW_PATTERN is a valid regex")
        });
        let w = match self.get("window")? {
            None => Duration::from_secs(2 * 3_600),
            Some(s) => Some(s)
                .filter(|s| FORMS.is_match(s))
                .and_then(|s| parse_duration(s).ok())
                .ok_or_else(|| ApiError::invalid("window", FORM))?,
        };
        Ok(now_ms() - w.as_millis() as i64)
    }

    /// `true`/`false`, `None` when absent.
    pub fn bool(&self, name: &'static str) -> Result<Option<bool>, ApiError> {
        match self.get(name)? {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(_) => Err(ApiError::invalid(name, "true or false")),
        }
    }
}

/// A request body as axum hands it over: the bytes, or the rejection of a body over
/// [`crate::api::MAX_BODY_BYTES`].
pub type RawBody = Result<Bytes, BytesRejection>;

/// The bytes of a body of at most `limit` bytes; 413 past it.
pub fn body_bytes(body: &RawBody, limit: usize) -> ApiResult<&Bytes> {
    body.as_ref()
        .ok()
        .filter(|b| b.len() <= limit)
        .ok_or(ApiError::TooLarge(limit))
}

/// Parses JSON bytes; 400 naming `form`, the accepted shape, when they do not parse.
pub fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], form: &str) -> ApiResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("body must be {form}: {e}")))
}

/// Reads a JSON body of at most `limit` bytes ([`body_bytes`], then [`parse_json`]).
pub fn json_body<'a, T: Deserialize<'a>>(
    body: &'a RawBody,
    limit: usize,
    form: &str,
) -> ApiResult<T> {
    parse_json(body_bytes(body, limit)?, form)
}

/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// The `Idempotency-Key` header, if sent; 400 unless it is 1 to 128 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<&str>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
            .map(Some)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_pattern_is_the_documented_one_and_exactly_the_forms_it_names() {
        let doc = crate::api::openapi_document();
        for path in [
            "/api/v1/system/stats/history",
            "/api/v1/workloads/{wid}/stats/history",
        ] {
            let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
            let window = params.iter().find(|p| p["name"] == "window").unwrap();
            assert_eq!(window["schema"]["pattern"], WINDOW_PATTERN, "{path}");
        }
        let re = regex::Regex::new(WINDOW_PATTERN).unwrap();
        for (unit, secs) in [("s", 1u64), ("m", 60), ("h", 3_600), ("d", 86_400)] {
            for n in 0..=90_000u64 {
                let ok = n > 0 && n * secs <= 86_400;
                for s in [format!("{n}{unit}"), format!("00{n}{unit}")] {
                    assert_eq!(re.is_match(&s), ok, "{s}");
                }
            }
        }
        for h in 0..=26u64 {
            for m in 0..=61u64 {
                for s in 0..=61u64 {
                    let forms = [
                        (format!("{h}h{m}m"), h <= 23 && m <= 59 && h + m > 0),
                        (format!("{h}h{s}s"), h <= 23 && s <= 59 && h + s > 0),
                        (format!("{m}m{s}s"), m <= 59 && s <= 59 && m + s > 0),
                        (
                            format!("{h}h{m}m{s}s"),
                            h <= 23 && m <= 59 && s <= 59 && h + m + s > 0,
                        ),
                    ];
                    for (text, ok) in forms {
                        assert_eq!(re.is_match(&text), ok, "{text}");
                        if ok {
                            let d = parse_duration(&text).unwrap();
                            assert!(d > Duration::ZERO && d <= Duration::from_secs(86_400));
                        }
                    }
                }
            }
        }
        for odd in [
            "", "h", "1", "1h30", "30m1h", "1h1h", "1H", "2d", "24h0m", " 1h", "1h ", "-1h",
            "1d1h", "1s1m",
        ] {
            assert!(!re.is_match(odd), "{odd:?}");
        }
    }
}
