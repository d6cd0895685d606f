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

-- A group's runs (to rebuild its figures).
CREATE INDEX alert_runs_by_group ON alert_runs (recurrence_key, project_id, seq);-- Runs waiting for their alert.
CREATE INDEX alert_runs_by_event ON alert_runs (link_event_id, link_provider)
    WHERE link_event_id IS NOT NULL;

-- What the runs of each group add up to, kept by the projections as runs get their group
-- (so /alerts/recurrence reads a row per group, not every run). project_id '' holds the
-- runs linked by key alone, which count for that key in every project.
CREATE TABLE alert_run_groups (
    recurrence_key     TEXT NOT NULL,
    project_id         TEXT NOT NULL,
    total              INTEGER NOT NULL,
    running            INTEGER NOT NULL,
    succeeded          INTEGER NOT NULL,
    failed             INTEGER NOT NULL,
    needs_approval     INTEGER NOT NULL,
    auto               INTEGER NOT NULL,
    manual             INTEGER NOT NULL,
    none               INTEGER NOT NULL,
    verified           INTEGER NOT NULL,
    latest_seq         INTEGER NOT NULL,
    latest_result_id   TEXT NOT NULL,
    latest_agent_id    TEXT NOT NULL,
    latest_state       TEXT NOT NULL,
    latest_repair      TEXT NOT NULL,
    latest_verified    INTEGER NOT NULL,
    latest_incident_id TEXT,
    -- The newest run that was a repair (auto or manual), if any.
    repair_seq         INTEGER,
    repair_result_id   TEXT,
    repair_kind        TEXT,
    repair_state       TEXT,
    repair_verified    INTEGER,
    PRIMARY KEY (recurrence_key, project_id)
) WITHOUT ROWID;

CREATE TABLE alert_run_incidents (
    recurrence_key TEXT NOT NULL,
    project_id     TEXT NOT NULL,
    incident_id    TEXT NOT NULL,
    PRIMARY KEY (recurrence_key, project_id, incident_id)
) WITHOUT ROWID;
