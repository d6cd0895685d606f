-- Runs linked to alerts leave with the results' retention, by their own time. A group's
-- figures are running totals that pruning a run leaves alone (as an alert recurrence
-- group's counts are); the group itself goes, with its incidents, once its newest run is
-- past the retention (see `projections::results::runs`).
ALTER TABLE alert_run_groups ADD COLUMN newest_recorded_at INTEGER NOT NULL DEFAULT 0;
UPDATE alert_run_groups SET newest_recorded_at = COALESCE((
    SELECT MAX(r.recorded_at) FROM alert_runs r
    WHERE r.recurrence_key = alert_run_groups.recurrence_key
      AND r.project_id IS NULLIF(alert_run_groups.project_id, '')), 0);

-- The pruner walks both from the oldest end.
CREATE INDEX alert_run_groups_by_newest ON alert_run_groups (newest_recorded_at);
CREATE INDEX alert_runs_by_time ON alert_runs (recorded_at);

-- A group's incidents go with it, whoever deletes it (the pruner, a run that finds its
-- group expired, a rebuild).
CREATE TRIGGER alert_run_groups_incidents AFTER DELETE ON alert_run_groups BEGIN
    DELETE FROM alert_run_incidents
    WHERE recurrence_key = old.recurrence_key AND project_id = old.project_id;
END;
