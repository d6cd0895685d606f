#!/usr/bin/env bash
# Makes the base image the Orrery image builds on, debian:bookworm-slim, on a machine that
# cannot pull it (no registry reachable): debootstrap a minimal Debian 12 from the mirror apt
# already uses, leave out package lists, caches and docs, and import it into the container
# engine's local store under that name, where `FROM debian:bookworm-slim` finds it. Does
# nothing when the image is already there. As root (debootstrap installs from Debian's
# packages when missing). Usage: scripts/make-base-image.sh (ENGINE=docker|podman to choose).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/container-env.sh"
image=debian:bookworm-slim
local_name=localhost/debian:bookworm-slim
if $ENGINE image inspect "$image" >/dev/null 2>&1 || $ENGINE image inspect "$local_name" >/dev/null 2>&1; then
  echo "$image is already in $ENGINE's store" >&2
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "making $image with debootstrap needs root" >&2; exit 1; }
if ! command -v debootstrap >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2 ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2; }
fi
# The first Debian mirror apt is configured with (deb822 .sources or one-line .list).
mirror=$( { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
            grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'; } |
          grep -v -- '-security' | grep -m1 'debian' || true)
mirror=${mirror:-http://deb.debian.org/debian}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
echo "debootstrap bookworm (minbase) from $mirror..." >&2
debootstrap --variant=minbase bookworm "$dir/rootfs" "$mirror" >"$dir/debootstrap.log" 2>&1 ||
  { tail -20 "$dir/debootstrap.log" >&2; exit 1; }
rm -rf "$dir/rootfs"/var/lib/apt/lists/* "$dir/rootfs"/var/cache/apt/* "$dir/rootfs"/var/log/* \
  "$dir/rootfs"/usr/share/doc/* "$dir/rootfs"/usr/share/man/* "$dir/rootfs"/usr/share/info/*
# Keep docs out of later `apt-get install`s, as Debian's slim images do.
cat >"$dir/rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
CFG
tar -C "$dir/rootfs" -c . | $ENGINE import - "$local_name" >/dev/null
[ "$ENGINE" = docker ] && docker tag "$local_name" "$image"
echo "imported $image into $ENGINE's store ($($ENGINE image inspect --format '{{.Size}}' "$local_name") bytes)" >&2
