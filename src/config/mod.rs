//! Layered, typed configuration: flags > `ORRERY_*` environment > TOML file > defaults.
//!
//! [`Settings`] is both the clap argument group and the TOML schema, so `--help`, the
//! environment names and the file keys cannot drift apart. Every field is optional at that
//! layer; [`Settings::resolve`] merges the layers and turns the result into a validated
//! [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Deserialize;

pub use crate::bus::NatsConfig;
pub use crate::secret::Secret;

/// Shortest JWT secret accepted: HS256 keys shorter than the hash output are guessable.
pub const MIN_JWT_SECRET_LEN: usize = 32;

/// Most messages per SQLite transaction unless `--batch-size` says otherwise. Batches only
/// grow this large while the projector is behind (group commit); a catch-up over random
/// UUIDs writes each index page once per transaction rather than once per few rows
/// (measured with `orrery bench ingest`, 1M realistic results: 38k/s at 4096, 82–88k/s at
/// 32768, no better at 65536 with 30% more memory).
pub const DEFAULT_BATCH_SIZE: usize = 32_768;

/// Defines [`Settings`] from one list of fields (each an `Option` of the given type), and
/// [`Settings::fill_from`] over the same list, so that a field is named once here and once
/// in its section's resolver.
macro_rules! settings {
    ($($(#[$attr:meta])* $field:ident: $ty:ty,)*) => {
        /// Options of every subcommand that touches the bus, the database or the HTTP API.
        ///
        /// Field docs are the `--help` text and the README configuration table; a `[default: …]`
        /// there is checked by a test against the value [`Settings::resolve`] uses.
        #[derive(Args, Deserialize, Debug, Default, Clone)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $($(#[$attr])* pub $field: Option<$ty>,)*
        }

        impl Settings {
            /// Fills each unset field from `lower`, the next layer down.
            fn fill_from(&mut self, lower: Settings) {
                $(if self.$field.is_none() {
                    self.$field = lower.$field;
                })*
            }
        }
    };
}

settings! {
    /// TOML file with any of these options (keys as the long flag names, with `_`).
    #[arg(long, env = "ORRERY_CONFIG")]
    #[serde(skip)]
    config: PathBuf,

    /// NATS server URL(s), comma separated [default: nats://127.0.0.1:4222].
    #[arg(long, env = "ORRERY_NATS_URL")]
    nats_url: String,
    /// NATS user name (with --nats-password).
    #[arg(long, env = "ORRERY_NATS_USER")]
    nats_user: String,
    /// NATS password.
    #[arg(long, env = "ORRERY_NATS_PASSWORD", hide_env_values = true)]
    nats_password: String,
    /// NATS authentication token.
    #[arg(long, env = "ORRERY_NATS_TOKEN", hide_env_values = true)]
    nats_token: String,
    /// NATS credentials file (JWT + NKey seed), as issued by nsc.
    #[arg(long, env = "ORRERY_NATS_CREDS")]
    nats_creds: PathBuf,
    /// NATS NKey seed (starts with `SU`).
    #[arg(long, env = "ORRERY_NATS_NKEY", hide_env_values = true)]
    nats_nkey: String,
    /// PEM file of the CA that signed the NATS server certificate; enables TLS.
    #[arg(long, env = "ORRERY_NATS_TLS_CA")]
    nats_tls_ca: PathBuf,
    /// PEM client certificate for mutual TLS (with --nats-tls-key).
    #[arg(long, env = "ORRERY_NATS_TLS_CERT")]
    nats_tls_cert: PathBuf,
    /// PEM private key of the client certificate.
    #[arg(long, env = "ORRERY_NATS_TLS_KEY")]
    nats_tls_key: PathBuf,
    /// Replicas of the streams Orrery creates (3 on a NATS cluster) [default: 1].
    #[arg(long, env = "ORRERY_STREAM_REPLICAS")]
    stream_replicas: usize,
    /// Maximum age of messages in the streams Orrery creates, e.g. `7d`, `12h` [default: 7d].
    #[arg(long, env = "ORRERY_STREAM_MAX_AGE")]
    stream_max_age: String,
    /// Create the streams Orrery needs when they are missing; `false` for a NATS user that
    /// may not create streams (someone else does; a missing one is a /ready reason)
    /// [default: true].
    #[arg(long, env = "ORRERY_PROVISION_STREAMS", num_args = 0..=1, default_missing_value = "true")]
    provision_streams: bool,

    /// JetStream object-store bucket for database snapshots: a replica starting with no
    /// database restores the newest one, and a serving one writes one every
    /// --snapshot-interval-secs [default: none].
    #[arg(long, env = "ORRERY_SNAPSHOT_BUCKET")]
    snapshot_bucket: String,
    /// Seconds between two snapshots of a serving daemon (with --snapshot-bucket)
    /// [default: 3600].
    #[arg(long, env = "ORRERY_SNAPSHOT_INTERVAL_SECS")]
    snapshot_interval_secs: u64,
    /// Snapshots kept in the bucket; older ones are deleted after each upload [default: 3].
    #[arg(long, env = "ORRERY_SNAPSHOT_KEEP")]
    snapshot_keep: usize,

    /// SQLite database file holding the read models [default: ./orrery.db].
    #[arg(long, env = "ORRERY_DATABASE")]
    database: PathBuf,
    /// Connections in the read-only pool that serves queries [default: 4].
    #[arg(long, env = "ORRERY_READERS")]
    readers: u32,
    /// The writer's SQLite page cache, in MiB: the indexes a catch-up writes to should fit
    /// [default: 256].
    #[arg(long, env = "ORRERY_CACHE_MIB")]
    cache_mib: u32,

    /// Address the HTTP API listens on [default: 127.0.0.1:8080].
    #[arg(long, env = "ORRERY_LISTEN")]
    listen: SocketAddr,
    /// HS256 secret for API tokens, at least 32 bytes.
    #[arg(long, env = "ORRERY_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// File holding the HS256 secret (trailing newline ignored); an alternative to --jwt-secret.
    #[arg(long, env = "ORRERY_JWT_SECRET_FILE")]
    jwt_secret_file: PathBuf,
    /// Serve the API without authentication (local development only) [default: false].
    #[arg(long, env = "ORRERY_INSECURE_NO_AUTH", num_args = 0..=1, default_missing_value = "true")]
    insecure_no_auth: bool,
    /// Issuer URL of an OpenID provider whose tokens are accepted (keys found by discovery);
    /// https://, or http:// to loopback [default: none].
    #[arg(long, env = "ORRERY_AUTH_ISSUER")]
    auth_issuer: String,
    /// URL of the provider's key set (JWKS), instead of discovery [default: none].
    #[arg(long, env = "ORRERY_AUTH_JWKS_URL")]
    auth_jwks_url: String,
    /// The `aud` values accepted in provider tokens, comma separated; required with a
    /// provider [default: none].
    #[arg(long, env = "ORRERY_AUTH_AUDIENCE")]
    auth_audience: String,
    /// Claim of provider tokens holding the role(s): a name or a dotted path such as
    /// `realm_access.roles`; a string or a list of strings [default: orrery_role].
    #[arg(long, env = "ORRERY_AUTH_ROLE_CLAIM")]
    auth_role_claim: String,
    /// The role each claim value grants, `value=role` comma separated; the highest granted
    /// wins, and a token granted none is refused [default: viewer=viewer,operator=operator,admin=admin].
    #[arg(long, env = "ORRERY_AUTH_ROLES")]
    auth_roles: String,
    /// Shortest time between two key-set fetches asked for by tokens with an unknown key
    /// id, in seconds [default: 60].
    #[arg(long, env = "ORRERY_AUTH_JWKS_COOLDOWN_SECS")]
    auth_jwks_cooldown_secs: u64,
    /// PEM file of a CA to trust, beside the system's, for the provider's HTTPS.
    #[arg(long, env = "ORRERY_AUTH_CA")]
    auth_ca: PathBuf,
    /// The dashboard's client id at the provider (a public client: authorization code with
    /// PKCE, redirect URI `<dashboard>/`); enables "Sign in with your provider" [default: none].
    #[arg(long, env = "ORRERY_AUTH_CLIENT_ID")]
    auth_client_id: String,

    /// Most messages applied in one SQLite transaction [default: 32768].
    #[arg(long, env = "ORRERY_BATCH_SIZE")]
    batch_size: usize,
    /// Extra wait for more messages once a batch's first is in and no commit is running, in
    /// ms; 0 commits at once (group commit: batches grow while the previous one commits)
    /// [default: 0].
    #[arg(long, env = "ORRERY_BATCH_WAIT_MS")]
    batch_wait_ms: u64,
    /// /ready answers 503 while any projection lags the stream by more than this [default: 10000].
    #[arg(long, env = "ORRERY_READY_MAX_LAG")]
    ready_max_lag: u64,

    /// SSE keepalive comment interval, seconds [default: 15].
    #[arg(long, env = "ORRERY_SSE_KEEPALIVE_SECS")]
    sse_keepalive_secs: u64,
    /// Concurrent SSE streams one user (token `sub`) may hold; more get 429 [default: 5].
    #[arg(long, env = "ORRERY_SSE_MAX_STREAMS_PER_USER")]
    sse_max_streams_per_user: usize,
    /// Concurrent SSE streams in all; more get 503 with Retry-After [default: 10000].
    #[arg(long, env = "ORRERY_SSE_MAX_CONNECTIONS")]
    sse_max_connections: usize,
    /// Events an SSE client may fall behind before it is told to resync; keep it above the
    /// most events one topology gets in one batch [default: 1024].
    #[arg(long, env = "ORRERY_SSE_CLIENT_QUEUE")]
    sse_client_queue: usize,
    /// Recent events kept per topology for `Last-Event-ID` resumes [default: 1000].
    #[arg(long, env = "ORRERY_SSE_REPLAY_EVENTS")]
    sse_replay_events: usize,
    /// Origins allowed by CORS, comma separated (e.g. https://dash.example), or `*` for any
    /// [default: none].
    #[arg(long, env = "ORRERY_CORS_ORIGINS")]
    cors_origins: String,
    /// Longest wait of `POST …/mutations?wait=true` for the projection, in ms [default: 5000].
    #[arg(long, env = "ORRERY_MUTATION_WAIT_MS")]
    mutation_wait_ms: u64,
    /// After SIGTERM, how long /ready answers 503 while everything else keeps serving, in ms,
    /// so a load balancer stops sending new clients before live streams end [default: 0].
    #[arg(long, env = "ORRERY_DRAIN_DELAY_MS")]
    drain_delay_ms: u64,

    /// An alert provider whose last event is older than this is `stale` in
    /// /api/v1/alerts/freshness, in seconds [default: 3600].
    #[arg(long, env = "ORRERY_ALERT_STALE_AFTER_SECS")]
    alert_stale_after_secs: u64,

    /// An agent with no heartbeat for this long is stale, in seconds [default: 120].
    #[arg(long, env = "ORRERY_AGENT_STALE_AFTER_SECS")]
    agent_stale_after_secs: u64,
    /// Fleet health is degraded once the share of stale agents reaches this (0 to 1; 1 means
    /// every known agent is stale, 0 means any one stale agent) [default: 1].
    #[arg(long, env = "ORRERY_FLEET_STALE_SHARE")]
    fleet_stale_share: f64,
    /// Fleet health is degraded while a projection lags its stream by more than this
    /// [default: 10000].
    #[arg(long, env = "ORRERY_FLEET_MAX_LAG")]
    fleet_max_lag: u64,
    /// Extra JetStream streams fleet health expects, comma separated [default: none].
    #[arg(long, env = "ORRERY_EXPECT_STREAMS")]
    expect_streams: String,
    /// JetStream KV buckets fleet health expects, comma separated [default: none].
    #[arg(long, env = "ORRERY_EXPECT_KV")]
    expect_kv: String,
    /// JetStream object stores fleet health expects, comma separated [default: none].
    #[arg(long, env = "ORRERY_EXPECT_OBJECT_STORES")]
    expect_object_stores: String,
    /// The agents' heartbeat interval, in seconds; /system/stats/top looks back
    /// max(2 × this, 2 min) [default: 10].
    #[arg(long, env = "ORRERY_HEARTBEAT_INTERVAL_SECS")]
    heartbeat_interval_secs: u64,
    /// Stats samples older than this are pruned, in seconds [default: 86400].
    #[arg(long, env = "ORRERY_SAMPLE_RETENTION_SECS")]
    sample_retention_secs: u64,
    /// Deploy ledger entries kept per workload [default: 50].
    #[arg(long, env = "ORRERY_DEPLOY_HISTORY_KEEP")]
    deploy_history_keep: u32,

    /// Execution results (and their per-minute counts and durations) older than this are
    /// pruned, in seconds of event time; 0 keeps them for ever [default: 2592000].
    #[arg(long, env = "ORRERY_RESULTS_RETENTION_SECS")]
    results_retention_secs: u64,
    /// Alert events, their dedupe keys and recurrence groups last seen longer ago than this
    /// are pruned, in seconds; 0 keeps them for ever [default: 7776000].
    #[arg(long, env = "ORRERY_ALERTS_RETENTION_SECS")]
    alerts_retention_secs: u64,
    /// Applied or failed topology mutations older than this are pruned, in seconds; 0 keeps
    /// them for ever (topologies and pending mutations are never pruned) [default: 2592000].
    #[arg(long, env = "ORRERY_MUTATIONS_RETENTION_SECS")]
    mutations_retention_secs: u64,
    /// Dead letters older than this are pruned, in seconds; 0 keeps them for ever
    /// [default: 2592000].
    #[arg(long, env = "ORRERY_DEAD_LETTERS_RETENTION_SECS")]
    dead_letters_retention_secs: u64,
    /// Work-item dry-run and handoff history older than this is pruned, in seconds; 0 keeps
    /// it for ever [default: 31536000].
    #[arg(long, env = "ORRERY_WORK_ITEMS_RETENTION_SECS")]
    work_items_retention_secs: u64,

    /// Log format: `text` or `json` [default: text]. Levels follow RUST_LOG.
    #[arg(long, env = "ORRERY_LOG_FORMAT")]
    log_format: String,
}

/// Everything Orrery needs to run, validated and with defaults filled in.
#[derive(Clone, Debug)]
pub struct Config {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Replicas of provisioned streams.
    pub stream_replicas: usize,
    /// Retention of provisioned streams.
    pub stream_max_age: Duration,
    /// Whether missing streams are created (else waited for).
    pub provision_streams: bool,
    /// SQLite file path.
    pub database: PathBuf,
    /// Size of the read-only pool.
    pub readers: u32,
    /// The writer's page cache, in MiB.
    pub cache_mib: u32,
    /// HTTP listen address (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The built-in HS256 tokens' secret, if they are accepted.
    pub jwt_secret: Option<Secret>,
    /// Tokens from an OpenID provider, if they are accepted. Neither this nor a secret
    /// only with `--insecure-no-auth`.
    pub oidc: Option<crate::token::OidcConfig>,
    /// Projector batch size.
    pub batch_size: usize,
    /// Projector batch fill wait.
    pub batch_wait: Duration,
    /// Readiness lag threshold.
    pub ready_max_lag: u64,
    /// Live stream limits and timing.
    pub sse: SseConfig,
    /// Which browser origins may call the API.
    pub cors: Cors,
    /// `?wait=true` bound.
    pub mutation_wait: Duration,
    /// `/ready` answers 503 this long after SIGTERM before the daemon stops.
    pub drain_delay: Duration,
    /// Where snapshots go, if anywhere.
    pub snapshot: Option<crate::snapshot::SnapshotConfig>,
    /// Alert providers go stale after this.
    pub alert_stale_after: Duration,
    /// Fleet health settings.
    pub fleet: FleetConfig,
    /// How long each read model keeps its rows.
    pub retention: crate::retention::Retention,
    /// `true` for JSON logs.
    pub log_json: bool,
}

/// Which browser origins may call the API (credentials travel in the `Authorization` header
/// or an SSE ticket, never in cookies, so any origin is safe to allow).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cors {
    /// No CORS headers: only same-origin pages and non-browser clients.
    Off,
    /// Any origin (`*`).
    Any,
    /// These origins exactly.
    Origins(Vec<String>),
}

