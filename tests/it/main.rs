//! Integration tests: one binary, a real nats-server per test, a real SQLite file per daemon.

mod alerts;
mod api;
mod backup;
mod browser;
mod cdp;
mod client;
mod cluster;
mod consistency;
mod dashboard;
mod demo;
mod deploy;
mod durability;
mod engine;
mod fleet;
mod handoff;
mod helpers;
mod live;
mod oidc;
mod openapi;
mod results;
mod scope;
mod security;
mod settings;
mod snapshot;
mod telemetry;
mod work_items;
