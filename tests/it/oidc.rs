//! Tokens from the operator's identity provider: a real OpenID provider (`oidc-provider`,
//! run under Node by the test) signing RS256, ES256 and EdDSA access tokens, and a key set
//! served by the test for the tokens no honest provider would sign.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use orrery::Settings;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

/// The audience Orrery is configured to accept.
const AUDIENCE: &str = "urn:orrery";
const CLIENT_SECRET: &str = "client-secret-client-secret-0123";

/// `.tools/node` as `scripts/ensure-node-tools.sh` leaves it (or `$ORRERY_NODE_TOOLS`).
fn node_tools() -> std::path::PathBuf {
    let dir = std::env::var_os("ORRERY_NODE_TOOLS")
        .map(Into::into)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/node"));
    assert!(
        dir.join("node_modules/oidc-provider/lib/index.js")
            .is_file(),
        "{} holds no oidc-provider: run scripts/ensure-node-tools.sh (make test does)",
        dir.display()
    );
    dir
}

fn free_port() -> u16 {
    orrery::natsd::free_port().unwrap()
}

/// A running `oidc-provider`; dropping it stops it.
pub struct Provider {
    child: tokio::process::Child,
    pub issuer: String,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Provider {
    /// Starts a provider with these clients (`client_id`, `alg`, `claims`), users and, if
    /// given, a dashboard client.
    pub async fn start(clients: Value, users: Value, dashboard: Option<Value>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let issuer = format!("http://127.0.0.1:{port}");
        let mut clients = clients;
        for c in clients.as_array_mut().unwrap() {
            c["client_secret"] = json!(CLIENT_SECRET);
        }
        let config = dir.path().join("provider.json");
        let mut body = json!({"port": port, "issuer": issuer, "audience": AUDIENCE,
                              "clients": clients, "users": users});
        if let Some(d) = dashboard {
            body["dashboard"] = d;
        }
        std::fs::write(&config, body.to_string()).unwrap();
        let child = Self::spawn(&config).await;
        Self {
            child,
            issuer,
            config,
            _dir: dir,
        }
    }

    async fn spawn(config: &std::path::Path) -> tokio::process::Child {
        let tools = node_tools();
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc/provider.mjs");
        let mut child = tokio::process::Command::new(tools.join("node"))
            .arg(script)
            .arg(tools.join("node_modules/oidc-provider/lib/index.js"))
            .arg(config)
            .stdout(std::process::Stdio::piped())
            // Its warnings and any crash, for whoever debugs a failing test.
            .stderr(std::fs::File::create(config.with_extension("log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start node (scripts/ensure-node-tools.sh links it into .tools/node)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Generous: it generates new signing keys at every start, which on two cores shared
        // with the rest of the suite (browsers, nats-servers) once took over 20 s in CI.
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the OpenID provider did not start within 60 s")
            .unwrap()
            .unwrap_or_default();
        assert!(line.starts_with("listening"), "provider said {line:?}");
        // The provider logs to stdout now and then; a closed pipe would kill it (EPIPE).
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        child
    }

    /// Stops the provider and starts it again on the same address: every signing key is
    /// new, as after a key rotation.
    pub async fn rotate_keys(&mut self) {
        self.child.kill().await.unwrap();
        self.child = Self::spawn(&self.config).await;
    }

    /// An access token for a client, by the client credentials grant.
    pub async fn client_token(&self, client_id: &str) -> String {
        let res: Value = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", CLIENT_SECRET),
                ("resource", AUDIENCE),
                ("scope", "orrery"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        res["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {res}"))
            .to_owned()
    }
}

/// Settings accepting the provider's tokens (and the built-in HS256 ones) with roles from
/// the `groups` claim.
fn with_provider(
    nats: &orrery::natsd::NatsServer,
    issuer: &str,
    dir: &tempfile::TempDir,
) -> Settings {
    let mut s = settings(&nats.url(), &dir.path().join("orrery.db"));
    s.auth_issuer = Some(issuer.to_owned());
    s.auth_audience = Some(AUDIENCE.to_owned());
    s.auth_role_claim = Some("groups".into());
    s.auth_roles =
        Some("orrery-admins=admin, orrery-operators=operator, orrery-viewers=viewer".into());
    s
}

async fn whoami(app: &TestApp, token: &str) -> (u16, Value) {
    let res = app
        .http
        .get(format!("{}/api/v1/auth/whoami", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn provider_tokens_of_each_algorithm_work_for_the_api_and_live_streams() {
    let nats = orrery::natsd::NatsServer::start().unwrap();
    let provider = Provider::start(
        json!([
            {"client_id": "ci-admin", "alg": "RS256", "claims": {"groups": ["staff", "orrery-admins"]}},
            {"client_id": "ci-operator", "alg": "ES256", "claims": {"groups": ["orrery-operators", "orrery-viewers"]}},
            {"client_id": "ci-viewer", "alg": "EdDSA", "claims": {"groups": "orrery-viewers"}},
            {"client_id": "ci-nobody", "alg": "RS256", "claims": {"groups": ["staff"]}},
        ]),
        json!({}),
        None,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_with(with_provider(&nats, &provider.issuer, &dir), dir).await;
    let js = jetstream(&nats).await;
    wait_for_streams(&js).await;

    let admin = provider.client_token("ci-admin").await;
    let operator = provider.client_token("ci-operator").await;
    let viewer = provider.client_token("ci-viewer").await;
    for (token, sub, role) in [
        (&admin, "ci-admin", "admin"),
        (&operator, "ci-operator", "operator"),
        (&viewer, "ci-viewer", "viewer"),
    ] {
        let (status, body) = whoami(&app, token).await;
        assert_eq!(status, 200, "{sub}: {body}");
        assert_eq!(
            (body["sub"].as_str(), body["role"].as_str()),
            (Some(sub), Some(role))
        );
    }
    // The built-in tokens still work beside the provider's.
    assert_eq!(
        whoami(&app, &token(orrery::token::Role::Viewer)).await.0,
        200
    );

    // A user the provider knows but grants no mapped role is refused, and told why.
    let (status, body) = whoami(&app, &provider.client_token("ci-nobody").await).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("no Orrery role"),
        "{body}"
    );

    // Roles from the claim decide what a token may do.
    let enqueue = |token: String| {
        let app = &app;
        async move {
            app.http
                .post(format!("{}/api/v1/topologies/web/mutations", app.address))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(json!({"op": "add", "spec": {}}).to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(enqueue(viewer.clone()).await, 403);
    assert_eq!(enqueue(operator.clone()).await, 202);

    // Live streams: an SSE ticket bought with a provider token, and `?token=` itself.
    publish_topology(&js, "web", "status", json!({"status": "running"})).await;
    // A stream of a topology this replica has not projected yet is a 404: wait for it.
    app.wait_caught_up().await;
    let ticket = app.sse_ticket(&viewer).await;
    for query in [
        format!("ticket={}", ticket["ticket"].as_str().unwrap()),
        format!("token={operator}"),
    ] {
        let res = app
            .http
            .get(format!(
                "{}/api/v1/topologies/web/events?{query}",
                app.address
            ))
            .send()
            .await
            .unwrap();
        if res.status() != 200 {
            panic!(
                "{query}: {} {}",
                res.status(),
                res.text().await.unwrap_or_default()
            );
        }
        let mut events = SseClient::new(res);
        let first = events
            .next(Duration::from_secs(10))
            .await
            .expect("a snapshot");
        assert_eq!(first.event, "snapshot");
    }
}

#[tokio::test]
async fn a_key_rotation_at_the_provider_is_picked_up_and_the_old_key_stops_working() {
    let nats = orrery::natsd::NatsServer::start().unwrap();
    let mut provider = Provider::start(
        json!([{"client_id": "ci", "alg": "ES256", "claims": {"groups": ["orrery-viewers"]}}]),
        json!({}),
        None,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = with_provider(&nats, &provider.issuer, &dir);
    s.auth_jwks_cooldown_secs = Some(1);
    let app = spawn_app_with(s, dir).await;
    let before = provider.client_token("ci").await;
    assert_eq!(whoami(&app, &before).await.0, 200);

    provider.rotate_keys().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = provider.client_token("ci").await;
    let (status, body) = whoami(&app, &after).await;
    assert_eq!(status, 200, "a token signed with the new key: {body}");
    // The key set was replaced: the withdrawn key no longer verifies anything.
    let (status, body) = whoami(&app, &before).await;
    assert_eq!(status, 401, "a token signed with the withdrawn key: {body}");
}

/// A key pair made by Node: the private key as DER (PKCS#1 for RSA, else PKCS#8) and the
/// public key as a JWK.
fn key_pair(kind: &str) -> (EncodingKey, Value) {
    let options = match kind {
        "rsa" => "{modulusLength: 2048}",
        "ec" => "{namedCurve: 'P-256'}",
        _ => "{}",
    };
    let der_type = if kind == "rsa" { "pkcs1" } else { "pkcs8" };
    let script = format!(
        "const k = require('crypto').generateKeyPairSync('{kind}', {options}); \
         console.log(JSON.stringify({{der: k.privateKey.export({{format: 'der', type: '{der_type}'}}).toString('base64'), \
         jwk: k.publicKey.export({{format: 'jwk'}})}}))"
    );
    let out = std::process::Command::new(node_tools().join("node"))
        .args(["-e", &script])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    use base64::Engine;
    let der = base64::engine::general_purpose::STANDARD
        .decode(v["der"].as_str().unwrap())
        .unwrap();
    let key = match kind {
        "rsa" => EncodingKey::from_rsa_der(&der),
        "ec" => EncodingKey::from_ec_der(&der),
        _ => EncodingKey::from_ed_der(&der),
    };
    (key, v["jwk"].clone())
}

/// A key set served by the test on loopback, counting the times it is fetched.
struct KeySet {
    url: String,
    hits: Arc<AtomicUsize>,
    keys: Arc<Mutex<Value>>,
}

async fn serve_key_set(keys: Value) -> KeySet {
    let hits = Arc::new(AtomicUsize::new(0));
    let keys = Arc::new(Mutex::new(keys));
    let (h, k) = (Arc::clone(&hits), Arc::clone(&keys));
    let router = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let (h, k) = (Arc::clone(&h), Arc::clone(&k));
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                axum::Json(k.lock().unwrap().clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    KeySet { url, hits, keys }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const ISSUER: &str = "https://idp.example/realms/ops";

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn b64(v: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

#[tokio::test]
async fn forged_expired_and_misaddressed_tokens_are_refused() {
    let (rsa, mut rsa_jwk) = key_pair("rsa");
    let (ec, mut ec_jwk) = key_pair("ec");
    let (ed, mut ed_jwk) = key_pair("ed25519");
    rsa_jwk["kid"] = json!("rsa");
    ec_jwk["kid"] = json!("ec");
    ed_jwk["kid"] = json!("ed");
    let set = serve_key_set(json!({"keys": [rsa_jwk.clone(), ec_jwk, ed_jwk]})).await;

    let nats = orrery::natsd::NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&nats.url(), &dir.path().join("orrery.db"));
    s.jwt_secret = None;
    s.auth_jwks_url = Some(set.url.clone());
    s.auth_issuer = Some(ISSUER.into());
    s.auth_audience = Some(format!("other-api,{AUDIENCE}"));
    s.auth_role_claim = Some("realm_access.roles".into());
    s.auth_roles = Some("ops=operator".into());
    let app = spawn_app_with(s, dir).await;

    let good = json!({"sub": "ana", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600,
                      "realm_access": {"roles": ["ops"]}});
    let with = |patch: Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa", &rsa),
        (Algorithm::PS256, "rsa", &rsa),
        (Algorithm::ES256, "ec", &ec),
        (Algorithm::EdDSA, "ed", &ed),
    ] {
        let (status, body) = whoami(&app, &sign(alg, kid, key, &good)).await;
        assert_eq!(status, 200, "{alg:?}: {body}");
        assert_eq!(
            (body["sub"].as_str(), body["role"].as_str()),
            (Some("ana"), Some("operator"))
        );
    }
    // Without a kid, the keys of the token's algorithm are tried.
    let no_kid = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &good, &ed).unwrap();
    assert_eq!(whoami(&app, &no_kid).await.0, 200);

    let refused = |why: &'static str, token: String| {
        let app = &app;
        async move {
            let (status, body) = whoami(app, &token).await;
            assert_eq!(status, 401, "{why}: {body}");
            body["message"].as_str().unwrap_or_default().to_owned()
        }
    };
    let rs = |c: Value| sign(Algorithm::RS256, "rsa", &rsa, &c);
    let msg = refused("expired", rs(with(json!({"exp": now() - 120})))).await;
    assert!(msg.contains("expired"), "{msg}");
    refused("not yet valid", rs(with(json!({"nbf": now() + 600})))).await;
    refused(
        "for another audience",
        rs(with(json!({"aud": "someone-else"}))),
    )
    .await;
    refused("without an audience", rs(with(json!({"aud": null})))).await;
    refused(
        "from another issuer",
        rs(with(json!({"iss": "https://evil.example"}))),
    )
    .await;
    refused("without an issuer", rs(with(json!({"iss": null})))).await;
    refused("without a subject", rs(with(json!({"sub": null})))).await;
    refused("without an expiry", rs(with(json!({"exp": null})))).await;
    // The key's algorithm, not the token's choice, decides: an RSA key never checks ES256.
    refused(
        "alg switched to the EC key's",
        sign(Algorithm::ES256, "rsa", &ec, &good),
    )
    .await;
    // Signed by a key the provider never published, under a published kid.
    let (stranger, stranger_jwk) = key_pair("rsa");
    refused(
        "signed by a stranger",
        sign(Algorithm::RS256, "rsa", &stranger, &good),
    )
    .await;
    // The token's own key is never trusted.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa".into());
    header.jwk = serde_json::from_value(stranger_jwk).ok();
    refused(
        "carrying its own key",
        jsonwebtoken::encode(&header, &good, &stranger).unwrap(),
    )
    .await;
    // `alg: none`, and HS256 keyed with the public key (the RS/HS confusion).
    let payload = b64(good.to_string().as_bytes());
    refused(
        "alg none",
        format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
    )
    .await;
    let public = rsa_jwk["n"].as_str().unwrap().as_bytes();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("rsa".into());
    refused(
        "HS256 keyed with the public key",
        jsonwebtoken::encode(&hs, &good, &EncodingKey::from_secret(public)).unwrap(),
    )
    .await;
    refused("garbage", "a.b.c".into()).await;

    // A valid token with no mapped role: 403, not 401.
    let (status, _) = whoami(
        &app,
        &rs(with(json!({"realm_access": {"roles": ["guest"]}}))),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = whoami(&app, &rs(with(json!({"realm_access": null})))).await;
    assert_eq!(status, 403);
    // A scope claim of the wrong shape is refused rather than read as "everything".
    refused(
        "scope of the wrong shape",
        rs(with(json!({"orrery_projects": 7}))),
    )
    .await;
    // With no HS256 secret configured, built-in tokens are refused.
    refused(
        "a built-in token without a secret",
        token(orrery::token::Role::Admin),
    )
    .await;
    drop(set.keys);
}

#[tokio::test]
async fn unknown_key_ids_cost_at_most_one_fetch_per_cooldown() {
    let (ed, mut ed_jwk) = key_pair("ed25519");
    ed_jwk["kid"] = json!("ed-1");
    let set = serve_key_set(json!({"keys": [ed_jwk.clone()]})).await;
    let nats = orrery::natsd::NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&nats.url(), &dir.path().join("orrery.db"));
    s.auth_jwks_url = Some(set.url.clone());
    s.auth_audience = Some(AUDIENCE.into());
    s.auth_jwks_cooldown_secs = Some(3);
    let app = spawn_app_with(s, dir).await;
    let claims = json!({"sub": "x", "aud": AUDIENCE, "exp": now() + 600, "orrery_role": "viewer"});
    assert_eq!(
        whoami(&app, &sign(Algorithm::EdDSA, "ed-1", &ed, &claims))
            .await
            .0,
        200
    );
    wait_until(
        Duration::from_secs(5),
        "the key set fetched at start",
        || async { set.hits.load(Ordering::SeqCst) >= 1 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let base = set.hits.load(Ordering::SeqCst);

    // A spray of made-up key ids, all at once: one fetch answers all of them.
    let sprayed = futures::future::join_all((0..64).map(|i| {
        let token = sign(Algorithm::EdDSA, &format!("made-up-{i}"), &ed, &claims);
        let app = &app;
        async move { whoami(app, &token).await.0 }
    }))
    .await;
    assert!(sprayed.iter().all(|s| *s == 401), "{sprayed:?}");
    assert_eq!(
        set.hits.load(Ordering::SeqCst),
        base + 1,
        "fetches for 64 unknown kids"
    );

    // A key the provider publishes later is found once the cooldown has passed.
    let (ed2, mut ed2_jwk) = key_pair("ed25519");
    ed2_jwk["kid"] = json!("ed-2");
    *set.keys.lock().unwrap() = json!({"keys": [ed_jwk, ed2_jwk]});
    let fresh = sign(Algorithm::EdDSA, "ed-2", &ed2, &claims);
    assert_eq!(whoami(&app, &fresh).await.0, 401, "within the cooldown");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(whoami(&app, &fresh).await.0, 200, "after the cooldown");
    assert_eq!(set.hits.load(Ordering::SeqCst), base + 2);
}

/// From the dashboard's sign-in page, signs in at the provider as `login` and returns who
/// the dashboard's header then says is signed in.
async fn sign_in_as(b: &mut crate::cdp::Browser, login: &str, home: &str) -> Value {
    click_provider_sign_in(b).await;
    sign_in_at_provider(b, login, home).await;
    b.wait_for(
        "document.getElementById('top').hidden === false && document.getElementById('who').innerText",
        "the overview, signed in",
        Duration::from_secs(20),
    )
    .await
}

/// On the dashboard's sign-in page: clicks "Sign in with <provider>".
async fn click_provider_sign_in(b: &mut crate::cdp::Browser) {
    b.wait_for(
        "!document.getElementById('signin').hidden && \
         !document.getElementById('signin-oidc').hidden && \
         (document.getElementById('signin-oidc').click(), true)",
        "the provider's sign-in button",
        Duration::from_secs(20),
    )
    .await;
}

/// At the provider's own pages: signs in as `login` (any password), passing the consent
/// page if one is shown, until the browser is back at `home`.
async fn sign_in_at_provider(b: &mut crate::cdp::Browser, login: &str, home: &str) {
    b.wait_for(
        "document.querySelector('input[name=login]') !== null",
        "the provider's sign-in page",
        Duration::from_secs(20),
    )
    .await;
    b.eval(&format!(
        "document.querySelector('input[name=login]').value = {login:?}; \
         document.querySelector('input[name=password]').value = 'any'; \
         document.querySelector('.login-submit').click(); true"
    ))
    .await;
    b.wait_for(
        &format!(
            "location.href.startsWith({home:?}) || \
             (document.querySelector('.login-submit') && !document.querySelector('input[name=login]') \
              && (document.querySelector('.login-submit').click(), false))"
        ),
        "the way back to the dashboard",
        Duration::from_secs(20),
    )
    .await;
}

#[tokio::test]
async fn the_dashboard_signs_in_with_the_provider_by_code_and_pkce_and_out_again() {
    let nats = orrery::natsd::NatsServer::start().unwrap();
    let port = free_port();
    let home = format!("http://127.0.0.1:{port}/");
    let mut provider = Provider::start(
        json!([]),
        json!({"alice": {"groups": ["orrery-operators"]}, "mallory": {"groups": ["staff"]}}),
        Some(json!({"client_id": "orrery-dashboard", "redirect_uris": [home], "alg": "ES256"})),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = with_provider(&nats, &provider.issuer, &dir);
    s.listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    s.auth_client_id = Some("orrery-dashboard".into());
    s.auth_jwks_cooldown_secs = Some(1);
    let app = spawn_app_with(s, dir).await;

    // The page may call the provider's token endpoint, and nothing else outside.
    let res = app.get("/", None).await;
    let csp = res.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains(&format!("connect-src 'self' {};", provider.issuer)),
        "{csp}"
    );
    let options: Value = app
        .get("/api/v1/auth/providers", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(options["oidc"]["client_id"], "orrery-dashboard");
    assert_eq!(options["oidc"]["resource"], AUDIENCE);

    let mut b = crate::cdp::Browser::start().await;
    b.goto(&home).await;
    assert_eq!(sign_in_as(&mut b, "alice", &home).await, "alice · operator");
    // The code and state are gone from the address bar; the role's controls are shown.
    let href = b.eval("location.href").await;
    assert!(!href.as_str().unwrap().contains("code="), "{href}");
    assert_eq!(b.eval("document.body.dataset.role").await, "operator");

    // Sign-out ends the session at the provider too, and lands on the sign-in page.
    b.eval("document.getElementById('signout').click(); true")
        .await;
    b.wait_for(
        "document.querySelector('button[name=logout]') && (document.querySelector('button[name=logout]').click(), true)",
        "the provider's sign-out page",
        Duration::from_secs(20),
    )
    .await;
    b.wait_for(
        &format!("location.href.startsWith({home:?}) && !document.getElementById('signin').hidden"),
        "the sign-in page after signing out",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        b.eval("sessionStorage.getItem('orrery.token')").await,
        Value::Null
    );

    // A user the provider knows but grants no Orrery role gets a clear refusal.
    click_provider_sign_in(&mut b).await;
    sign_in_at_provider(&mut b, "mallory", &home).await;
    let why = b
        .wait_for(
            "document.getElementById('signin').dataset.refused === 'true' && document.getElementById('signin-why').innerText",
            "the refusal page",
            Duration::from_secs(20),
        )
        .await;
    assert!(why.as_str().unwrap().contains("no Orrery role"), "{why}");
    // Nothing of the dashboard shows; only a way out.
    let shown = b
        .eval(
            "['top', 'signin-oidc', 'signin-form', 'signin-signout']
               .map((id) => getComputedStyle(document.getElementById(id)).display !== 'none')",
        )
        .await;
    assert_eq!(shown, json!([false, false, false, true]));
    b.screenshot(
        &std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots/oidc-refused.png"),
    )
    .await;

    // The provider rotates its keys (a restart makes new ones): the next sign-in works.
    provider.rotate_keys().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    b.goto(&home).await;
    assert_eq!(sign_in_as(&mut b, "alice", &home).await, "alice · operator");
}