/// What fleet health expects and when it calls the fleet degraded.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// An agent is stale after this long without a heartbeat.
    pub stale_after: Duration,
    /// Degraded once stale agents / known agents reaches this (and one is stale).
    pub stale_share: f64,
    /// Degraded while a projection lags more than this.
    pub max_lag: u64,
    /// Streams beyond the provisioned ones that must exist.
    pub expect_streams: Vec<String>,
    /// KV buckets that must exist.
    pub expect_kv: Vec<String>,
    /// Object stores that must exist.
    pub expect_object_stores: Vec<String>,
    /// Agents' heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Age past which samples are pruned.
    pub sample_retention: Duration,
    /// Ledger entries kept per workload.
    pub deploy_history_keep: u32,
}

/// Limits of the SSE endpoint.
#[derive(Clone, Copy, Debug)]
pub struct SseConfig {
    /// Keepalive comment interval.
    pub keepalive: Duration,
    /// Streams per user.
    pub max_per_user: usize,
    /// Streams in all.
    pub max_connections: usize,
    /// Per-client queue before resync.
    pub client_queue: usize,
    /// Events retained per topology for resumes.
    pub replay_events: usize,
}

impl Settings {
    /// Merges flags/env (already in `self`) over the TOML file over defaults, then validates.
    /// A JWT secret is required (unless auth is disabled) when `needs_auth` is set.
    pub fn resolve(self) -> anyhow::Result<Config> {
        self.resolve_for(true)
    }

