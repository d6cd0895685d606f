-- The alert dossier (ALERTS stream). Times are Unix milliseconds; `received_at` is the
-- JetStream publish time, so replays give identical rows.

CREATE TABLE alert_events (
    seq                  INTEGER PRIMARY KEY NOT NULL,
    event_id             TEXT NOT NULL,
    project_id           TEXT NOT NULL,
    provider             TEXT NOT NULL,
    stage                TEXT NOT NULL CHECK (stage IN ('firing', 'resolved', 'heartbeat')),
    provider_event_id    TEXT NOT NULL,
    alertname            TEXT,
    severity             TEXT,
    namespace            TEXT,
    target_resource      TEXT,
    fingerprint          TEXT,
    recurrence_key       TEXT,
    labels               TEXT,
    annotations          TEXT,
    -- Only ever the redacted text; the original survives as its hash and length.
    content_redacted     TEXT,
    content_sha256       TEXT,
    content_length       INTEGER,
    has_redacted_content INTEGER NOT NULL CHECK (has_redacted_content IN (0, 1)),
    redaction_version    INTEGER NOT NULL,
    source_url           TEXT,
    source_refs          TEXT,
    source_ref_total     INTEGER NOT NULL,
    is_duplicate         INTEGER NOT NULL CHECK (is_duplicate IN (0, 1)),
    is_synthetic         INTEGER NOT NULL CHECK (is_synthetic IN (0, 1)),
    provider_ts          INTEGER,
    received_at          INTEGER NOT NULL
);

CREATE INDEX alert_events_by_project ON alert_events (project_id, seq);
CREATE INDEX alert_events_by_provider_event ON alert_events (provider_event_id, seq);

-- First sighting of each (provider, provider_event_id): later ones are duplicates.
CREATE TABLE alert_event_keys (
    provider          TEXT NOT NULL,
    provider_event_id TEXT NOT NULL,
    PRIMARY KEY (provider, provider_event_id)
) WITHOUT ROWID;

-- One row per recurrence group, kept up to date by the projection so that /recurrence
-- reads `limit` rows instead of grouping a million events. Synthetic heartbeats never land here.
CREATE TABLE alert_recurrence (
    project_id         TEXT NOT NULL,
    recurrence_key     TEXT NOT NULL,
    provider           TEXT NOT NULL,
    occurrence_total   INTEGER NOT NULL,
    duplicate_total    INTEGER NOT NULL,
    first_received_at  INTEGER NOT NULL,
    latest_received_at INTEGER NOT NULL,
    latest_seq         INTEGER NOT NULL,
    PRIMARY KEY (project_id, recurrence_key)
);

CREATE INDEX alert_recurrence_latest ON alert_recurrence (latest_seq);
CREATE INDEX alert_recurrence_by_project ON alert_recurrence (project_id, latest_seq);

-- Last event per provider and project, heartbeats included, for /alerts/freshness.
CREATE TABLE alert_freshness (
    provider         TEXT NOT NULL,
    project_id       TEXT NOT NULL,
    last_received_at INTEGER NOT NULL,
    last_stage       TEXT NOT NULL,
    PRIMARY KEY (provider, project_id)
) WITHOUT ROWID;
