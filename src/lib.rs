//! Orrery turns a NATS JetStream bus into live, queryable state.
//!
//! Agents, mutators and alert bridges publish events to JetStream; the [`projector`] consumes
//! each stream in batches and applies them to SQLite read models ([`projections`]) in one
//! transaction per batch together with the stream checkpoint; the [`api`] serves queries from
//! a read-only pool. The bus is the source of truth: the database can be deleted and rebuilt
//! from the streams at any time.

pub mod api;
pub mod app;
pub mod bench;
pub mod bus;
pub mod config;
pub mod db;
pub mod live;
pub mod natsd;
pub mod projections;
pub mod projector;
pub mod rebuild;
pub mod redact;
pub mod window;

pub use app::Application;
pub use config::{Config, Settings};
