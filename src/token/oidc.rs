//! Tokens from the operator's OpenID provider: its signing keys (JWKS) fetched and cached,
//! a token's signature and registered claims checked, and its claims mapped to a role and a
//! scope.
//!
//! Only the provider's published asymmetric keys are trusted: a token naming `alg: none`,
//! an HMAC algorithm, or carrying its own key (`jwk`, `jku`, `x5u`, `x5c`) is refused before
//! any key is looked at. An unknown `kid` refreshes the key set, but at most once per
//! cooldown, so a caller spraying made-up ids costs one fetch a minute, not one per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::{Claims, Role, TokenError};

/// Largest discovery document or key set read from the provider.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Longest wait for the provider.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 30;
/// Most verified tokens remembered; a full cache forgets the lot and starts again.
const CACHE_ENTRIES: usize = 16_384;
/// Longest a verified token is remembered without being checked again.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// The key set is fetched again this often even when no unknown `kid` asks for it, so a
/// key the provider withdrew stops working.
pub const REFRESH_EVERY: Duration = Duration::from_secs(15 * 60);

/// How tokens from an OpenID provider are checked and mapped (`--auth-*` settings).
#[derive(Clone, Debug)]
pub struct OidcConfig {
    /// The provider's issuer URL: discovery is at `<issuer>/.well-known/openid-configuration`
    /// and tokens must carry it as `iss`.
    pub issuer: Option<String>,
    /// The key set's URL, when given directly (else discovered from the issuer).
    pub jwks_url: Option<String>,
    /// Accepted `aud` values; a token must name one of them.
    pub audiences: Vec<String>,
    /// Path of the claim holding the role(s), split at dots (`realm_access.roles`).
    pub role_claim: Vec<String>,
    /// Claim values and the role each grants; the highest granted role wins.
    pub roles: Vec<(String, Role)>,
    /// Shortest time between two key-set fetches asked for by unknown key ids.
    pub cooldown: Duration,
    /// PEM file of a CA to trust beside the system's for the provider's HTTPS.
    pub ca: Option<std::path::PathBuf>,
    /// The dashboard's OAuth client id for sign-in with the provider, if enabled.
    pub client_id: Option<String>,
}

/// One of the provider's public keys and the algorithms it may verify.
struct Key {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// What the provider's discovery document says, as far as Orrery uses it.
#[derive(Clone, Debug)]
pub struct Discovery {
    /// The issuer, as the provider spells it (what tokens carry as `iss`).
    pub issuer: String,
    /// The key set.
    pub jwks_uri: String,
    /// Where the dashboard sends a user to sign in.
    pub authorization_endpoint: Option<String>,
    /// Where the dashboard trades the code for tokens.
    pub token_endpoint: Option<String>,
    /// Where the dashboard sends a user to sign out at the provider, if it has one.
    pub end_session_endpoint: Option<String>,
}

/// A verifier of the provider's tokens, with its cached key set.
pub struct Oidc {
    config: OidcConfig,
    http: reqwest::Client,
    keys: RwLock<Arc<Vec<Key>>>,
    /// Bumped on every key-set replacement, so a waiter knows another request refreshed.
    generation: AtomicU64,
    /// When the key set was last fetched; held while fetching, so that concurrent
    /// refreshes wait for one fetch.
    fetch: tokio::sync::Mutex<Option<Instant>>,
    /// The discovery document, once read.
    discovery: RwLock<Option<Arc<Discovery>>>,
    /// Key-set fetches made, for `/metrics` and the tests.
    fetches: AtomicU64,
    /// Tokens verified lately, by their SHA-256, with their claims and when the entry
    /// lapses: checking an RS256 or ES256 signature costs 150–200 µs of CPU, and a
    /// dashboard sends the same token with every request. Emptied whenever the key set
    /// changes, so a withdrawn key stops working at once.
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], (Claims, Instant)>>,
}

