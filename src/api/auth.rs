//! `/api/v1/auth/…`: who the caller is, and sign-in links exchanged for a session token.
//!
//! `orrery token --login-url` prints a link holding a short-lived token whose only use is
//! `POST /api/v1/auth/login`, once: the dashboard trades it for an API token and forgets
//! the link. "Once" is per replica (the used ids live in memory until they expire).

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{json_body, AsViewer, Authorized, RawBody};
use crate::api::AppState;
use crate::token::Role;

/// Most sign-in link ids remembered at once; more answer 503 until old ones expire.
const MAX_USED_LOGINS: usize = 100_000;
/// Longest session a sign-in link may grant.
const MAX_SESSION_SECS: u64 = 30 * 86_400;

/// Sign-in link ids already exchanged, with their expiry (Unix seconds).
#[derive(Default, Debug)]
pub struct UsedLogins {
    used: Mutex<HashMap<String, u64>>,
}

impl UsedLogins {
    /// Marks `jti` used; `Ok(false)` when it already was.
    fn claim(&self, jti: &str, exp: u64, now: u64) -> ApiResult<bool> {
        let mut used = crate::sync::lock(&self.used);
        if used.len() >= MAX_USED_LOGINS / 2 {
            used.retain(|_, exp| *exp >= now);
        }
        if used.contains_key(jti) {
            return Ok(false);
        }
        if used.len() >= MAX_USED_LOGINS {
            return Err(ApiError::Busy("too many sign-ins at once".into()));
        }
        used.insert(jti.to_owned(), exp);
        Ok(true)
    }
}

/// Body of `/api/v1/auth/login`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The token of a sign-in link (`orrery token --login-url`).
    pub login_token: String,
}

/// Answer of `/api/v1/auth/login`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// An API token.
    pub token: String,
    /// Who it is for.
    pub sub: String,
    /// `viewer`, `operator` or `admin`.
    #[schema(value_type = String)]
    pub role: Role,
    /// Its expiry.
    pub expires_at: String,
}

/// `/api/v1/auth/whoami`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WhoAmI {
    /// Who the token is for.
    pub sub: String,
    /// `viewer`, `operator` or `admin`.
    #[schema(value_type = String)]
    pub role: Role,
    /// Its expiry; null when authentication is off (the implied token never expires).
    pub expires_at: Option<String>,
    /// Whether authentication is on.
    pub auth: bool,
    /// The projects the token may see; null for every project.
    pub projects: Option<Vec<String>>,
    /// The topologies the token may see; null for every topology.
    pub topologies: Option<Vec<String>>,
}

/// `POST /api/v1/auth/login`: body `{"login_token"}` from a sign-in link; answers
/// `{"token","sub","role","expires_at"}` once per link.
#[utoipa::path(post, path = "/auth/login", operation_id = "post_auth_login", tag = "auth", request_body = LoginRequest, responses((status = 200, description = "OK", body = Session), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 400, description = "malformed body", body = crate::api::error::ErrorBody), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 404, description = "not found", body = crate::api::error::ErrorBody), (status = 413, description = "body too large", body = crate::api::error::ErrorBody), (status = 503, description = "the bus or database is unavailable, or `Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn login(State(state): State<AppState>, body: RawBody) -> ApiResult<Json<Session>> {
    let req: LoginRequest = json_body(&body, 8 * 1024, r#"{"login_token": string}"#)?;
    if !state.auth.enabled() {
        return Err(ApiError::NotFound(
            "sign-in (authentication is disabled)".into(),
        ));
    }
    let claims = state.auth.verify_login(&req.login_token)?;
    let now = crate::window::now_ms() as u64 / 1000;
    let jti = claims.jti.as_deref().unwrap_or_default();
    if !state.logins.claim(jti, claims.exp, now)? {
        return Err(ApiError::Unauthorized("this sign-in link was already used"));
    }
    let ttl = claims
        .session_secs
        .unwrap_or(3_600)
        .clamp(60, MAX_SESSION_SECS);
    let token = state
        .auth
        .mint(&claims, ttl)?
        .ok_or_else(|| ApiError::NotFound("sign-in".into()))?;
    Ok(Json(Session {
        token,
        sub: claims.sub,
        role: claims.role,
        expires_at: crate::window::format_unix_ms(((now + ttl) * 1000) as i64),
    }))
}

