#!/usr/bin/env bash
# Prints the path of a Chromium for the browser test, installing Debian's package when missing
# (as root). Progress goes to stderr.
set -euo pipefail
if [ -n "${ORRERY_CHROMIUM:-}" ] && [ -x "$ORRERY_CHROMIUM" ]; then echo "$ORRERY_CHROMIUM"; exit 0; fi
for c in chromium chromium-browser google-chrome; do
  if command -v "$c" >/dev/null 2>&1; then command -v "$c"; exit 0; fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser test..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium >&2 || { apt-get update -q >&2 && apt-get install -y -q chromium >&2; }
  command -v chromium && exit 0
fi
echo "the browser test needs Chromium: install Debian's 'chromium' package or set ORRERY_CHROMIUM" >&2
exit 1
