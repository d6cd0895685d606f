-- The topology read model (TOPOLOGY stream). Times are Unix milliseconds from the event.

CREATE TABLE topologies (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT,
    status     TEXT,
    updated_at INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL
);

-- Mutation ids are unique within their topology: an event naming another topology's
-- mutation can never change it.
CREATE TABLE topology_mutations (
    topology_id TEXT NOT NULL,
    mutation_id TEXT NOT NULL,
    op          TEXT,
    spec        TEXT,
    actor       TEXT,
    state       TEXT NOT NULL CHECK (state IN ('enqueued', 'applying', 'applied', 'failed')),
    error       TEXT,
    enqueued_at INTEGER,
    enqueued_seq INTEGER,
    updated_at  INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (topology_id, mutation_id)
);

-- Snapshots list in-flight mutations per topology; the mutations endpoint filters by state.
CREATE INDEX topology_mutations_by_state ON topology_mutations (topology_id, state, seq);
CREATE INDEX topology_mutations_by_seq ON topology_mutations (topology_id, seq);
