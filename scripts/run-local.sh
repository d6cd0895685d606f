#!/usr/bin/env bash
# `make run`: the daemon on its defaults against a local NATS. Starts a JetStream-enabled
# nats-server on 127.0.0.1:4222 when nothing listens there (stopped again on exit), and keeps
# a generated JWT secret in .orrery/ so tokens survive restarts.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
mkdir -p .orrery

nats_pid=""
orrery_pid=""
cleanup() {
  # The daemon first (it drains and commits), then the nats-server this script started.
  if [ -n "$orrery_pid" ]; then kill -TERM "$orrery_pid" 2>/dev/null; wait "$orrery_pid" 2>/dev/null; fi
  if [ -n "$nats_pid" ]; then kill "$nats_pid" 2>/dev/null; wait "$nats_pid" 2>/dev/null; fi
  true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
  echo "using the NATS server already listening on 127.0.0.1:4222" >&2
else
  nats=$(scripts/ensure-nats-server.sh)
  echo "starting $nats with JetStream on 127.0.0.1:4222 (store: .orrery/nats)" >&2
  "$nats" -js -a 127.0.0.1 -p 4222 -sd .orrery/nats >.orrery/nats.log 2>&1 &
  nats_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 0.05; done
fi

if [ -z "${ORRERY_JWT_SECRET:-}${ORRERY_JWT_SECRET_FILE:-}" ]; then
  ORRERY_JWT_SECRET_FILE=$(scripts/ensure-jwt-secret.sh)
  export ORRERY_JWT_SECRET_FILE
fi

cargo build --release --quiet
echo >&2
echo "dashboard (sign-in link, single use, 5 min):" >&2
echo "  $(target/release/orrery token --login-url --role admin --ttl 8h --sub local)" >&2
echo "viewer token (1h):  $(target/release/orrery token --role viewer --ttl 1h --sub local)" >&2
echo "try: curl -H \"Authorization: Bearer \$TOKEN\" 'http://127.0.0.1:8080/api/v1/results/stats?since=1h'" >&2
echo >&2
target/release/orrery serve "$@" &
orrery_pid=$!
wait "$orrery_pid"
