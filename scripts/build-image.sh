#!/usr/bin/env bash
# `make image`: the Orrery image from deploy/Dockerfile, tagged orrery:<version> and
# orrery:latest, with docker (a running daemon) or podman. Where a registry can be reached
# it compiles from source (the default `runtime` stage); where none can, it builds the
# `prebuilt` stage from a release binary built here and a base image made here
# (scripts/make-base-image.sh). ORRERY_IMAGE_TARGET=runtime|prebuilt chooses by hand.
# Ends with a smoke test: `orrery --version` in the image, as its non-root user.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/container-env.sh
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  revision="$revision-dirty"
fi
target=${ORRERY_IMAGE_TARGET:-}
if [ -z "$target" ]; then
  # A registry that answers serves the base image the build needs anyway.
  if timeout 120 $ENGINE pull -q docker.io/library/debian:bookworm-slim >/dev/null 2>&1; then
    target=runtime
  else
    echo "no image registry answers: building from this machine's release binary" >&2
    target=prebuilt
  fi
fi
case "$target" in
  prebuilt)
    scripts/make-base-image.sh
    cargo build --release --locked --quiet
    mkdir -p target/image
    # The release profile keeps line tables for profiling; the image needs none.
    strip -o target/image/orrery target/release/orrery
    ;;
  runtime) ;;
  *) echo "ORRERY_IMAGE_TARGET must be runtime or prebuilt, not $target" >&2; exit 2 ;;
esac
$ENGINE build -f deploy/Dockerfile --target "$target" \
  --build-arg VERSION="$version" --build-arg REVISION="$revision" \
  -t "orrery:$version" -t orrery:latest . >&2
out=$($ENGINE run --rm "orrery:$version" --version)
[ "$out" = "orrery $version" ] || { echo "smoke test: orrery --version printed '$out'" >&2; exit 1; }
user=$($ENGINE image inspect --format '{{.Config.User}}' "orrery:$version")
[ "$user" = 10001:10001 ] || { echo "the image runs as '$user', not 10001:10001" >&2; exit 1; }
echo "orrery:$version ($target, revision $revision): $out, user $user" >&2
