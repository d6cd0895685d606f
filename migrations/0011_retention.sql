-- Retention by event time (see src/retention.rs).
--
-- `high_water_ms` is the newest JetStream publish time a projection has committed: every
-- replica at the same checkpoint has the same one, so "older than the retention" means the
-- same rows everywhere, whatever each replica's clock says.
ALTER TABLE checkpoints ADD COLUMN high_water_ms INTEGER NOT NULL DEFAULT 0;
UPDATE checkpoints SET high_water_ms = updated_at;

-- When each dedupe key was first seen, so that a key whose event has left the retention
-- counts as new again on every replica, pruned or not.
ALTER TABLE alert_event_keys ADD COLUMN first_received_at INTEGER NOT NULL DEFAULT 0;
UPDATE alert_event_keys SET first_received_at = COALESCE((
    SELECT MIN(e.received_at) FROM alert_events e
    WHERE e.provider_event_id = alert_event_keys.provider_event_id
      AND e.provider = alert_event_keys.provider), 0);

-- The pruner walks these from the oldest end.
CREATE INDEX alert_event_keys_by_time ON alert_event_keys (first_received_at);
CREATE INDEX alert_recurrence_by_time ON alert_recurrence (latest_received_at);
CREATE INDEX topology_mutations_finished ON topology_mutations (updated_at)
    WHERE state IN ('applied', 'failed');
