#!/usr/bin/env bash
# `make test-deploy`: the deployment as users run it, from a clean state.
#  1. tools: podman (or docker with a running daemon), podman-compose, kubernetes-validate
#     (pinned, .tools/venv), the pinned nats-server;
#  2. manifests: every YAML file under deploy/ and docker-compose.yml through a strict
#     parser, the Kubernetes manifests against the Kubernetes schema (strict), the compose
#     file through compose's own `config`, the systemd unit through `systemd-analyze verify`;
#  3. images: `make image`, and local stand-ins for the nats and nginx images (no registry is
#     needed; where one answers, the same images are used);
#  4. compose: the single-node file and the `cluster` profile, brought up, driven and taken
#     down by the ignored tests of tests/it/deploy.rs.
# Prints how long each phase took. Everything it starts is taken down, whatever happened.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
phases=()
ms() { date +%s%3N; }
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }
t0=$(ms)
phase_start=$t0
phase_name=""
phase() {
  local now; now=$(ms)
  [ -n "$phase_name" ] && phases+=("$(printf '%-32s %7s s' "$phase_name" "$(secs $((now - phase_start)))")")
  phase_name=$1; phase_start=$now
  [ -n "$1" ] && echo "== $1" >&2
  true
}
# Containers, volumes and networks of the tests' compose projects (orrery-it-*), left by a
# run that was killed before its own teardown: removed before and after.
clean() {
  [ -n "${ENGINE:-}" ] || return 0
  local ids vols nets
  ids=$($ENGINE ps -a --format '{{.ID}} {{index .Labels "com.docker.compose.project"}}' 2>/dev/null | awk '$2 ~ /^orrery-it-/ {print $1}')
  [ -z "$ids" ] || $ENGINE rm -f -t 5 $ids >/dev/null 2>&1 || true
  vols=$($ENGINE volume ls -q 2>/dev/null | grep '^orrery-it-' || true)
  [ -z "$vols" ] || $ENGINE volume rm -f $vols >/dev/null 2>&1 || true
  nets=$($ENGINE network ls --format '{{.Name}}' 2>/dev/null | grep '^orrery-it-' || true)
  [ -z "$nets" ] || $ENGINE network rm -f $nets >/dev/null 2>&1 || true
}
report() {
  clean
  phase ""
  echo "test-deploy phases:" >&2
  for p in "${phases[@]}"; do echo "  $p" >&2; done
  printf '  %-32s %7s s\n' total "$(secs $(($(ms) - t0)))" >&2
}
trap report EXIT

phase tools
source scripts/container-env.sh
py=$(scripts/ensure-py-tools.sh)
venv_bin=$(dirname "$py")
nats=$(scripts/ensure-nats-server.sh)
if ! command -v systemd-analyze >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd >&2
fi
echo "engine: $ENGINE; compose: ${COMPOSE[*]}" >&2
clean

phase manifests
"$py" -I scripts/check-yaml.py docker-compose.yml $(find deploy -name '*.yaml' -o -name '*.yml' | sort)
"$py" -I "$venv_bin/kubernetes-validate" --strict --quiet deploy/k8s/*.yaml
ORRERY_JWT_SECRET=x "${COMPOSE[@]}" -f docker-compose.yml config >/dev/null
ORRERY_JWT_SECRET=x "${COMPOSE[@]}" -f docker-compose.yml --profile cluster config >/dev/null
unit_root=$(mktemp -d)
mkdir -p "$unit_root/usr/local/bin" "$unit_root/etc/systemd/system" "$unit_root/usr/lib/systemd"
cp -r /lib/systemd/system "$unit_root/usr/lib/systemd/"
printf '#!/bin/sh\n' >"$unit_root/usr/local/bin/orrery"; chmod +x "$unit_root/usr/local/bin/orrery"
cp deploy/systemd/orrery.service "$unit_root/etc/systemd/system/"
# verify exits 0 on unknown keys and bad values too: it passes only when it prints nothing.
said=$(systemd-analyze verify --root="$unit_root" orrery.service 2>&1 || echo "(exit $?)")
rm -rf "$unit_root"
[ -z "$said" ] || { echo "systemd-analyze verify deploy/systemd/orrery.service:" >&2; echo "$said" >&2; exit 1; }
echo "manifests: strict YAML, Kubernetes schema, compose config, systemd unit all pass" >&2

phase "image (make image)"
scripts/build-image.sh

phase "nats and nginx images"
version=$("$nats" --version | sed -n 's/.*v\([0-9.]*\).*/\1/p')
ctx=$(mktemp -d)
cp "$nats" "$ctx/nats-server"
$ENGINE build -q -f tests/deploy/nats.Containerfile -t "localhost/orrery-test-nats:$version" "$ctx" >/dev/null
rm -rf "$ctx"
$ENGINE build -q -f tests/deploy/nginx.Containerfile -t localhost/orrery-test-nginx:latest tests/deploy >/dev/null

phase "compose (tests/it/deploy.rs)"
export ORRERY_DEPLOY_ENGINE=$ENGINE
ORRERY_DEPLOY_COMPOSE=$("$py" -I -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "${COMPOSE[@]}")
export ORRERY_DEPLOY_COMPOSE
export ORRERY_IMAGE="orrery:$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
export ORRERY_NATS_IMAGE="localhost/orrery-test-nats:$version"
export ORRERY_NGINX_IMAGE=localhost/orrery-test-nginx:latest
cargo test --test it deploy:: -- --ignored --test-threads 1 --nocapture
