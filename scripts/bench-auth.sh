#!/usr/bin/env bash
# What verifying a token costs per request: GET /api/v1/auth/whoami with a built-in HS256
# token and with RS256, ES256 and EdDSA access tokens from a real OpenID provider
# (oidc-provider, as the tests run it), wrk 1 thread × 8 connections × 10 s each, on a
# release build. Starts its own nats-server, provider and daemon on loopback, stops them on
# exit. Needs wrk (Debian's package; installed as root when missing).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if ! command -v wrk >/dev/null; then
  [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >&2 ||
    { echo "bench-auth needs wrk (apt-get install wrk)" >&2; exit 1; }
fi
nats=$(scripts/ensure-nats-server.sh)
node_tools=$(scripts/ensure-node-tools.sh)
cargo build --release --quiet
bin="$root/target/release/orrery"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
nats_port=$(port); idp_port=$(port); http_port=$(port)
"$nats" -js -a 127.0.0.1 -p "$nats_port" -sd "$work/js" >/dev/null 2>&1 &
secret=$(openssl rand -hex 32)
client_secret=$(openssl rand -hex 16)
cat >"$work/provider.json" <<JSON
{"port": $idp_port, "issuer": "http://127.0.0.1:$idp_port", "audience": "urn:orrery", "users": {},
 "clients": [
  {"client_id": "rs", "client_secret": "$client_secret", "alg": "RS256", "claims": {"orrery_role": "viewer"}},
  {"client_id": "es", "client_secret": "$client_secret", "alg": "ES256", "claims": {"orrery_role": "viewer"}},
  {"client_id": "ed", "client_secret": "$client_secret", "alg": "EdDSA", "claims": {"orrery_role": "viewer"}}]}
JSON
"$node_tools/node" tests/oidc/provider.mjs "$node_tools/node_modules/oidc-provider/lib/index.js" \
  "$work/provider.json" >/dev/null 2>&1 &
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$idp_port/jwks" >/dev/null && break; sleep 0.1; done
RUST_LOG=warn "$bin" serve --nats-url "nats://127.0.0.1:$nats_port" --database "$work/o.db" \
  --listen "127.0.0.1:$http_port" --jwt-secret "$secret" \
  --auth-issuer "http://127.0.0.1:$idp_port" --auth-audience urn:orrery >/dev/null 2>&1 &
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http_port/ready" >/dev/null && break; sleep 0.2; done
token() {
  curl -s -d grant_type=client_credentials -d "client_id=$1" -d "client_secret=$client_secret" \
    -d resource=urn:orrery -d scope=orrery "http://127.0.0.1:$idp_port/token" |
    python3 -c 'import sys, json; print(json.load(sys.stdin)["access_token"])'
}
declare -A tokens=([HS256]=$("$bin" token --jwt-secret "$secret" --role viewer)
  [RS256]=$(token rs) [ES256]=$(token es) [EdDSA]=$(token ed))
printf '%-6s %8s %12s %9s %9s\n' alg status "requests/s" p50 p99
for alg in HS256 RS256 ES256 EdDSA; do
  url="http://127.0.0.1:$http_port/api/v1/auth/whoami"
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${tokens[$alg]}" "$url")
  out=$(wrk -t1 -c8 -d10s --latency -H "Authorization: Bearer ${tokens[$alg]}" "$url")
  printf '%-6s %8s %12s %9s %9s\n' "$alg" "$code" \
    "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
    "$(echo "$out" | awk '$1 == "50%" {print $2}')" "$(echo "$out" | awk '$1 == "99%" {print $2}')"
done
