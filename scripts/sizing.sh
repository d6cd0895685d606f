#!/usr/bin/env bash
# Disk and memory per read model, measured: `orrery demo` traffic (every subject family, in
# the demo's proportions) into a private nats-server and a daemon on a fresh database; once
# the daemon has caught up, SQLite's own page accounting (dbstat) per table and index,
# grouped by read model, divided by the events of its stream; and the daemon's peak RSS.
#
#   scripts/sizing.sh [SECONDS] [RATE] [AGENTS]     defaults: 120 s at 1000 events/s, 500 agents
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
secs=${1:-120}
rate=${2:-1000}
agents=${3:-500}

work=$(mktemp -d)
nats_pid=""
orrery_pid=""
cleanup() {
  if [ -n "$orrery_pid" ]; then kill -TERM "$orrery_pid" 2>/dev/null; wait "$orrery_pid" 2>/dev/null; fi
  if [ -n "$nats_pid" ]; then kill "$nats_pid" 2>/dev/null; wait "$nats_pid" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cargo build --release --quiet
orrery=target/release/orrery
nats=$(scripts/ensure-nats-server.sh)
nport=$(free_port)
"$nats" -js -a 127.0.0.1 -p "$nport" -sd "$work/nats" >"$work/nats.log" 2>&1 &
nats_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$nport") 2>/dev/null && break; sleep 0.05; done

export ORRERY_NATS_URL="nats://127.0.0.1:$nport" ORRERY_DATABASE="$work/orrery.db"
export ORRERY_JWT_SECRET=sizing-secret-sizing-secret-sizing-secret RUST_LOG=warn
hport=$(free_port)
ORRERY_LISTEN="127.0.0.1:$hport" "$orrery" serve >"$work/orrery.log" 2>&1 &
orrery_pid=$!
echo "demo traffic: ${secs} s at ${rate} events/s, $agents agents" >&2
"$orrery" demo --rate "$rate" --duration "${secs}s" --agents "$agents" >/dev/null 2>&1
until curl -sf "http://127.0.0.1:$hport/ready" | python3 -c '
import json, sys
r = json.load(sys.stdin)
sys.exit(0 if r["status"] == "ready" and all(p["lag"] == 0 for p in r["projections"]) else 1)'; do
  sleep 0.5
done
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$orrery_pid/status")
kill -TERM "$orrery_pid"; wait "$orrery_pid" || true; orrery_pid=""

"$orrery" digest >"$work/digest.json"
sqlite3 -json "$work/orrery.db" "SELECT m.tbl_name AS tbl, SUM(d.pgsize) AS bytes FROM dbstat d
  JOIN sqlite_master m ON m.name = d.name GROUP BY m.tbl_name" >"$work/sizes.json"
python3 - "$work/digest.json" "$work/sizes.json" "$hwm" "$(stat -c %s "$work/orrery.db")" <<'EOF'
import json, sys
digest = json.load(open(sys.argv[1]))
sizes = {r["tbl"]: r["bytes"] for r in json.load(open(sys.argv[2]))}
hwm_kib, file_bytes = int(sys.argv[3]), int(sys.argv[4])
mib = 1024 * 1024
print("| read model | events | tables | MiB | MiB per million events |")
print("|---|---:|---|---:|---:|")
counted = set()
for m in digest["read_models"]:
    tables = [t["table"] for t in m["tables"]]
    if m["stream"] == "RESULTS":
        tables.append("duration_blocks")  # a cache of the results, not hashed
    counted.update(tables)
    size = sum(sizes.get(t, 0) for t in tables if t != "dead_letters")
    events = m["checkpoint"]
    per = f"{size / mib / events * 1e6:,.0f}" if events else "–"
    print(f"| {m['stream']} | {events:,} | {', '.join(t for t in tables if t != 'dead_letters')} "
          f"| {size / mib:.1f} | {per} |")
rest = sum(b for t, b in sizes.items() if t not in counted or t == "dead_letters")
print(f"| shared (dead letters, checkpoints, workloads, schema) | | | {rest / mib:.1f} | |")
print(f"\ndatabase file {file_bytes / mib:.1f} MiB; daemon peak RSS {hwm_kib / 1024:.0f} MiB")
EOF