    /// [`Self::resolve`] for commands that serve no API (`migrate`, `rebuild`, `bench`).
    pub fn resolve_for(mut self, needs_auth: bool) -> anyhow::Result<Config> {
        if let Some(path) = self.config.clone() {
            self.fill_from(Self::from_file(&path)?);
        }
        self.into_config(needs_auth)
    }

    fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    fn snapshot(&self, replicas: usize) -> anyhow::Result<Option<crate::snapshot::SnapshotConfig>> {
        let interval = match self.snapshot_interval_secs.unwrap_or(3_600) {
            secs @ 1..=604_800 => Duration::from_secs(secs),
            secs => bail!("--snapshot-interval-secs {secs}: accepts 1 to 604800 (a week)"),
        };
        let keep = match self.snapshot_keep.unwrap_or(3) {
            n @ 1..=100 => n,
            n => bail!("--snapshot-keep {n}: accepts 1 to 100"),
        };
        let Some(bucket) = self.snapshot_bucket.as_deref() else {
            return Ok(None);
        };
        let valid = !bucket.is_empty()
            && bucket.len() <= 64
            && bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            bail!(
                "--snapshot-bucket `{}`: accepts a name of 1 to 64 characters from A-Z, a-z, \
                 0-9, `_` and `-`",
                bucket.escape_debug()
            );
        }
        Ok(Some(crate::snapshot::SnapshotConfig {
            bucket: bucket.to_owned(),
            interval,
            keep,
            replicas,
        }))
    }

    fn drain_delay(&self) -> anyhow::Result<Duration> {
        const MAX_MS: u64 = 300_000;
        match self.drain_delay_ms.unwrap_or(0) {
            ms @ 0..=MAX_MS => Ok(Duration::from_millis(ms)),
            ms => anyhow::bail!("--drain-delay-ms {ms}: accepts 0 to {MAX_MS} (five minutes)"),
        }
    }

    fn into_config(self, needs_auth: bool) -> anyhow::Result<Config> {
        let (stream_replicas, stream_max_age) = self.streams()?;
        let (batch_size, batch_wait, ready_max_lag) = self.projector()?;
        let (jwt_secret, oidc) = self.auth(needs_auth)?;
        Ok(Config {
            nats: self.nats()?,
            stream_replicas,
            stream_max_age,
            provision_streams: self.provision_streams.unwrap_or(true),
            database: match &self.database {
                None => PathBuf::from("./orrery.db"),
                Some(p) if p.as_os_str().is_empty() => {
                    bail!("--database: accepts the path of a SQLite file, not an empty one")
                }
                Some(p) => p.clone(),
            },
            readers: bounded("readers", self.readers, 4, 1, 256)?,
            cache_mib: bounded(
                "cache-mib",
                self.cache_mib,
                crate::db::DEFAULT_CACHE_MIB,
                2,
                65_536,
            )?,
            listen: self
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            jwt_secret,
            oidc,
            batch_size,
            batch_wait,
            ready_max_lag,
            sse: self.sse()?,
            cors: self.cors()?,
            mutation_wait: Duration::from_millis(bounded(
                "mutation-wait-ms",
                self.mutation_wait_ms,
                5_000,
                1,
                60_000,
            )?),
            drain_delay: self.drain_delay()?,
            snapshot: self.snapshot(stream_replicas)?,
            alert_stale_after: Duration::from_secs(bounded(
                "alert-stale-after-secs",
                self.alert_stale_after_secs,
                3_600,
                1,
                MONTH_SECS,
            )?),
            fleet: self.fleet()?,
            retention: self.retention()?,
            log_json: self.log_json()?,
        })
    }

    /// How to reach NATS.
    fn nats(&self) -> anyhow::Result<NatsConfig> {
        if self.nats_tls_cert.is_some() != self.nats_tls_key.is_some() {
            bail!("--nats-tls-cert and --nats-tls-key go together");
        }
        if self.nats_user.is_some() != self.nats_password.is_some() {
            bail!("--nats-user and --nats-password go together");
        }
        let url = self.nats_url.as_deref().unwrap_or("nats://127.0.0.1:4222");
        let servers: Vec<&str> = url.split(',').map(str::trim).collect();
        if servers
            .iter()
            .any(|s| s.is_empty() || s.parse::<async_nats::ServerAddr>().is_err())
        {
            bail!(
                "--nats-url `{}`: accepts NATS URLs separated by commas, e.g. \
                 nats://10.0.0.1:4222,nats://10.0.0.2:4222",
                url.escape_debug()
            );
        }
        if self
            .nats_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            bail!("--nats-token: accepts a non-empty token");
        }
        // An NKey user seed is base32 and starts with `SU`.
        if let Some(seed) = &self.nats_nkey {
            let base32 = |c: char| c.is_ascii_uppercase() || ('2'..='7').contains(&c);
            if !seed.starts_with("SU") || seed.len() < 32 || !seed.chars().all(base32) {
                bail!("--nats-nkey: accepts an NKey user seed (base32, starting with SU)");
            }
        }
        for (flag, file) in [
            ("nats-creds", &self.nats_creds),
            ("nats-tls-ca", &self.nats_tls_ca),
            ("nats-tls-cert", &self.nats_tls_cert),
            ("nats-tls-key", &self.nats_tls_key),
        ] {
            if let Some(path) = file.as_ref().filter(|p| !p.is_file()) {
                bail!(
                    "--{flag} {}: accepts the path of a readable file",
                    path.display()
                );
            }
        }
        Ok(NatsConfig {
            url: self
                .nats_url
                .clone()
                .unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
            user: self.nats_user.clone(),
            password: self.nats_password.clone().map(Secret::new),
            token: self.nats_token.clone().map(Secret::new),
            creds: self.nats_creds.clone(),
            nkey: self.nats_nkey.clone().map(Secret::new),
            tls_ca: self.nats_tls_ca.clone(),
            tls_cert: self.nats_tls_cert.clone(),
            tls_key: self.nats_tls_key.clone(),
        })
    }

    /// The streams Orrery creates: replicas and retention.
    fn streams(&self) -> anyhow::Result<(usize, Duration)> {
        let max_age = match self.stream_max_age.as_deref() {
            None => Duration::from_secs(7 * 86_400),
            Some(s) => crate::window::parse_duration(s)
                .with_context(|| format!("--stream-max-age `{s}`"))?,
        };
        // JetStream keeps max_age in nanoseconds (an i64): ten years is far from its limit.
        if max_age.is_zero() || max_age > Duration::from_secs(3_650 * 86_400) {
            bail!(
                "--stream-max-age {}: accepts a duration from 1s to 3650d, e.g. 7d",
                self.stream_max_age.as_deref().unwrap_or_default()
            );
        }
        // JetStream's own limit on replicas.
        let replicas = bounded("stream-replicas", self.stream_replicas, 1, 1, 5)?;
        Ok((replicas, max_age))
    }

    /// The projector's batches and the readiness lag: (batch size, batch wait, max lag).
    fn projector(&self) -> anyhow::Result<(usize, Duration, u64)> {
        let batch_size = bounded(
            "batch-size",
            self.batch_size,
            DEFAULT_BATCH_SIZE,
            1,
            100_000,
        )?;
        // 0 is meaningful for both: no linger, and a replica ready only when fully caught up.
        let batch_wait = bounded("batch-wait-ms", self.batch_wait_ms, 0, 0, 10_000)?;
        let max_lag = bounded(
            "ready-max-lag",
            self.ready_max_lag,
            10_000,
            0,
            1_000_000_000,
        )?;
        Ok((batch_size, Duration::from_millis(batch_wait), max_lag))
    }

    /// CORS: `*` alone for any origin, else a list of `scheme://host[:port]` origins.
    fn cors(&self) -> anyhow::Result<Cors> {
        let origins = list(self.cors_origins.as_deref());
        if origins.iter().any(|o| o == "*") {
            if origins.len() > 1 {
                bail!("--cors-origins: `*` (any origin) stands alone, not in a list");
            }
            return Ok(Cors::Any);
        }
        for origin in &origins {
            if !is_origin(origin) {
                bail!(
                    "--cors-origins: `{origin}` is not an origin; give scheme://host[:port] \
                     (e.g. https://dash.example), or `*` for any"
                );
            }
        }
        Ok(if origins.is_empty() {
            Cors::Off
        } else {
            Cors::Origins(origins)
        })
    }

    /// `true` for JSON logs.
    fn log_json(&self) -> anyhow::Result<bool> {
        match self.log_format.as_deref().unwrap_or("text") {
            "text" => Ok(false),
            "json" => Ok(true),
            other => bail!("--log-format must be `text` or `json`, not `{other}`"),
        }
    }
}

#[cfg(test)]
mod tests;

mod auth;
mod limits;
mod values;

use values::{bounded, is_origin, list, names, MONTH_SECS};