/// `GET /api/v1/auth/whoami`: the caller's `sub`, `role` and expiry, and whether
/// authentication is on (the dashboard shows only what the role may do).
#[utoipa::path(get, path = "/auth/whoami", operation_id = "get_auth_whoami", tag = "auth", security(("bearer" = ["viewer"])), params(("Orrery-Min-Seq" = Option<String>, Header, description = "STREAM:seq[,STREAM:seq…]: answer once this replica has projected at least that far")), responses((status = 200, description = "OK", body = WhoAmI), (status = 422, description = "a parameter is malformed or out of range (named in the body)", body = crate::api::error::ErrorBody), (status = 401, description = "no, malformed or expired credentials", body = crate::api::error::ErrorBody), (status = 403, description = "the role is too low", body = crate::api::error::ErrorBody), (status = 503, description = "`Orrery-Min-Seq` was not reached in time (with `Retry-After`)", body = crate::api::error::ErrorBody)))]
pub async fn whoami(Authorized(claims): AsViewer, State(state): State<AppState>) -> Json<WhoAmI> {
    let expires_at = (claims.exp != u64::MAX)
        .then(|| crate::window::format_unix_ms(claims.exp.saturating_mul(1000) as i64));
    Json(WhoAmI {
        sub: claims.sub,
        role: claims.role,
        expires_at,
        auth: state.auth.enabled(),
        projects: claims.projects,
        topologies: claims.topologies,
    })
}

/// How a user may sign in to the dashboard.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInOptions {
    /// Whether authentication is on at all (off: everyone is admin).
    pub auth: bool,
    /// Whether a pasted built-in token or a sign-in link works (a JWT secret is set).
    pub token: bool,
    /// The operator's OpenID provider, when the dashboard may sign in with it
    /// (`--auth-client-id`); null otherwise.
    pub oidc: Option<ProviderSignIn>,
}

/// What the dashboard needs for the authorization code flow with PKCE.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSignIn {
    /// The provider's issuer URL (shown to the user).
    pub issuer: String,
    /// The dashboard's public client id at the provider.
    pub client_id: String,
    /// Where the user is sent to sign in.
    pub authorization_endpoint: String,
    /// Where the code is traded for tokens.
    pub token_endpoint: String,
    /// Where the user is sent to sign out at the provider; null when it has no such endpoint.
    pub end_session_endpoint: Option<String>,
    /// Scopes to ask for.
    pub scope: String,
    /// The resource indicator (RFC 8707) naming Orrery, so the access token's `aud` is one
    /// Orrery accepts: the first `--auth-audience`.
    pub resource: String,
}

/// `GET /api/v1/auth/providers`: how to sign in (no credentials needed: the sign-in page
/// asks before anyone has a token).
#[utoipa::path(get, path = "/auth/providers", operation_id = "get_auth_providers", tag = "auth", responses((status = 200, description = "OK", body = SignInOptions), (status = 503, description = "the identity provider's discovery document cannot be read", body = crate::api::error::ErrorBody)))]
pub async fn providers(State(state): State<AppState>) -> ApiResult<Json<SignInOptions>> {
    let oidc = match state.auth.oidc() {
        Some(oidc) if oidc.config().client_id.is_some() => {
            let d = oidc.discovery().await.map_err(|e| {
                tracing::warn!(error = %format!("{e:#}"), "reading the OpenID provider's discovery document failed");
                ApiError::Unavailable("the identity provider cannot be reached; retry shortly".into())
            })?;
            let config = oidc.config();
            let (Some(authorization_endpoint), Some(token_endpoint)) =
                (d.authorization_endpoint.clone(), d.token_endpoint.clone())
            else {
                return Err(ApiError::Unavailable(
                    "the identity provider's discovery document names no authorization or token endpoint".into(),
                ));
            };
            Some(ProviderSignIn {
                issuer: d.issuer.clone(),
                client_id: config.client_id.clone().unwrap_or_default(),
                authorization_endpoint,
                token_endpoint,
                end_session_endpoint: d.end_session_endpoint.clone(),
                scope: "openid".into(),
                resource: config.audiences.first().cloned().unwrap_or_default(),
            })
        }
        _ => None,
    };
    Ok(Json(SignInOptions {
        auth: state.auth.enabled(),
        token: state.auth.accepts_builtin(),
        oidc,
    }))
}

/// The origins the dashboard calls to sign in with the provider (its issuer and token
/// endpoint), for the page's Content-Security-Policy; none without dashboard sign-in.
pub fn provider_origins(state: &AppState) -> Vec<String> {
    let Some(oidc) = state.auth.oidc().filter(|o| o.config().client_id.is_some()) else {
        return Vec::new();
    };
    let discovered = oidc.discovered_now();
    let urls = [
        oidc.config().issuer.clone(),
        discovered.and_then(|d| d.token_endpoint.clone()),
    ];
    let mut origins: Vec<String> = urls
        .iter()
        .flatten()
        .filter_map(|u| reqwest::Url::parse(u).ok())
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
        .collect();
    origins.dedup();
    origins
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_id_is_claimed_once_and_forgotten_after_expiry() {
        let used = UsedLogins::default();
        assert!(used.claim("a", 100, 50).unwrap());
        assert!(!used.claim("a", 100, 50).unwrap());
        assert!(used.claim("b", 100, 50).unwrap());
        for i in 0..MAX_USED_LOGINS / 2 {
            used.claim(&format!("x{i}"), 10, 5).unwrap();
        }
        // Once the map is half full, ids past their expiry are pruned.
        assert!(used.claim("late", 200, 150).is_ok());
        assert!(used.used.lock().unwrap().len() < MAX_USED_LOGINS / 2);
    }
}
