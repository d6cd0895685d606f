//! Bearer JWT authentication (HS256) and role checks.
//!
//! Handlers ask for a role by taking [`Viewer`], [`Operator`] or [`Admin`] as their first
//! extractor, so authentication runs before any parameter is looked at and a caller without a
//! token learns nothing about what exists.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderValue};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::config::Secret;

/// Roles, ordered: each one can do what the ones before it can.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads read models and streams.
    Viewer,
    /// Also enqueues mutations and posts alerts.
    Operator,
    /// Also sees dead letters and orders rollbacks.
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role `{s}` (viewer, operator or admin)")),
        }
    }
}

/// The claims Orrery issues and accepts.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Claims {
    /// Who the token is for.
    pub sub: String,
    /// What they may do.
    pub role: Role,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

/// Verifies tokens, or waves everyone through as admin when auth is disabled.
pub struct Authenticator {
    key: Option<DecodingKey>,
    validation: Validation,
}

impl Authenticator {
    /// `None` disables authentication (`--insecure-no-auth`).
    pub fn new(secret: Option<&Secret>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: secret.map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
            validation,
        }
    }

    /// Checks a raw token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let Some(key) = &self.key else {
            return Ok(Self::anonymous());
        };
        jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::Unauthorized("the token has expired")
                }
                _ => ApiError::Unauthorized("the token is invalid"),
            })
    }

    /// Claims from an `Authorization: Bearer` header.
    pub fn from_headers(&self, parts: &Parts) -> Result<Claims, ApiError> {
        match parts.headers.get(header::AUTHORIZATION) {
            Some(value) => self.from_header_value(value),
            None => self.missing("missing `Authorization: Bearer <token>` header"),
        }
    }

    /// The answer when a request carries no credentials: 401, or admin with auth disabled.
    pub fn missing(&self, why: &'static str) -> Result<Claims, ApiError> {
        match self.key {
            None => Ok(Self::anonymous()),
            Some(_) => Err(ApiError::Unauthorized(why)),
        }
    }

    /// Claims from the value of an `Authorization` header.
    pub fn from_header_value(&self, value: &HeaderValue) -> Result<Claims, ApiError> {
        if self.key.is_none() {
            return Ok(Self::anonymous());
        }
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized(
                "the Authorization header must be `Bearer <token>`",
            ))?;
        self.verify(token)
    }

    fn anonymous() -> Claims {
        Claims {
            sub: "anonymous".into(),
            role: Role::Admin,
            exp: u64::MAX,
        }
    }
}

/// Signs a token for `sub` with `role`, valid for `ttl_secs` from now.
pub fn mint(secret: &Secret, sub: &str, role: Role, ttl_secs: u64) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims {
        sub: sub.to_owned(),
        role,
        exp: now.saturating_add(ttl_secs),
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )?)
}

/// An authenticated caller holding at least role `MIN` (0 viewer, 1 operator, 2 admin).
#[derive(Debug, Clone)]
pub struct Authorized<const MIN: u8>(pub Claims);

/// Any authenticated caller.
pub type Viewer = Authorized<0>;
/// Operator or admin.
pub type Operator = Authorized<1>;
/// Admin only.
pub type Admin = Authorized<2>;

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
        let claims = state.auth.from_headers(parts)?;
        let needed = role_of(MIN);
        if claims.role < needed {
            return Err(ApiError::Forbidden(needed));
        }
        Ok(Self(claims))
    }
}
