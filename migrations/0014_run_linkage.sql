-- Linking a run to its alert without reading the alert, and without indexing runs that
-- found it (measured by `orrery bench alerts`: the seek into the wide alert row and the
-- run's entry in the waiting index were a third of a linked run's cost).

-- Each dedupe key keeps the group of the sighting that set it (the latest first sighting:
-- a key expired and seen again starts over), so a run finds its group in this small table.
-- NULL recurrence_key: that sighting had no group (a synthetic heartbeat).
ALTER TABLE alert_event_keys ADD COLUMN project_id TEXT;
ALTER TABLE alert_event_keys ADD COLUMN recurrence_key TEXT;
UPDATE alert_event_keys SET (project_id, recurrence_key) = (
    SELECT e.project_id, e.recurrence_key FROM alert_events e
    WHERE e.provider_event_id = alert_event_keys.provider_event_id
      AND e.provider = alert_event_keys.provider AND e.is_duplicate = 0
    ORDER BY e.seq DESC LIMIT 1);

-- Only runs still waiting for their alert are looked up by it: a run that arrives after its
-- alert (the usual order) has its group at once and never enters this index.
DROP INDEX alert_runs_by_event;
CREATE INDEX alert_runs_waiting ON alert_runs (link_event_id, link_provider)
    WHERE link_event_id IS NOT NULL AND recurrence_key IS NULL;
