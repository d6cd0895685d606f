//! Identity: the roles, the claims of an API token, and signing and checking tokens.
//!
//! Nothing here knows about HTTP: the API turns a [`TokenError`] into its 401 in one place
//! (`api::error`), and `orrery token`, the bench and the tests sign tokens with [`mint`].
//! Tokens from the operator's OpenID provider are checked by [`oidc`]; both kinds may be
//! accepted at once, told apart by their header's algorithm.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

pub mod oidc;

pub use oidc::{Oidc, OidcConfig};

/// The claim listing the projects a token may see (absent: all).
pub const PROJECTS_CLAIM: &str = "orrery_projects";
/// The claim listing the topologies a token may see (absent: all).
pub const TOPOLOGIES_CLAIM: &str = "orrery_topologies";

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
    /// `login` for a sign-in link's token, which is good for nothing but exchanging it once
    /// for a session token; absent on API tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// A sign-in link's id, so that it is used once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// A sign-in link's session length, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_secs: Option<u64>,
    /// The projects (alerts, work items, workloads) the token may see; `None` for all.
    #[serde(
        default,
        rename = "orrery_projects",
        skip_serializing_if = "Option::is_none"
    )]
    pub projects: Option<Vec<String>>,
    /// The topologies the token may see; `None` for all.
    #[serde(
        default,
        rename = "orrery_topologies",
        skip_serializing_if = "Option::is_none"
    )]
    pub topologies: Option<Vec<String>>,
}

impl Claims {
    /// API-token claims for `sub` with `role` until `exp`.
    pub fn new(sub: &str, role: Role, exp: u64) -> Self {
        Self {
            sub: sub.to_owned(),
            role,
            exp,
            purpose: None,
            jti: None,
            session_secs: None,
            projects: None,
            topologies: None,
        }
    }
}

impl Claims {
    /// A token for the same subject, role and scope, expiring at `exp` (Unix seconds).
    pub fn renewed(&self, exp: u64) -> Self {
        let mut claims = Self::new(&self.sub, self.role, exp);
        claims.projects.clone_from(&self.projects);
        claims.topologies.clone_from(&self.topologies);
        claims
    }

    /// The token's projects as a JSON array, for SQL's `json_each`; `None` for all.
    pub fn projects_json(&self) -> Option<String> {
        self.projects.as_deref().map(ids_json)
    }

    /// The token's topologies as a JSON array, for SQL's `json_each`; `None` for all.
    pub fn topologies_json(&self) -> Option<String> {
        self.topologies.as_deref().map(ids_json)
    }

    /// Whether the token may see project `project` (its alerts, groups and work items).
    pub fn sees_project(&self, project: &str) -> bool {
        self.projects
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p == project))
    }

    /// Whether the token may see topology `tid` (its state, mutations and live stream).
    pub fn sees_topology(&self, tid: &str) -> bool {
        self.topologies
            .as_ref()
            .is_none_or(|ts| ts.iter().any(|t| t == tid))
    }

    /// Whether the token is limited to some projects or topologies.
    pub fn scoped(&self) -> bool {
        self.projects.is_some() || self.topologies.is_some()
    }
}

/// Ids as a JSON array (for SQL's `json_each`).
pub fn ids_json(ids: &[String]) -> String {
    serde_json::Value::from(ids.to_vec()).to_string()
}

/// How long a sign-in link works.
pub const LOGIN_LINK_TTL_SECS: u64 = 300;
/// The `purpose` of a sign-in link's token.
const LOGIN: &str = "login";

/// Why credentials were refused; each reads as the message a caller is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// No credentials where some are required; says which were expected.
    Missing(&'static str),
    /// Credentials of the wrong shape; says the expected one.
    Malformed(&'static str),
    /// A well-formed, correctly signed token past its `exp`.
    Expired,
    /// A bad signature, algorithm or claim set.
    Invalid,
    /// A valid token from the identity provider that grants no Orrery role.
    NoRole,
}

impl TokenError {
    /// The message as a static string (what a 401 body carries).
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing(m) | Self::Malformed(m) => m,
            Self::Expired => "the token has expired",
            Self::Invalid => "the token is invalid",
            Self::NoRole => {
                "the identity provider grants this user no Orrery role (see --auth-role-claim \
                 and --auth-roles)"
            }
        }
    }
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for TokenError {}

/// Verifies tokens, or waves everyone through as admin when auth is disabled.
pub struct Authenticator {
    key: Option<DecodingKey>,
    /// Signs the session tokens sign-in links are exchanged for.
    signer: Option<EncodingKey>,
    validation: Validation,
    /// Tokens from the operator's OpenID provider, when configured.
    oidc: Option<Arc<Oidc>>,
}

