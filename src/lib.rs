//! Orrery turns a NATS JetStream bus into live, queryable state.
//!
//! Agents, mutators and alert bridges publish events to JetStream; the [`projector`] consumes
//! each stream in batches and applies them to SQLite read models ([`projections`]) in one
//! transaction per batch together with the stream checkpoint; the [`api`] serves queries from
//! a read-only pool. The bus is the source of truth: the database can be deleted and rebuilt
//! from the streams at any time.
//!
//! # Layout
//! - [`api`]: the axum HTTP surface, one module per URL resource, one error type.
//! - [`app`]: builds the daemon from a [`Config`] and runs it until shutdown.
//! - [`bus`]: NATS connection, stream provisioning, subjects, the envelope, publishing.
//! - [`dashboard`]: the embedded web page at `/` (HTML, CSS, ES modules; strict CSP).
//! - [`config`]: layered settings resolved into a validated [`Config`], section by section.
//! - [`db`]: the SQLite file: one writer, a read-only pool, migrations.
//! - [`digest`]: per read model, its checkpoint and a hash of its rows: replicas agree.
//! - [`live`]: the in-process hub that fans committed topology events out to SSE streams.
//! - [`natsd`]: starts a private `nats-server` for tests and benchmarks.
//! - [`projections`]: one module per read model, and the roster of them all.
//! - [`projector`]: the engine: batch → one transaction with the checkpoint → commit.
//! - [`rebuild`]: `orrery rebuild`, resetting read models and replaying them.
//! - [`redact`]: secret redaction for alert text.
//! - [`retention`]: how long each read model keeps its rows, by event time.
//! - [`secret`]: a value that never shows in logs (passwords, seeds, signing keys).
//! - [`snapshot`]: database snapshots in a JetStream object store, for fresh replicas.
//! - [`sync`]: locks that outlive a panic elsewhere.
//! - [`telemetry`]: Prometheus metrics (OpenMetrics text) without touching the hot path.
//! - [`token`]: roles, claims, minting and verifying API tokens.
//! - [`window`]: times and durations: parsing, formatting, Unix milliseconds.

pub mod api;
pub mod app;
pub mod backup;
pub mod bus;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod digest;
pub mod live;
pub mod natsd;
pub mod projections;
pub mod projector;
pub mod rebuild;
pub mod redact;
pub mod retention;
pub mod secret;
pub mod snapshot;
pub mod sync;
pub mod telemetry;
pub mod token;
pub mod window;

pub use app::{Application, Refusal};
pub use config::{Config, Settings};