impl Oidc {
    /// A verifier with an empty key set; the keys are fetched on first use or by
    /// [`Self::refresh`].
    pub fn new(config: OidcConfig) -> anyhow::Result<Self> {
        let mut http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading --auth-ca {}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--auth-ca {}: not a PEM certificate", path.display()))?
            {
                http = http.add_root_certificate(cert);
            }
        }
        Ok(Self {
            config,
            http: http.build()?,
            keys: RwLock::default(),
            generation: AtomicU64::new(0),
            fetch: tokio::sync::Mutex::default(),
            discovery: RwLock::default(),
            fetches: AtomicU64::new(0),
            verified: std::sync::Mutex::default(),
        })
    }

    /// The settings this verifier was made with.
    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// Key-set fetches made so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Whether `token` looks like it is meant for this verifier rather than the built-in
    /// HS256 one: its header names an algorithm other than HMAC's.
    pub fn claims_token(header: &Header) -> bool {
        !matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        )
    }

    /// Checks a token from the provider and maps its claims (remembered for a minute, or
    /// until the key set changes).
    pub async fn verify(&self, token: &str, header: &Header) -> Result<Claims, TokenError> {
        use sha2::Digest as _;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some((claims, until)) = crate::sync::lock(&self.verified).get(&digest) {
            let unix = super::now_secs().unwrap_or(u64::MAX);
            if *until > now && claims.exp.saturating_add(LEEWAY_SECS) > unix {
                return Ok(claims.clone());
            }
        }
        let claims = self.verify_uncached(token, header).await?;
        let mut cache = crate::sync::lock(&self.verified);
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(digest, (claims.clone(), now + CACHE_TTL));
        Ok(claims)
    }

    /// [`Self::verify`] without the cache.
    async fn verify_uncached(&self, token: &str, header: &Header) -> Result<Claims, TokenError> {
        if header.jwk.is_some()
            || header.jku.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
            || !Self::claims_token(header)
        {
            return Err(TokenError::Invalid);
        }
        let keys = match self.find(header) {
            Some(keys) => keys,
            None => {
                let seen = self.generation.load(Ordering::Acquire);
                if let Err(e) = self.refresh_after(seen, false).await {
                    tracing::warn!(error = %format!("{e:#}"), "fetching the OpenID provider's keys failed");
                }
                self.find(header).ok_or(TokenError::Invalid)?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_audience(&self.config.audiences);
        // The issuer as the provider spells it once discovered, else as configured.
        let issuer = self
            .discovered_now()
            .map(|d| d.issuer.clone())
            .or_else(|| self.config.issuer.clone());
        let mut required = vec!["exp", "sub", "aud"];
        if let Some(iss) = &issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let mut last = TokenError::Invalid;
        for key in keys
            .iter()
            .filter(|k| k.algorithms.contains(&header.alg) && kid_matches(k, header))
        {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return self.map_claims(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                        _ => TokenError::Invalid,
                    };
                    // A signature that verified but failed a claim check will not pass with
                    // another key.
                    if !matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// The current key set when it holds a key for the token's `kid` and algorithm.
    fn find(&self, header: &Header) -> Option<Arc<Vec<Key>>> {
        let keys = Arc::clone(&crate::sync::read(&self.keys));
        keys.iter()
            .any(|k| k.algorithms.contains(&header.alg) && kid_matches(k, header))
            .then_some(keys)
    }

    /// Fetches the key set now (at start and every [`REFRESH_EVERY`]).
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let seen = self.generation.load(Ordering::Acquire);
        self.refresh_after(seen, true).await
    }

    /// Fetches the key set unless another caller replaced it since `seen`, or (unless
    /// `force`) the last fetch was within the cooldown.
    async fn refresh_after(&self, seen: u64, force: bool) -> anyhow::Result<()> {
        let mut last = self.fetch.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        if !force && last.is_some_and(|t| t.elapsed() < self.config.cooldown) {
            return Ok(());
        }
        *last = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let url = match &self.config.jwks_url {
            Some(url) => url.clone(),
            None => self.discovered().await?.jwks_uri.clone(),
        };
        let set: Value = self.get_json(&url).await?;
        let keys = parse_key_set(&set).with_context(|| format!("key set at {url}"))?;
        tracing::info!(keys = keys.len(), url, "fetched the OpenID provider's keys");
        *crate::sync::write(&self.keys) = Arc::new(keys);
        crate::sync::lock(&self.verified).clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// The discovery document, read once (the caller holds the fetch lock or accepts a
    /// second read racing this one).
    async fn discovered(&self) -> anyhow::Result<Arc<Discovery>> {
        if let Some(d) = crate::sync::read(&self.discovery).clone() {
            return Ok(d);
        }
        let d = Arc::new(self.discover().await?);
        *crate::sync::write(&self.discovery) = Some(Arc::clone(&d));
        Ok(d)
    }

    /// The provider's endpoints for the dashboard's sign-in, read once (single flight).
    pub async fn discovery(&self) -> anyhow::Result<Arc<Discovery>> {
        if let Some(d) = crate::sync::read(&self.discovery).clone() {
            return Ok(d);
        }
        let _fetching = self.fetch.lock().await;
        self.discovered().await
    }

    /// The discovery document, cached or not: `None` before it was read.
    pub fn discovered_now(&self) -> Option<Arc<Discovery>> {
        crate::sync::read(&self.discovery).clone()
    }

    /// Reads the discovery document and checks what Orrery will use of it.
    async fn discover(&self) -> anyhow::Result<Discovery> {
        let Some(issuer) = &self.config.issuer else {
            bail!("neither --auth-issuer nor --auth-jwks-url is set");
        };
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let doc = self.get_json(&url).await?;
        let stated = doc
            .get("issuer")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if stated.trim_end_matches('/') != issuer.trim_end_matches('/') {
            bail!(
                "the discovery document at {url} names issuer `{}`, not the configured `{issuer}`",
                stated.escape_debug()
            );
        }
        let jwks = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .with_context(|| format!("the discovery document at {url} has no jwks_uri"))?;
        check_url("jwks_uri", jwks)?;
        let endpoint = |name: &str| -> anyhow::Result<Option<String>> {
            match doc.get(name).and_then(Value::as_str) {
                None => Ok(None),
                Some(e) => check_url(name, e).map(|()| Some(e.to_owned())),
            }
        };
        Ok(Discovery {
            issuer: stated.to_owned(),
            jwks_uri: jwks.to_owned(),
            authorization_endpoint: endpoint("authorization_endpoint")?,
            token_endpoint: endpoint("token_endpoint")?,
            end_session_endpoint: endpoint("end_session_endpoint")?,
        })
    }

    /// GETs a JSON document of at most [`MAX_DOCUMENT_BYTES`].
    async fn get_json(&self, url: &str) -> anyhow::Result<Value> {
        let mut response = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        if !response.status().is_success() {
            bail!("GET {url}: {}", response.status());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("GET {url}"))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                bail!("GET {url}: larger than {MAX_DOCUMENT_BYTES} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).with_context(|| format!("GET {url}: not JSON"))
    }

    /// Role, subject, expiry and scope from a verified token's claims.
    fn map_claims(&self, claims: Map<String, Value>) -> Result<Claims, TokenError> {
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(TokenError::Invalid)?;
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(TokenError::Invalid)?;
        let mut value = claims.get(self.config.role_claim[0].as_str());
        for part in &self.config.role_claim[1..] {
            value = value.and_then(|v| v.get(part.as_str()));
        }
        let granted = |v: &str| -> Option<Role> {
            self.config
                .roles
                .iter()
                .filter(|(name, _)| name == v)
                .map(|(_, role)| *role)
                .max()
        };
        let role = match value {
            Some(Value::String(s)) => granted(s),
            Some(Value::Array(values)) => values
                .iter()
                .filter_map(Value::as_str)
                .filter_map(granted)
                .max(),
            _ => None,
        }
        .ok_or(TokenError::NoRole)?;
        let mut mapped = Claims::new(sub, role, exp);
        mapped.projects = scope(&claims, super::PROJECTS_CLAIM)?;
        mapped.topologies = scope(&claims, super::TOPOLOGIES_CLAIM)?;
        Ok(mapped)
    }
}

/// A scope claim: absent means everything; otherwise a list of strings (a lone string is a
/// list of one). Anything else is refused rather than read as "everything".
fn scope(claims: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or(TokenError::Invalid))
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(TokenError::Invalid),
    }
}

/// A token without a `kid` may be checked by any key; one with a `kid` only by that key.
fn kid_matches(key: &Key, header: &Header) -> bool {
    match (&header.kid, &key.kid) {
        (None, _) => true,
        (Some(want), Some(have)) => want == have,
        (Some(_), None) => false,
    }
}

/// The signing keys of a JWKS document. Keys for encryption, symmetric keys and keys of
/// unsupported kinds are skipped; a document with no usable key is an error.
fn parse_key_set(set: &Value) -> anyhow::Result<Vec<Key>> {
    let items = set
        .get("keys")
        .and_then(Value::as_array)
        .context("no `keys` array")?;
    let mut keys = Vec::new();
    for item in items {
        let Ok(jwk) = serde_json::from_value::<Jwk>(item.clone()) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let family: &[Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                &[Algorithm::ES256]
            }
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
                &[Algorithm::ES384]
            }
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                &[Algorithm::EdDSA]
            }
            // Symmetric (`oct`) keys would let anyone who reads the key set sign tokens.
            _ => continue,
        };
        // A key's own `alg`, when given, narrows it to that one algorithm.
        let algorithms: Vec<Algorithm> = match jwk.common.key_algorithm {
            None => family.to_vec(),
            Some(alg) => family
                .iter()
                .copied()
                .filter(|a| key_algorithm(*a) == Some(alg))
                .collect(),
        };
        if algorithms.is_empty() {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            algorithms,
            key,
        });
    }
    if keys.is_empty() {
        bail!("no RSA, P-256, P-384 or Ed25519 signing key");
    }
    Ok(keys)
}

