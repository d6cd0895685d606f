//! The API's one error type: every failure maps to a status and a JSON body in one place.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::bus::publish::PublishError;
use crate::token::{Role, TokenError};

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// Every error's body: a stable code and a message; 422s also name the parameter and its
/// form, 503 `behind` says where the replica stands. A member that does not apply is absent.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// e.g. `invalid_parameter`, `not_found`, `unauthorized`, `behind`.
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
    /// The offending parameter (422 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub parameter: Option<String>,
    /// The accepted form (422 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub expected: Option<String>,
    /// The stream that has not reached the requested sequence (503 `behind` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub stream: Option<String>,
    /// Where that stream's projection stands (503 `behind` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub checkpoint: Option<u64>,
    /// The sequence asked for (503 `behind` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub wanted: Option<u64>,
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing, malformed, badly signed or expired credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Authenticated, but the role is too low.
    #[error("this needs the {0} role or higher")]
    Forbidden(Role),
    /// Authenticated, but refused for the reason given.
    #[error("{0}")]
    ForbiddenWhy(&'static str),
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The named thing does not exist, with an `error` code of its own (404).
    #[error("{1}")]
    NotFoundAs(&'static str, String),
    /// A query parameter is malformed or out of range.
    #[error("invalid parameter `{parameter}`: expected {expected}")]
    InvalidParam {
        /// The offending parameter.
        parameter: &'static str,
        /// The accepted form.
        expected: String,
    },
    /// The request is malformed in another way.
    #[error("{0}")]
    BadRequest(String),
    /// A dependency (bus, database) is not available right now.
    #[error("{0}")]
    Unavailable(String),
    /// The request conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// The request conflicts with the current state, with an `error` code of its own (409).
    #[error("{1}")]
    ConflictAs(&'static str, String),
    /// The caller holds too many of something (429).
    #[error("{0}")]
    TooMany(String),
    /// The server is at capacity; try again shortly (503 with Retry-After).
    #[error("{0}")]
    Busy(String),
    /// This replica has not yet committed what the request asked to read (503, Retry-After).
    #[error("stream {stream} is at {checkpoint} on this replica, behind the {wanted} asked for")]
    Behind {
        /// The stream that is behind.
        stream: &'static str,
        /// Where this replica's projection of it stands.
        checkpoint: u64,
        /// The sequence the request named.
        wanted: u64,
    },
    /// The request body is over the limit.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    /// A bug or an I/O failure; details go to the log, not the client.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            // Every reader busy for the whole acquire timeout: overload, not a bug.
            sqlx::Error::PoolTimedOut => {
                Self::Busy("the database is busy; try again shortly".into())
            }
            e => Self::Internal(anyhow::Error::new(e).context("database query")),
        }
    }
}

impl ApiError {
    /// A 422 naming the parameter and its accepted form.
    pub fn invalid(parameter: &'static str, expected: impl Into<String>) -> Self {
        Self::InvalidParam {
            parameter,
            expected: expected.into(),
        }
    }

    /// The status and the `error` code of the JSON body, in one place.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) | Self::ForbiddenWhy(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::NotFoundAs(code, _) => (StatusCode::NOT_FOUND, code),
            Self::InvalidParam { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_parameter"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Self::Behind { .. } => (StatusCode::SERVICE_UNAVAILABLE, "behind"),
            Self::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::ConflictAs(code, _) => (StatusCode::CONFLICT, code),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::NoRole => Self::ForbiddenWhy(e.message()),
            e => Self::Unauthorized(e.message()),
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let plain = |message: String| ErrorBody {
            error: code.to_owned(),
            message,
            ..ErrorBody::default()
        };
        let body = match &self {
            Self::InvalidParam {
                parameter,
                expected,
            } => ErrorBody {
                parameter: Some((*parameter).to_owned()),
                expected: Some(expected.clone()),
                ..plain(self.to_string())
            },
            Self::Behind {
                stream,
                checkpoint,
                wanted,
            } => ErrorBody {
                stream: Some((*stream).to_owned()),
                checkpoint: Some(*checkpoint),
                wanted: Some(*wanted),
                ..plain(self.to_string())
            },
            Self::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed");
                plain("internal error (see server logs)".to_owned())
            }
            // Refusals name the reason (the request span names the path), never the token.
            // A 401 is what any stranger gets: debug, so a scan does not flood the log.
            Self::Unauthorized(reason) => {
                tracing::debug!(reason, "request refused: not authenticated");
                plain((*reason).to_owned())
            }
            Self::Forbidden(_) | Self::ForbiddenWhy(_) => {
                let reason = self.to_string();
                tracing::info!(reason, "request refused: not permitted");
                plain(reason)
            }
            other => plain(other.to_string()),
        };
        let mut response = (status, Json(body)).into_response();
        if matches!(
            self,
            Self::Busy(_) | Self::Behind { .. } | Self::Unavailable(_)
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"orrery\""),
            );
        }
        response
    }
}
