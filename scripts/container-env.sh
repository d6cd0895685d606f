# Sourced by the scripts that build or run containers (make image, make test-deploy).
# Chooses the engine: a Docker daemon that answers `docker info`, else podman, which it
# installs from Debian's packages (as root) when missing, with podman-compose from the
# project's pinned venv. Sets ENGINE (docker|podman) and the COMPOSE array.
#
# Podman is run with a containers.conf of the project's (.tools/containers/containers.conf,
# named by CONTAINERS_CONF): runc as the runtime (crun refuses cgroups in hybrid mode on
# some hosts) and open-file limits within the host's hard limit (podman asks for 1048576 files
# and more processes than an unprivileged sandbox allows). A containers.conf the operator set is kept.

container_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

ensure_podman() {
  # netavark sets up container networks (RUN steps of a build included) with iptables, which
  # not every Debian machine has: without it every build fails with "netavark: No such file
  # or directory".
  local cmd missing=0
  for cmd in podman runc iptables; do
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing=1
  done
  if [ "$missing" = 1 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing podman, runc and iptables (Debian's packages)..." >&2
      export DEBIAN_FRONTEND=noninteractive
      local pkgs=(podman runc iptables uidmap slirp4netns fuse-overlayfs netavark aardvark-dns)
      apt-get install -y -q "${pkgs[@]}" >&2 ||
        { apt-get update -q >&2 && apt-get install -y -q "${pkgs[@]}" >&2; }
    else
      echo "containers need docker (with a running daemon) or podman, runc and iptables installed" >&2
      return 1
    fi
  fi
  if [ -z "${CONTAINERS_CONF:-}" ]; then
    local conf="$container_root/.tools/containers/containers.conf" files procs
    files=$(ulimit -Hn)
    procs=$(ulimit -Hu)
    [ "$files" = unlimited ] && files=1048576
    # runc is refused a process limit far above this here even within the hard limit.
    if [ "$procs" = unlimited ] || [ "$procs" -gt 32768 ]; then procs=32768; fi
    mkdir -p "$(dirname "$conf")"
    cat >"$conf" <<CONF
[containers]
default_ulimits = ["nofile=$files:$files", "nproc=$procs:$procs"]
[engine]
runtime = "runc"
events_logger = "file"
CONF
    export CONTAINERS_CONF="$conf"
  fi
}

if [ -z "${ENGINE:-}" ]; then
  if command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then
    ENGINE=docker
  else
    ENGINE=podman
  fi
fi
case "$ENGINE" in
  docker)
    if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
    ;;
  podman)
    ensure_podman
    COMPOSE=("$("$container_root/scripts/ensure-py-tools.sh")" -I "$container_root/.tools/venv/bin/podman-compose")
    ;;
  *) echo "ENGINE must be docker or podman, not $ENGINE" >&2; return 1 ;;
esac
export ENGINE
