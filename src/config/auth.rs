//! The API's identity sources: the built-in HS256 secret and an OpenID provider.

use std::time::Duration;

use anyhow::{bail, Context};

use super::{bounded, list, Secret, Settings, MIN_JWT_SECRET_LEN};
use crate::token::{oidc::check_url, OidcConfig, Role};

/// Longest a value in `--auth-roles` or `--auth-role-claim` may be.
const MAX_NAME_LEN: usize = 256;

impl Settings {
    /// The API's identity sources: the HS256 secret and the OpenID provider, either or both;
    /// neither only with auth disabled (or for commands that serve no API, when
    /// `needs_auth` is false).
    pub(super) fn auth(
        &self,
        needs_auth: bool,
    ) -> anyhow::Result<(Option<Secret>, Option<OidcConfig>)> {
        let insecure = self.insecure_no_auth.unwrap_or(false);
        let oidc = self.oidc()?;
        if insecure && oidc.is_some() {
            bail!("--insecure-no-auth turns authentication off; it cannot go with --auth-issuer or --auth-jwks-url");
        }
        let secret = match (&self.jwt_secret, &self.jwt_secret_file) {
            (Some(_), Some(_)) => bail!("give either --jwt-secret or --jwt-secret-file, not both"),
            (Some(s), None) => Some(s.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading JWT secret file {}", path.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let secret = match (secret, insecure) {
            (Some(s), _) if s.len() < MIN_JWT_SECRET_LEN => bail!(
                "the JWT secret is {} bytes; use at least {MIN_JWT_SECRET_LEN} random bytes \
                 (e.g. `openssl rand -hex 32`)",
                s.len()
            ),
            (Some(s), _) => Some(Secret::new(s)),
            (None, true) => None,
            (None, false) if !needs_auth || oidc.is_some() => None,
            (None, false) => bail!(
                "no JWT secret: set ORRERY_JWT_SECRET (or --jwt-secret / --jwt-secret-file), \
                 or an OpenID provider (--auth-issuer), or pass --insecure-no-auth for local \
                 development"
            ),
        };
        Ok((secret, oidc))
    }

    /// The OpenID provider's settings, when `--auth-issuer` or `--auth-jwks-url` is set.
    fn oidc(&self) -> anyhow::Result<Option<OidcConfig>> {
        let issuer = self.auth_issuer.clone().filter(|s| !s.is_empty());
        let jwks_url = self.auth_jwks_url.clone().filter(|s| !s.is_empty());
        if issuer.is_none() && jwks_url.is_none() {
            let stray = [
                ("auth-audience", self.auth_audience.is_some()),
                ("auth-role-claim", self.auth_role_claim.is_some()),
                ("auth-roles", self.auth_roles.is_some()),
                ("auth-ca", self.auth_ca.is_some()),
                (
                    "auth-jwks-cooldown-secs",
                    self.auth_jwks_cooldown_secs.is_some(),
                ),
                ("auth-client-id", self.auth_client_id.is_some()),
            ];
            if let Some((flag, _)) = stray.iter().find(|(_, set)| *set) {
                bail!("--{flag} is set but no OpenID provider is: add --auth-issuer (or --auth-jwks-url)");
            }
            return Ok(None);
        }
        if let Some(url) = &issuer {
            check_url("auth-issuer", url)?;
        }
        if let Some(url) = &jwks_url {
            check_url("auth-jwks-url", url)?;
        }
        let audiences = list(self.auth_audience.as_deref());
        if audiences.is_empty() {
            bail!(
                "--auth-audience: the provider's tokens must name Orrery as their audience; \
                 give the `aud` value(s) to accept (e.g. the client id the provider issues them for)"
            );
        }
        if let Some(bad) = audiences.iter().find(|a| a.len() > MAX_NAME_LEN) {
            let start: String = bad.chars().take(16).collect();
            bail!("--auth-audience `{start}…`: accepts values of up to {MAX_NAME_LEN} bytes");
        }
        let claim = self.auth_role_claim.as_deref().unwrap_or("orrery_role");
        let role_claim: Vec<String> = claim.split('.').map(str::to_owned).collect();
        if claim.len() > MAX_NAME_LEN || role_claim.iter().any(String::is_empty) {
            bail!(
                "--auth-role-claim `{}`: accepts a claim name or a dotted path such as \
                 realm_access.roles",
                claim.escape_debug()
            );
        }
        if let Some(path) = self.auth_ca.as_ref().filter(|p| !p.is_file()) {
            bail!(
                "--auth-ca {}: accepts the path of a readable file",
                path.display()
            );
        }
        let client_id = self.auth_client_id.clone().filter(|s| !s.is_empty());
        if let Some(id) = &client_id {
            if issuer.is_none() {
                bail!("--auth-client-id: dashboard sign-in needs --auth-issuer (its discovery document names the endpoints)");
            }
            if id.len() > MAX_NAME_LEN || id.chars().any(char::is_control) {
                bail!("--auth-client-id: accepts a client id of up to {MAX_NAME_LEN} printable characters");
            }
        }
        Ok(Some(OidcConfig {
            issuer,
            jwks_url,
            audiences,
            role_claim,
            roles: self.role_map()?,
            cooldown: Duration::from_secs(bounded(
                "auth-jwks-cooldown-secs",
                self.auth_jwks_cooldown_secs,
                60,
                1,
                3_600,
            )?),
            ca: self.auth_ca.clone(),
            client_id,
        }))
    }

    /// `--auth-roles`: `value=role` pairs.
    fn role_map(&self) -> anyhow::Result<Vec<(String, Role)>> {
        let raw = self
            .auth_roles
            .as_deref()
            .unwrap_or("viewer=viewer,operator=operator,admin=admin");
        let pairs = list(Some(raw));
        if pairs.is_empty() {
            bail!("--auth-roles: give at least one `value=role` pair");
        }
        pairs
            .iter()
            .map(|pair| {
                let parsed = pair.rsplit_once('=').and_then(|(value, role)| {
                    let value = value.trim();
                    let ok = !value.is_empty() && value.len() <= MAX_NAME_LEN;
                    ok.then(|| {
                        role.trim()
                            .parse::<Role>()
                            .ok()
                            .map(|r| (value.to_owned(), r))
                    })
                    .flatten()
                });
                parsed.with_context(|| {
                    format!(
                        "--auth-roles `{}`: accepts `value=role` pairs separated by commas, each \
                         role viewer, operator or admin (e.g. orrery-admins=admin,staff=viewer)",
                        pair.escape_debug()
                    )
                })
            })
            .collect()
    }
}