/// The JWK `alg` name of a signing algorithm.
fn key_algorithm(alg: Algorithm) -> Option<KeyAlgorithm> {
    Some(match alg {
        Algorithm::RS256 => KeyAlgorithm::RS256,
        Algorithm::RS384 => KeyAlgorithm::RS384,
        Algorithm::RS512 => KeyAlgorithm::RS512,
        Algorithm::PS256 => KeyAlgorithm::PS256,
        Algorithm::PS384 => KeyAlgorithm::PS384,
        Algorithm::PS512 => KeyAlgorithm::PS512,
        Algorithm::ES256 => KeyAlgorithm::ES256,
        Algorithm::ES384 => KeyAlgorithm::ES384,
        Algorithm::EdDSA => KeyAlgorithm::EdDSA,
        _ => return None,
    })
}

/// An issuer or key-set URL: `https://`, or `http://` to a loopback address only (a
/// provider on the same host); no user info or fragment.
pub fn check_url(flag: &str, url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url)
        .ok()
        .filter(|u| u.username().is_empty() && u.password().is_none() && u.fragment().is_none());
    let Some(parsed) = parsed else {
        bail!("--{flag} `{}`: accepts an https:// URL", url.escape_debug());
    };
    let loopback = match parsed.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback()),
        None => false,
    };
    match parsed.scheme() {
        "https" if parsed.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        _ => bail!(
            "--{flag} `{}`: accepts an https:// URL (http:// only to a loopback address)",
            url.escape_debug()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_except_to_loopback() {
        for good in [
            "https://idp.example/realms/ops",
            "http://127.0.0.1:8080",
            "http://[::1]:9000/x",
            "http://localhost:3000",
        ] {
            assert!(check_url("auth-issuer", good).is_ok(), "{good}");
        }
        for bad in [
            "http://idp.example",
            "ftp://idp.example",
            "https://user:pw@idp.example",
            "https://idp.example/#frag",
            "idp.example",
            "",
            "https://",
        ] {
            let e = check_url("auth-issuer", bad).unwrap_err().to_string();
            assert!(e.starts_with("--auth-issuer"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_key_set_keeps_only_asymmetric_signing_keys() {
        let set = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-256", "use": "enc", "kid": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "ec",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "EdDSA",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "mislabelled", "alg": "RS256",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "weird"},
            "not an object"
        ]});
        let keys = parse_key_set(&set).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["ec", "ed"]);
        assert_eq!(keys[0].algorithms, [Algorithm::ES256]);
        assert_eq!(keys[1].algorithms, [Algorithm::EdDSA]);
        assert!(parse_key_set(&serde_json::json!({"keys": [{"kty": "oct", "k": "eA"}]})).is_err());
        assert!(parse_key_set(&serde_json::json!({"nokeys": []})).is_err());
        assert!(parse_key_set(&serde_json::json!([1, 2])).is_err());
    }
}
