-- Fleet read models: agents and their samples (HEARTBEATS), the deploy ledger (RESULTS).
-- Times are Unix milliseconds from the event (envelope time, else JetStream publish time).

CREATE TABLE agents (
    agent_id       TEXT PRIMARY KEY NOT NULL,
    hostname       TEXT,
    version        TEXT,
    labels         TEXT,
    last_heartbeat INTEGER NOT NULL,
    last_seq       INTEGER NOT NULL
);

-- Stale counts are one range count on this index.
CREATE INDEX agents_by_heartbeat ON agents (last_heartbeat);

CREATE TABLE system_stats_samples (
    seq          INTEGER PRIMARY KEY NOT NULL,
    agent_id     TEXT NOT NULL,
    at           INTEGER NOT NULL,
    cpu_percent  REAL,
    memory_usage INTEGER,
    memory_limit INTEGER
);

CREATE INDEX system_stats_by_agent ON system_stats_samples (agent_id, at);
CREATE INDEX system_stats_by_time ON system_stats_samples (at);

CREATE TABLE container_stats_samples (
    seq          INTEGER NOT NULL,
    idx          INTEGER NOT NULL,
    agent_id     TEXT NOT NULL,
    container_id TEXT NOT NULL,
    workload_id  TEXT,
    role         TEXT,
    at           INTEGER NOT NULL,
    cpu_percent  REAL,
    memory_usage INTEGER,
    memory_limit INTEGER,
    PRIMARY KEY (seq, idx)
);

CREATE INDEX container_stats_by_workload ON container_stats_samples (workload_id, at);
CREATE INDEX container_stats_by_time ON container_stats_samples (at);

-- Workloads known from container samples or deploy results (so a known workload with no
-- samples answers [] and an unknown one 404).
CREATE TABLE workloads (
    workload_id TEXT PRIMARY KEY NOT NULL
) WITHOUT ROWID;

-- The raw error text of a failed deploy is never stored: only a generic marker.
CREATE TABLE deploy_history (
    deploy_id    TEXT PRIMARY KEY NOT NULL,
    workload_id  TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    reference    TEXT,
    reason       TEXT NOT NULL CHECK (reason IN ('deploy', 'rollback')),
    success      INTEGER NOT NULL CHECK (success IN (0, 1)),
    error_marker TEXT,
    recorded_at  INTEGER NOT NULL,
    seq          INTEGER NOT NULL
);

CREATE INDEX deploy_history_by_workload ON deploy_history (workload_id, recorded_at, seq);
