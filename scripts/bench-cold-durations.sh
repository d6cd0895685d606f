#!/usr/bin/env bash
# The first dashboards after a start: N realistic results (UUIDs, finish times over the last
# 24 h) in the stream, `orrery serve` started on a fresh database, and as soon as /ready
# reports lag 0, 8 clients × 160 requests of /api/v1/results/durations (its default 24 h
# window). Prints the catch-up time and the requests' p50/p99/max. Starts its own
# nats-server and daemon on loopback, stops them on exit.
#   scripts/bench-cold-durations.sh [EVENTS] [ORRERY_BINARY ...]
# With several binaries (e.g. an older release beside this build), each is measured on the
# same stream, one after the other.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
events=${1:-500000}
shift || true
nats=$(scripts/ensure-nats-server.sh)
cargo build --release --quiet
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=("$root/target/release/orrery")
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
nats_port=$(port)
"$nats" -js -a 127.0.0.1 -p "$nats_port" -sd "$work/js" >/dev/null 2>&1 &
for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
# The ingest bench publishes into a NATS it is given and leaves the events there.
RUST_LOG=error "$root/target/release/orrery" bench ingest --nats-url "nats://127.0.0.1:$nats_port" \
  --events "$events" --realistic --json >/dev/null
for bin in "${bins[@]}"; do
  http_port=$(port)
  rm -f "$work"/o.db*
  started=$(date +%s.%N)
  RUST_LOG=error ORRERY_READY_MAX_LAG=0 "$bin" serve --nats-url "nats://127.0.0.1:$nats_port" \
    --database "$work/o.db" --listen "127.0.0.1:$http_port" --insecure-no-auth >/dev/null 2>&1 &
  daemon=$!
  until curl -sf "http://127.0.0.1:$http_port/ready" >/dev/null; do sleep 0.05; done
  ready=$(date +%s.%N)
  python3 - "http://127.0.0.1:$http_port/api/v1/results/durations" "$bin" \
    "$(python3 -c "print(round($ready - $started, 1))")" <<'PY'
import sys, threading, time, urllib.request
url, binary, catch_up = sys.argv[1], sys.argv[2], sys.argv[3]
times, lock = [], threading.Lock()
def client():
    for _ in range(160):
        t = time.perf_counter()
        with urllib.request.urlopen(url) as r:
            assert r.status == 200
            r.read()
        with lock:
            times.append((time.perf_counter() - t) * 1000)
threads = [threading.Thread(target=client) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
times.sort()
pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
print(f"{binary}: ready after {catch_up} s; {len(times)} requests, "
      f"p50 {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms, max {times[-1]:.1f} ms")
PY
  kill "$daemon"; wait "$daemon" 2>/dev/null || true
done
