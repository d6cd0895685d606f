//! The live stream's limits and what fleet health expects: bounds checked like every
//! setting.

use std::time::Duration;

use super::{bounded, names, FleetConfig, Settings, SseConfig, MONTH_SECS};

/// The longest retention a read model takes: ten years.
const MAX_RETENTION_SECS: u64 = 3_650 * 86_400;

impl Settings {
    /// How long each read model keeps its rows (0: for ever).
    pub(super) fn retention(&self) -> anyhow::Result<crate::retention::Retention> {
        let defaults = crate::retention::Retention::default();
        let secs = |flag: &str, value: Option<u64>, default: Duration| {
            bounded(flag, value, default.as_secs(), 0, MAX_RETENTION_SECS).map(Duration::from_secs)
        };
        Ok(crate::retention::Retention {
            results: secs(
                "results-retention-secs",
                self.results_retention_secs,
                defaults.results,
            )?,
            alerts: secs(
                "alerts-retention-secs",
                self.alerts_retention_secs,
                defaults.alerts,
            )?,
            mutations: secs(
                "mutations-retention-secs",
                self.mutations_retention_secs,
                defaults.mutations,
            )?,
            dead_letters: secs(
                "dead-letters-retention-secs",
                self.dead_letters_retention_secs,
                defaults.dead_letters,
            )?,
            work_items: secs(
                "work-items-retention-secs",
                self.work_items_retention_secs,
                defaults.work_items,
            )?,
            samples: self.fleet()?.sample_retention,
        })
    }

    /// The live stream's limits and timing.
    pub(super) fn sse(&self) -> anyhow::Result<SseConfig> {
        Ok(SseConfig {
            keepalive: Duration::from_secs(bounded(
                "sse-keepalive-secs",
                self.sse_keepalive_secs,
                15,
                1,
                3_600,
            )?),
            max_per_user: bounded(
                "sse-max-streams-per-user",
                self.sse_max_streams_per_user,
                5,
                1,
                1_000_000,
            )?,
            max_connections: bounded(
                "sse-max-connections",
                self.sse_max_connections,
                10_000,
                1,
                1_000_000,
            )?,
            client_queue: bounded(
                "sse-client-queue",
                self.sse_client_queue,
                1024,
                1,
                1_000_000,
            )?,
            replay_events: bounded(
                "sse-replay-events",
                self.sse_replay_events,
                1000,
                1,
                1_000_000,
            )?,
        })
    }

    /// What fleet health expects and when it calls the fleet degraded.
    pub(super) fn fleet(&self) -> anyhow::Result<FleetConfig> {
        let stale_share = bounded("fleet-stale-share", self.fleet_stale_share, 1.0, 0.0, 1.0)?;
        Ok(FleetConfig {
            stale_after: Duration::from_secs(bounded(
                "agent-stale-after-secs",
                self.agent_stale_after_secs,
                120,
                1,
                MONTH_SECS,
            )?),
            stale_share,
            max_lag: bounded(
                "fleet-max-lag",
                self.fleet_max_lag,
                10_000,
                0,
                1_000_000_000,
            )?,
            expect_streams: names("expect-streams", self.expect_streams.as_deref())?,
            expect_kv: names("expect-kv", self.expect_kv.as_deref())?,
            expect_object_stores: names(
                "expect-object-stores",
                self.expect_object_stores.as_deref(),
            )?,
            heartbeat_interval: Duration::from_secs(bounded(
                "heartbeat-interval-secs",
                self.heartbeat_interval_secs,
                10,
                1,
                86_400,
            )?),
            sample_retention: Duration::from_secs(bounded(
                "sample-retention-secs",
                self.sample_retention_secs,
                86_400,
                60,
                MONTH_SECS,
            )?),
            deploy_history_keep: bounded(
                "deploy-history-keep",
                self.deploy_history_keep,
                50,
                1,
                100_000,
            )?,
        })
    }
}