impl Authenticator {
    /// Built-in HS256 tokens signed with `secret`, tokens from an OpenID provider, both, or
    /// (neither: `--insecure-no-auth`) no authentication at all.
    pub fn new(secret: Option<&Secret>, oidc: Option<Arc<Oidc>>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: secret.map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
            signer: secret.map(|s| EncodingKey::from_secret(s.expose().as_bytes())),
            validation,
            oidc,
        }
    }

    /// Whether tokens are checked at all.
    pub fn enabled(&self) -> bool {
        self.key.is_some() || self.oidc.is_some()
    }

    /// Whether the built-in HS256 tokens are accepted (a secret is configured).
    pub fn accepts_builtin(&self) -> bool {
        self.key.is_some()
    }

    /// The OpenID provider's verifier, when one is configured.
    pub fn oidc(&self) -> Option<&Arc<Oidc>> {
        self.oidc.as_ref()
    }

    /// Checks a raw API token and returns its claims: the provider's when its header names
    /// an asymmetric algorithm, else the built-in HS256 kind. A sign-in link's token is
    /// refused: it is only good for [`Self::verify_login`].
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if !self.enabled() {
            return Ok(Self::anonymous());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if Oidc::claims_token(&header) {
            return match &self.oidc {
                Some(oidc) => oidc.verify(token, &header).await,
                None => Err(TokenError::Invalid),
            };
        }
        let key = self.key.as_ref().ok_or(TokenError::Invalid)?;
        let claims = self.decode(key, token)?;
        match claims.purpose {
            None => Ok(claims),
            Some(_) => Err(TokenError::Invalid),
        }
    }

    /// Checks a sign-in link's token (the caller makes sure its `jti` is used once).
    pub fn verify_login(&self, token: &str) -> Result<Claims, TokenError> {
        let key = self.key.as_ref().ok_or(TokenError::Invalid)?;
        let claims = self.decode(key, token)?;
        match (&claims.purpose, &claims.jti) {
            (Some(p), Some(_)) if p == LOGIN => Ok(claims),
            _ => Err(TokenError::Invalid),
        }
    }

    fn decode(&self, key: &DecodingKey, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }

    /// Signs an API token valid `ttl_secs` (none without a secret).
    /// The token keeps `from`'s subject, role and scope.
    pub fn mint(&self, from: &Claims, ttl_secs: u64) -> anyhow::Result<Option<String>> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let claims = from.renewed(now_secs()?.saturating_add(ttl_secs));
        Ok(Some(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            signer,
        )?))
    }

    /// Checks the value of an `Authorization: Bearer <token>` header.
    pub async fn verify_bearer(&self, header: Option<&str>) -> Result<Claims, TokenError> {
        if !self.enabled() {
            return Ok(Self::anonymous());
        }
        let token = header
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(TokenError::Malformed(
                "the Authorization header must be `Bearer <token>`",
            ))?;
        self.verify(token).await
    }

    /// The answer when a request carries no credentials: refused with `why`, or admin with
    /// auth disabled.
    pub fn missing(&self, why: &'static str) -> Result<Claims, TokenError> {
        if self.enabled() {
            Err(TokenError::Missing(why))
        } else {
            Ok(Self::anonymous())
        }
    }

    fn anonymous() -> Claims {
        Claims::new("anonymous", Role::Admin, u64::MAX)
    }
}

fn now_secs() -> anyhow::Result<u64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())
}

fn sign(secret: &Secret, claims: &Claims) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )?)
}

/// Signs a token for `sub` with `role`, valid for `ttl_secs` from now.
pub fn mint(secret: &Secret, sub: &str, role: Role, ttl_secs: u64) -> anyhow::Result<String> {
    mint_scoped(secret, &Claims::new(sub, role, 0), ttl_secs)
}

/// Signs a token with `template`'s subject, role and scope, valid for `ttl_secs` from now.
pub fn mint_scoped(secret: &Secret, template: &Claims, ttl_secs: u64) -> anyhow::Result<String> {
    sign(
        secret,
        &template.renewed(now_secs()?.saturating_add(ttl_secs)),
    )
}

/// Signs a sign-in link's token: valid [`LOGIN_LINK_TTL_SECS`], exchanged once
/// (`POST /api/v1/auth/login`) for an API token of `session_secs`.
pub fn mint_login(
    secret: &Secret,
    sub: &str,
    role: Role,
    session_secs: u64,
) -> anyhow::Result<String> {
    mint_login_scoped(secret, &Claims::new(sub, role, 0), session_secs)
}

/// [`mint_login`] for `template`'s subject, role and scope, which the session keeps.
pub fn mint_login_scoped(
    secret: &Secret,
    template: &Claims,
    session_secs: u64,
) -> anyhow::Result<String> {
    let mut claims = template.renewed(now_secs()?.saturating_add(LOGIN_LINK_TTL_SECS));
    claims.purpose = Some(LOGIN.to_owned());
    claims.jti = Some(uuid::Uuid::new_v4().simple().to_string());
    claims.session_secs = Some(session_secs);
    sign(secret, &claims)
}
