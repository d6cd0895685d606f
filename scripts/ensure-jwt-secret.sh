#!/usr/bin/env bash
# Prints the path of the local development JWT secret, .orrery/jwt-secret, generating 32
# random bytes (hex) there on first use so that tokens survive restarts.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$root/.orrery"
secret="$root/.orrery/jwt-secret"
if [ ! -s "$secret" ]; then
  python3 -c 'import secrets; print(secrets.token_hex(32))' >"$secret"
  chmod 600 "$secret"
fi
echo "$secret"
