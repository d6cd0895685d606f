#!/usr/bin/env bash
# Prints the path of the Chromium the browser tests drive: $ORRERY_CHROMIUM when set (an
# explicit choice), else Debian's `chromium` package at the path that package installs,
# installed (as root) when missing. Another Chromium or Chrome on PATH is never picked up.
# Debian serves one build per release (security updates replace it), so the pin is the
# package, and the version in use is printed to stderr. Progress goes to stderr.
set -euo pipefail
bin=/usr/bin/chromium
if [ -n "${ORRERY_CHROMIUM:-}" ]; then
  [ -x "$ORRERY_CHROMIUM" ] || { echo "ORRERY_CHROMIUM=$ORRERY_CHROMIUM is not an executable" >&2; exit 1; }
  echo "$ORRERY_CHROMIUM"; exit 0
fi
from_debian() {
  command -v dpkg-query >/dev/null 2>&1 &&
    [ "$(dpkg-query -W -f='${Status}' chromium 2>/dev/null)" = "install ok installed" ] &&
    dpkg-query -L chromium 2>/dev/null | grep -qx "$bin" && [ -x "$bin" ]
}
if ! from_debian; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >&2 || { apt-get update -q >&2 && apt-get install -y -q chromium >&2; }
  fi
  from_debian || {
    echo "the browser tests need Debian's 'chromium' package (as root: apt-get install chromium), or ORRERY_CHROMIUM set to a Chromium" >&2
    exit 1
  }
fi
echo "using Debian's chromium $(dpkg-query -W -f='${Version}' chromium)" >&2
echo "$bin"
