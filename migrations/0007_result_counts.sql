-- Results per kind, outcome and minute of recorded_at, so that a badge or health count over
-- a day adds up ~1,440 rows plus two partial minutes instead of counting every result.
CREATE TABLE result_counts (
    kind    TEXT NOT NULL,
    success INTEGER NOT NULL,
    minute  INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (kind, success, minute)
) WITHOUT ROWID;
