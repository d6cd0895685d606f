//! The live stream's limits and what fleet health expects: bounds checked like every
//! setting.

use std::time::Duration;

use super::{bounded, names, FleetConfig, Settings, SseConfig, MONTH_SECS};

impl Settings {
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
