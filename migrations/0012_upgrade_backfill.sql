-- What a database written by an older release lacks next to what a rebuild holds.
--
-- Figures derived from rows (reference counts per kind, results per minute) are computed
-- here, as the projections compute them. Fields an older release read past and never stored
-- (a run's link to an alert before schema 9, a deploy's workload before schema 5) can only
-- come from the stream: `stream_rereads` asks the RESULTS projector to read its stream again
-- up to where that release had projected, before it goes on (`projector::reread`).

-- Schema 4 added these counts without computing them for existing events.
UPDATE alert_events
SET source_ref_counts = (
    SELECT COALESCE(json_group_object(key, CASE type
        WHEN 'array' THEN json_array_length(value)
        WHEN 'null' THEN 0
        ELSE 1 END), '{}')
    FROM json_each(alert_events.source_refs)
)
WHERE source_ref_counts IS NULL;

-- Schema 7 added the per-minute counts without counting existing results. A minute already
-- counted was counted by the projection, whole, so only minutes never counted are added.
INSERT OR IGNORE INTO result_counts (kind, success, minute, n)
SELECT kind, success, recorded_at / 60000, COUNT(*)
FROM execution_results
GROUP BY kind, success, recorded_at / 60000;

-- Streams to read again up to `through_seq`, with progress in `done_seq`.
CREATE TABLE stream_rereads (
    stream      TEXT PRIMARY KEY NOT NULL,
    through_seq INTEGER NOT NULL,
    done_seq    INTEGER NOT NULL DEFAULT 0
);

-- A database older than schema 9 (its first migration ran before migration 9, rather than
-- in the same run) may hold results projected by a release that dropped their links.
INSERT INTO stream_rereads (stream, through_seq)
SELECT 'RESULTS', last_seq FROM checkpoints
WHERE stream = 'RESULTS' AND last_seq > 0
  AND (SELECT installed_on FROM _sqlx_migrations WHERE version = 9)
    > (SELECT installed_on FROM _sqlx_migrations WHERE version = 1);
