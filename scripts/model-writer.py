#!/usr/bin/env python3
"""A model of the results writer: what SQLite alone costs per row of `execution_results`.

Usage: scripts/model-writer.py VARIANT ROWS [DIR]

Writes ROWS random results (UUID v4 ids, 4 kinds, 300 agents, 7 jobs, finish times at random
over 24 h, 10% failing) into a fresh database in DIR (default /tmp) with the daemon's settings
(16 KiB pages, WAL, synchronous NORMAL), in transactions of PER_TX batches of BATCH rows,
each batch sorted as the daemon sorts it, and prints µs per row per transaction and overall.
Python's own cost is included, so compare variants with each other, in one sitting, with
nothing else running: repeated runs of one variant differ by ±15%.

VARIANT is the table's shape:
  text   as built: text result id (unique), the (kind, success, recorded_at) index
  blob   the result id as a 16-byte blob
  sep    the time index as a WITHOUT ROWID table of its own, each written in its own order
  nokst  no time index
  noid   no result id index
  bare   no index at all

Environment: BATCH (32768), PER_TX (8), CACHE_KIB (262144, the daemon's --cache-mib 256).
Needs SQLite 3.51 as the daemon bundles it: `pip install pysqlite3-binary` (falls back to the
system's sqlite3 module).
"""
import os
import random
import sys
import time
import uuid

try:
    import pysqlite3 as sqlite3
except ImportError:
    import sqlite3

VARIANTS = ("text", "blob", "sep", "nokst", "noid", "bare")


def main() -> None:
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in VARIANTS or not sys.argv[2].isdigit():
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(VARIANTS)}}} ROWS [DIR]")
    variant, total = sys.argv[1], int(sys.argv[2])
    path = os.path.join(sys.argv[3] if len(sys.argv) == 4 else "/tmp", f"model-{variant}.db")
    batch = int(os.environ.get("BATCH", "32768"))
    per_tx = int(os.environ.get("PER_TX", "8"))
    cache_kib = int(os.environ.get("CACHE_KIB", "262144"))
    for suffix in ("", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA page_size=16384")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA cache_size=-{cache_kib}")
    id_type = "BLOB" if variant == "blob" else "TEXT"
    unique = "" if variant in ("noid", "bare") else "PRIMARY KEY"
    db.execute(
        f"""CREATE TABLE execution_results (
        result_id {id_type} {unique} NOT NULL, kind TEXT NOT NULL, agent_id TEXT NOT NULL,
        job_id TEXT, exit_code INTEGER, success INTEGER NOT NULL CHECK (success IN (0, 1)),
        started_at INTEGER, finished_at INTEGER, recorded_at INTEGER NOT NULL,
        seq INTEGER NOT NULL)"""
    )
    if variant == "sep":
        db.execute(
            "CREATE TABLE result_times (kind TEXT NOT NULL, success INTEGER NOT NULL, "
            "recorded_at INTEGER NOT NULL, rid INTEGER NOT NULL, "
            "PRIMARY KEY (kind, success, recorded_at, rid)) WITHOUT ROWID"
        )
    elif variant not in ("nokst", "bare"):
        db.execute("CREATE INDEX kst ON execution_results (kind, success, recorded_at)")

    rng = random.Random(7)
    now = 1_796_032_800_000
    kinds = ["traffic", "file", "email", "job"]
    agents = [f"agent-{i:04}" for i in range(300)]
    jobs = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(7)]
    seq, per_row = 0, []
    while seq < total:
        rows = []
        for _ in range(min(batch * per_tx, total - seq)):
            seq += 1
            u = uuid.UUID(int=rng.getrandbits(128), version=4)
            finished = now - rng.randrange(86_400_000)
            ok = 0 if rng.random() < 0.1 else 1
            rows.append((u.bytes if variant == "blob" else str(u), rng.choice(kinds),
                         rng.choice(agents), rng.choice(jobs), 1 - ok, ok,
                         finished - rng.randrange(200, 30_000), finished, finished, seq))
        began = time.perf_counter()
        db.execute("BEGIN")
        for i in range(0, len(rows), batch):
            write(db, variant, rows[i:i + batch])
        db.execute("COMMIT")
        per_row.append((time.perf_counter() - began) / len(rows) * 1e6)
        print(f"{variant} {seq:>10} rows: {per_row[-1]:.2f} µs per row", flush=True)
    quarter = per_row[3 * len(per_row) // 4:]
    print(f"{variant}: {sum(per_row) / len(per_row):.2f} µs per row, last quarter "
          f"{sum(quarter) / len(quarter):.2f}, database {os.path.getsize(path) / 2**20:.0f} MiB")


def write(db, variant: str, part: list) -> None:
    """Writes one batch as the daemon would for this variant."""
    if variant == "sep":
        # Table rows in id order (its unique index takes them in order), explicit rowids
        # for the time table to point at, which takes its own rows in its order.
        part.sort(key=lambda r: r[0])
        db.executemany(
            "INSERT OR IGNORE INTO execution_results (rowid, result_id, kind, agent_id, job_id, "
            "exit_code, success, started_at, finished_at, recorded_at, seq) "
            "VALUES (?10, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)", part)
        part.sort(key=lambda r: (r[1], r[5], r[8], r[9]))
        db.executemany("INSERT INTO result_times VALUES (?, ?, ?, ?)",
                       [(r[1], r[5], r[8], r[9]) for r in part])
        return
    part.sort(key=lambda r: (r[1], r[5], r[8]))
    db.executemany(
        "INSERT OR IGNORE INTO execution_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", part)


if __name__ == "__main__":
    main()
