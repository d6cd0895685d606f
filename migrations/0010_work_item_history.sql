-- The pre-flight history of alert work items: every dry-run and handoff published on
-- WORKITEMS, as the API answers it. `entry_id` is the envelope id (an Idempotency-Key
-- names it), so an entry re-published after JetStream's duplicate window is kept once.
CREATE TABLE work_item_history (
    seq                  INTEGER PRIMARY KEY NOT NULL,
    entry_id             TEXT NOT NULL UNIQUE,
    work_item_id         TEXT NOT NULL,
    project_id           TEXT NOT NULL,
    kind                 TEXT NOT NULL CHECK (kind IN ('dry_run', 'handoff')),
    mode                 TEXT NOT NULL,
    handoff_kind         TEXT,
    passed               INTEGER NOT NULL CHECK (passed IN (0, 1)),
    occurrences          INTEGER NOT NULL,
    latest_occurrence_at INTEGER NOT NULL,
    recorded_at          INTEGER NOT NULL,
    entry                TEXT NOT NULL
);

CREATE INDEX work_item_history_by_item ON work_item_history (work_item_id, kind, seq);
