#!/usr/bin/env bash
# `make cluster`: scale-out on one machine. Three JetStream nodes on 127.0.0.1:4231-4233
# (routes 6231-6233, monitoring 8231-8233; stores in .orrery/cluster/), R3 streams, and two
# Orrery replicas on 127.0.0.1:8081 and :8082, each with its own SQLite file; with nginx
# installed, deploy/nginx/orrery.conf in front of both on 127.0.0.1:8080. Ctrl-C stops
# everything this script started.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
mkdir -p .orrery/cluster

pids=()
cleanup() {
  # The replicas first (they drain and commit), then the nodes.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

nats=$(scripts/ensure-nats-server.sh)
routes="nats-route://127.0.0.1:6231,nats-route://127.0.0.1:6232,nats-route://127.0.0.1:6233"
for i in 1 2 3; do
  "$nats" -js -n "n$i" -a 127.0.0.1 -p "423$i" -m "823$i" -sd ".orrery/cluster/n$i" \
    --cluster_name orrery --cluster "nats://127.0.0.1:623$i" --routes "$routes" \
    >".orrery/cluster/n$i.log" 2>&1 &
  pids+=($!)
done
for i in 1 2 3; do
  for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/423$i) 2>/dev/null && break; sleep 0.05; done
done

if [ -z "${ORRERY_JWT_SECRET:-}${ORRERY_JWT_SECRET_FILE:-}" ]; then
  ORRERY_JWT_SECRET_FILE=$(scripts/ensure-jwt-secret.sh)
  export ORRERY_JWT_SECRET_FILE
fi

cargo build --release --quiet
export ORRERY_NATS_URL="nats://127.0.0.1:4231,nats://127.0.0.1:4232,nats://127.0.0.1:4233"
export ORRERY_STREAM_REPLICAS=3
for r in 1 2; do
  ORRERY_DATABASE=".orrery/cluster/replica-$r.db" ORRERY_LISTEN="127.0.0.1:808$r" \
    target/release/orrery serve >".orrery/cluster/replica-$r.log" 2>&1 &
  pids+=($!)
done

proxy="(nginx not installed: no proxy; apt-get install nginx-light for one)"
if command -v nginx >/dev/null 2>&1; then
  dir="$root/.orrery/cluster/nginx"
  mkdir -p "$dir"
  sed -e 's/orrery-1:8080/127.0.0.1:8081/; s/orrery-2:8080/127.0.0.1:8082/' \
      -e 's/listen 8080;/listen 127.0.0.1:8080;/' deploy/nginx/orrery.conf >"$dir/orrery.conf"
  cat >"$dir/nginx.conf" <<CONF
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $dir/tmp;
  proxy_temp_path $dir/tmp;
  include $dir/orrery.conf;
}
CONF
  nginx -p "$dir" -c "$dir/nginx.conf" >>"$dir/error.log" 2>&1 &
  pids+=($!)
  proxy="http://127.0.0.1:8080   (nginx, deploy/nginx/orrery.conf: both replicas, SSE unbuffered)"
fi

cat >&2 <<TXT

NATS nodes:  $ORRERY_NATS_URL   (monitoring: http://127.0.0.1:8231/jsz …8233)
replicas:    http://127.0.0.1:8081  http://127.0.0.1:8082   (logs in .orrery/cluster/)
proxy:       $proxy
token:       $(target/release/orrery token --role admin --ttl 8h --sub cluster)
compare:     curl -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:8081/api/v1/admin/digest
Ctrl-C stops everything.
TXT
wait
