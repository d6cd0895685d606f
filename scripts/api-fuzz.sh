#!/usr/bin/env bash
# Property-based API testing with schemathesis (PyPI) against a real daemon and its own
# bus: after demo traffic, every operation of /api/v1/openapi.json, reads and writes, is
# called with generated inputs and an admin token (every role's routes), in each of
# schemathesis's phases: examples, coverage, fuzzing, and the stateful phase, which follows
# the document's links from lists to items and from a recurrence group to its preview,
# dry-run, handoff and history (and fails if it leaves any of them unreached). The run
# fails on any answer whose status the document does
# not list (so any 5xx but the documented 503s), whose body does not match its schema or
# whose content type differs, and on any request valid by the document that is refused
# (the parameters are exactly as strict as their parsers). The live stream is left out: it
# never ends by design (tests/it/live.rs and the browser tests drive it). schemathesis runs from the project's own pinned venv (.tools/venv, see
# scripts/ensure-py-tools.sh), never a copy the machine has. Everything it starts stops on exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py=$(scripts/ensure-py-tools.sh)
venv_bin="$(dirname "$py")"
nats=$(scripts/ensure-nats-server.sh)
cargo build --quiet
bin="$root/target/debug/orrery"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nats_port=$(free_port)
http_port=$(free_port)
"$nats" -js -a 127.0.0.1 -p "$nats_port" -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)
secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
export ORRERY_NATS_URL="nats://127.0.0.1:$nats_port" ORRERY_JWT_SECRET="$secret" RUST_LOG=warn
# A short Orrery-Min-Seq wait: generated sequences far ahead answer their documented 503 soon.
ORRERY_DATABASE="$work/o.db" ORRERY_LISTEN="127.0.0.1:$http_port" ORRERY_MUTATION_WAIT_MS=200 \
  "$bin" serve >"$work/serve.log" 2>&1 &
pids+=($!)
"$bin" demo --rate 300 --duration 4s --agents 6 >&2
token=$("$bin" token --role admin --ttl 1h --sub schemathesis)
# One worker: with two, Hypothesis parses lambda sources from two threads at once, which
# CPython before 3.11.8 can fail with "SystemError: AST constructor recursion depth mismatch"
# (gh-106905) — seen once here as a Runtime Error on an endpoint that answered correctly.
#
# Two runs, each with its own time: the stateless phases would otherwise spend the budget
# the stateful phase needs to walk its chains. The first fails on any warning that the
# document and the parsers disagree; the second on any linked operation it never reached
# with usable data (schemathesis files both under missing_test_data or validation_mismatch).
st() {
  local config="$1"; shift
  "$py" -I "$venv_bin/schemathesis" --config-file "$config" run \
    "http://127.0.0.1:$http_port/api/v1/openapi.json" --wait-for-schema 30 \
    -H "Authorization: Bearer $token" --exclude-path-regex '/events$' \
    -c response_schema_conformance,status_code_conformance,content_type_conformance,positive_data_acceptance \
    --max-examples "${ORRERY_FUZZ_EXAMPLES:-15}" --workers 1 "$@"
}
printf '[warnings]\nfail-on = ["validation_mismatch"]\n' >"$work/stateless.toml"
printf '[warnings]\nfail-on = ["missing_test_data", "validation_mismatch"]\n' >"$work/stateful.toml"
st "$work/stateless.toml" --phases examples,coverage,fuzzing --max-time "${ORRERY_FUZZ_SECONDS:-80}"
st "$work/stateful.toml" --phases stateful --max-time "${ORRERY_FUZZ_STATEFUL_SECONDS:-60}"
