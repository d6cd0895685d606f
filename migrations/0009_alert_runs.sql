-- Runs linked to alerts (RESULTS events whose data.links names an alert event or a
-- recurrence key). `project_id`/`recurrence_key` are the group the run belongs to: set at
-- once for a link by key (project_id NULL: that key in every project), and for a link by
-- event once the alert is projected too — by whichever projection comes second.
CREATE TABLE alert_runs (
    result_id      TEXT PRIMARY KEY NOT NULL,
    seq            INTEGER NOT NULL,
    agent_id       TEXT NOT NULL,
    recorded_at    INTEGER NOT NULL,
    link_provider  TEXT,
    link_event_id  TEXT,
    incident_id    TEXT,
    run_state      TEXT NOT NULL
        CHECK (run_state IN ('running', 'succeeded', 'failed', 'needs_approval')),
    repair         TEXT NOT NULL CHECK (repair IN ('auto', 'manual', 'none')),
    verified       INTEGER NOT NULL CHECK (verified IN (0, 1)),
    project_id     TEXT,
    recurrence_key TEXT
);

-- A group's runs, newest last.
CREATE INDEX alert_runs_by_group ON alert_runs (recurrence_key, project_id, seq);
-- Runs waiting for their alert.
CREATE INDEX alert_runs_by_event ON alert_runs (link_event_id, link_provider)
    WHERE link_event_id IS NOT NULL;
