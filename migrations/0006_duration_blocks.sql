-- Scan durations per job and hour of finish, one block per batch, job and hour, written by
-- the results projection so that /results/durations reads blocks, not every result.
-- `vals` holds "finished_at:ms" pairs separated by commas; `max_key` is the zero-padded
-- longest duration followed by its result_id, so MAX() picks the longest, ties by id.
CREATE TABLE duration_blocks (
    hour    INTEGER NOT NULL,
    job_id  TEXT NOT NULL,
    vals    TEXT NOT NULL,
    n       INTEGER NOT NULL,
    sum_ms  INTEGER NOT NULL,
    max_key TEXT NOT NULL
);

-- A background task merges the blocks of each (hour, job) into one.
CREATE INDEX duration_blocks_by_hour ON duration_blocks (hour, job_id);
