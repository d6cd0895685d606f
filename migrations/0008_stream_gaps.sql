-- Ranges of a stream a projection never saw: the stream no longer held them (retention,
-- max_msgs, a purge) when the projection reached them. Written in the batch's transaction,
-- reported by /ready and the metrics, cleared by `orrery rebuild` of that stream.
CREATE TABLE stream_gaps (
    stream      TEXT NOT NULL,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    detected_at INTEGER NOT NULL,
    PRIMARY KEY (stream, first_seq)
) WITHOUT ROWID;
