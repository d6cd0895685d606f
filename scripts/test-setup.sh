#!/usr/bin/env bash
# Tests the set-up scripts themselves: with a decoy of another version of every tool first on
# PATH, on PYTHONPATH and in the user's site-packages, each ensure-* script must still print
# the project's pinned copy, and that copy must be the version pinned. Exits non-zero naming
# the first script that would have run a decoy. Installs nothing the test command does not.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
decoy=$(mktemp -d)
trap 'rm -rf "$decoy"' EXIT
passed=0
failed=0
check() { # name, condition...
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}

# Decoys: a nats-server 2.12.0 (new enough for the old lookup to accept it), a chromium, a
# schemathesis 0.0.1 that the machine's python3 imports without complaint, a node and an
# oidc-provider on NODE_PATH.
mkdir -p "$decoy/bin" "$decoy/site/schemathesis" "$decoy/user"
printf '#!/bin/sh\necho "nats-server: v2.12.0"\n' >"$decoy/bin/nats-server"
printf '#!/bin/sh\necho "Decoy Chromium 1.0"\n' >"$decoy/bin/chromium"
printf '#!/bin/sh\necho "nginx version: decoy/0.0.1"\n' >"$decoy/bin/nginx"
printf '#!/bin/sh\necho "schemathesis, version 0.0.1"\n' >"$decoy/bin/schemathesis"
printf '#!/bin/sh\necho "v0.0.1"\n' >"$decoy/bin/node"
chmod +x "$decoy/bin/"*
# And an oidc-provider 0.0.1 where NODE_PATH would find it.
mkdir -p "$decoy/node_modules/oidc-provider"
echo '{"name": "oidc-provider", "version": "0.0.1", "main": "index.js"}' >"$decoy/node_modules/oidc-provider/package.json"
echo '__version__ = "0.0.1"' >"$decoy/site/schemathesis/__init__.py"
usersite=$(PYTHONUSERBASE="$decoy/user" python3 -c 'import site; print(site.getusersitepackages())')
mkdir -p "$usersite"
cp -r "$decoy/site/schemathesis" "$usersite/"
run() { # the environment of a used machine: decoys first everywhere a lookup might go
  env -u ORRERY_NATS_SERVER -u ORRERY_CHROMIUM -u ORRERY_NODE -u ORRERY_NODE_TOOLS -u ORRERY_NGINX \
    PATH="$decoy/bin:$PATH" NODE_PATH="$decoy/node_modules" \
    PYTHONPATH="$decoy/site" PYTHONUSERBASE="$decoy/user" "$@"
}

check "the decoys are found first (the old lookups would have used them)" \
  run sh -c '[ "$(command -v nats-server)" = "$0/bin/nats-server" ] &&
             [ "$(command -v node)" = "$0/bin/node" ] &&
             [ "$(python3 -c "import schemathesis; print(schemathesis.__version__)")" = 0.0.1 ]' "$decoy"

nats=$(run scripts/ensure-nats-server.sh)
pinned_nats=$(sed -n 's/^pinned=//p' scripts/ensure-nats-server.sh)
check "ensure-nats-server prints .tools/nats, not the nats-server on PATH" \
  test "$nats" = "$root/.tools/nats/bin/nats-server"
check "that nats-server is the pinned $pinned_nats" \
  sh -c '"$0" --version | grep -qx "nats-server: v$1"' "$nats" "$pinned_nats"
check "ORRERY_NATS_SERVER naming a too-old server is refused" \
  sh -c '! ORRERY_NATS_SERVER="$0" "$1" 2>/dev/null' "$(scripts/ensure-old-nats-server.sh)" scripts/ensure-nats-server.sh

old=$(run scripts/ensure-old-nats-server.sh)
check "ensure-old-nats-server prints .tools/nats-2.10, pinned 2.10.26" \
  sh -c '[ "$0" = "$1/.tools/nats-2.10/bin/nats-server" ] && "$0" --version | grep -qx "nats-server: v2.10.26"' \
  "$old" "$root"

py=$(run scripts/ensure-py-tools.sh)
check "ensure-py-tools prints the project's venv" test "$py" = "$root/.tools/venv/bin/python"
pinned_st=$(sed -n 's/^schemathesis==//p' scripts/py-tools.txt)
st_version=$(run "$py" -I "$(dirname "$py")/schemathesis" --version 2>&1 || true)
check "schemathesis as api-fuzz.sh runs it is the pinned $pinned_st, not the decoy" \
  test "$st_version" = "schemathesis, version $pinned_st"
check "the api-fuzz script runs schemathesis that way" \
  grep -q '"$py" -I "$venv_bin/schemathesis" --config-file' scripts/api-fuzz.sh
pinned_opc=$(sed -n 's/^openapi-python-client==//p' scripts/py-tools.txt)
opc_version=$(run "$py" -I "$(dirname "$py")/openapi-python-client" --version 2>&1 || true)
check "openapi-python-client beside that Python is the pinned $pinned_opc" \
  test "$opc_version" = "openapi-python-client version: $pinned_opc"
check "the generated-client test runs it from beside \$ORRERY_PYTHON" \
  grep -q 'with_file_name("openapi-python-client")' tests/it/client.rs

chromium=$(run scripts/ensure-chromium.sh 2>/dev/null)
check "ensure-chromium prints Debian's /usr/bin/chromium, not the chromium on PATH" \
  test "$chromium" = /usr/bin/chromium

nginx=$(run scripts/ensure-nchan.sh 2>/dev/null)
check "ensure-nchan prints Debian's /usr/sbin/nginx, not the nginx on PATH" \
  test "$nginx" = /usr/sbin/nginx

node_tools=$(run scripts/ensure-node-tools.sh 2>/dev/null)
check "ensure-node-tools prints .tools/node" test "$node_tools" = "$root/.tools/node"
check "its node is the Node.js the script checked, not the node on PATH" \
  sh -c '[ "$("$0/node" --version)" != v0.0.1 ] && [ "$(readlink "$0/node")" = /usr/bin/node ]' "$node_tools"
pinned_op=$(sed -n 's/.*"oidc-provider": "\([^"]*\)".*/\1/p' scripts/node-tools/package.json)
check "the oidc-provider the tests import by path is the pinned $pinned_op, not NODE_PATH's" \
  sh -c '[ "$(NODE_PATH="$2" "$0/node" -p "require(\"$0/node_modules/oidc-provider/package.json\").version")" = "$1" ]' \
  "$node_tools" "$pinned_op" "$decoy/node_modules"

echo "setup: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
