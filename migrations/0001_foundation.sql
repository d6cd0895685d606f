-- Projector bookkeeping and the execution results read model.
-- Times are Unix milliseconds taken from the event or its JetStream publish time.

CREATE TABLE checkpoints (
    stream     TEXT PRIMARY KEY NOT NULL,
    last_seq   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    stream      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    subject     TEXT NOT NULL,
    reason      TEXT NOT NULL,
    payload     BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    UNIQUE (stream, seq)
);

CREATE TABLE execution_results (
    result_id   TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    job_id      TEXT,
    exit_code   INTEGER,
    success     INTEGER NOT NULL CHECK (success IN (0, 1)),
    started_at  INTEGER,
    finished_at INTEGER,
    recorded_at INTEGER NOT NULL,
    seq         INTEGER NOT NULL
);

-- The failure-count badge counts from this index alone. Queries over all kinds add up one
-- range count per row of result_kinds instead of keeping a second index on every insert
-- (measured: a (success, recorded_at) index costs a quarter of ingest throughput).
CREATE INDEX execution_results_kind_success_time ON execution_results (kind, success, recorded_at);

CREATE TABLE result_kinds (
    kind TEXT PRIMARY KEY NOT NULL
) WITHOUT ROWID;
